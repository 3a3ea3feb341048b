"""Reproduce the RankSim paper's tables: list, run or script every row, then tabulate the results.

    python reproduce.py list  --dataset agedb                    # every row and its train.py command
    python reproduce.py run   --dataset agedb --rows vanilla,vanilla-ranksim [--dry-run] [-- --epoch 1]
    python reproduce.py run   --dataset agedb --rows all --write-script runs.sh      # a shell script
    python reproduce.py run   --dataset agedb --rows all --job-array jobs.txt        # SLURM job array
    python reproduce.py table --dataset agedb --runs runs/agedb [--out table]        # Markdown + LaTeX
    python reproduce.py ckpt  --dataset agedb --runs runs/agedb --row vanilla        # best checkpoint path

Datasets: agedb, imdb_wiki, sts-b. The rows, their flags and the published numbers are data in
`ranksim/paper.py` (its docstring states the choices made where the paper is silent). Commands run
from the repository root; everything after `--` is passed to train.py unchanged (e.g. `--epoch 1`
for a quick check). A run belongs to a row when the settings recorded in its results.json
(reweight, lds, fds, loss, retrain_fc, RankSim on/off) are the row's; settings that differ from the
paper's (epochs, batch size, ...) are listed under the table. Rows without a run stay empty.
"""
import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ranksim.errors import UserError, run_cli
from ranksim.paper import ALL_GROUPS, BELIEVED, BENCHMARKS, DATASET_ALIASES, ROWS, Benchmark, Row, published

REPO = Path(__file__).resolve().parent
# File names a benchmark program may give its best checkpoint (age programs; STS-B).
BEST_CKPT_NAMES = ("ckpt.best.pth.tar", "model_state_best.th", "ckpt.best.th")


# ----------------------------------------------------------------------------- rows and commands

def benchmark_of(name: str) -> Benchmark:
    key = DATASET_ALIASES.get(name.lower())
    if key is None:
        raise UserError(f"--dataset {name}: unknown dataset; use one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def select_rows(bench: Benchmark, spec: str) -> List[Row]:
    """Rows named in ``spec`` ("all" or comma-separated keys or names, case-insensitive), in table order."""
    rows = ROWS[bench.name]
    if spec.strip().lower() == "all":
        return list(rows)
    by_name = {}
    for row in rows:
        by_name[row.key.lower()] = row
        by_name[row.name.lower()] = row
    wanted = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.lower() not in by_name:
            raise UserError(f"--rows {item}: no such row for {bench.name}; "
                            f"see `python reproduce.py list --dataset {bench.name}` for the keys")
        wanted.append(by_name[item.lower()])
    if not wanted:
        raise UserError("--rows: no row given; pass keys such as vanilla,vanilla-ranksim or 'all'")
    keys = {r.key for r in wanted}
    return [r for r in rows if r.key in keys]


def with_stage1(bench: Benchmark, rows: List[Row]) -> List[Row]:
    """``rows`` plus the stage-1 rows their RRT rows need, in table order, stage 1 before stage 2."""
    keys = {r.key for r in rows} | {r.stage1 for r in rows if r.stage1}
    ordered = [r for r in ROWS[bench.name] if r.key in keys]
    return [r for r in ordered if r.stage1 is None] + [r for r in ordered if r.stage1 is not None]


def shown_path(path: "str | Path") -> str:
    """``path`` relative to the repository root when inside it (commands run there), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def train_command(bench: Benchmark, row: Row, runs: str, data_dir: str, extra: Sequence[str],
                  pretrained: Optional[str] = None, python: str = "python") -> List[str]:
    """argv of ``row``'s train.py run (run from the repository root)."""
    cmd = [python, f"{bench.folder}/train.py", "--data_dir", data_dir, "--store_root", runs,
           "--store_name", row.key, *bench.path_flags, *row.flags]
    if row.stage1 is not None:
        cmd += ["--pretrained", pretrained if pretrained is not None else "<best checkpoint of row "
                f"{row.stage1}>"]
    return cmd + list(extra)


def shell_line(bench: Benchmark, row: Row, runs: str, data_dir: str, extra: Sequence[str],
               python: str = "python") -> str:
    """One shell line for ``row``; RRT's stage 2 first looks up stage 1's best checkpoint."""
    if row.stage1 is None:
        return shlex.join(train_command(bench, row, runs, data_dir, extra, python=python))
    lookup = shlex.join([python, "reproduce.py", "ckpt", "--dataset", bench.name, "--runs", runs,
                         "--row", row.stage1])
    cmd = train_command(bench, row, runs, data_dir, extra, pretrained="CKPT", python=python)
    body = shlex.join(cmd).replace("CKPT", '"$ckpt"')
    return f"ckpt=$({lookup}) && {body}"


# ----------------------------------------------------------------------------- finding runs

def load_results(runs: Path) -> List[Tuple[Path, dict]]:
    """Every results.json under ``runs`` (recursively), oldest first; unreadable files are an error."""
    if not runs.is_dir():
        return []
    found = []
    for path in runs.rglob("results.json"):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable results.json ({exc}); delete or fix the file") from None
        if not isinstance(results, dict):
            raise UserError(f"{path}: results.json must hold a JSON object; delete or fix the file")
        found.append((path, results))
    found.sort(key=lambda pr: (pr[0].stat().st_mtime, str(pr[0])))
    return found


def match_runs(bench: Benchmark, found: List[Tuple[Path, dict]]) -> Tuple[Dict[str, List[Tuple[Path, dict]]],
                                                                          List[str]]:
    """Assign results.json files to rows by their recorded settings.

    Returns ({row key: [(path, results), ...] oldest first}, notes about runs that match no row).
    Runs of other datasets are ignored; --evaluate runs are skipped (their flags need not say which
    row the checkpoint was trained as).
    """
    from ranksim.paper import run_identity

    by_identity = {row.identity: row for row in ROWS[bench.name]}
    matched: Dict[str, List[Tuple[Path, dict]]] = {}
    notes = []
    for path, results in found:
        dataset = DATASET_ALIASES.get(str(results.get("dataset", "")).lower())
        if dataset != bench.name:
            continue
        args = results.get("args") or {}
        if args.get("evaluate"):
            notes.append(f"{shown_path(path)}: an --evaluate run, not counted as a row")
            continue
        row = by_identity.get(run_identity(args, bench))
        if row is None:
            notes.append(f"{shown_path(path)}: its settings {dict(run_identity(args, bench))} are no row "
                         "of the paper's table")
            continue
        matched.setdefault(row.key, []).append((path, results))
    return matched, notes


def best_checkpoint(run_dir: Path, results: dict) -> Optional[Path]:
    """The best checkpoint of a finished run: results.json's "checkpoint" if it exists, else a known name."""
    recorded = results.get("checkpoint")
    if recorded:
        for candidate in (Path(recorded), run_dir / recorded, run_dir / Path(recorded).name):
            if candidate.is_file():
                return candidate
    for name in BEST_CKPT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def stage1_checkpoint(bench: Benchmark, runs: Path, key: str) -> Path:
    matched, _ = match_runs(bench, load_results(runs))
    if key not in matched:
        raise UserError(f"--runs {runs}: no finished run of row {key} (RRT's stage 1) found; run it first: "
                        f"python reproduce.py run --dataset {bench.name} --rows {key} --runs {runs}")
    path, results = matched[key][-1]
    ckpt = best_checkpoint(path.parent, results)
    if ckpt is None:
        raise UserError(f"{path.parent}: finished run of row {key} has no best checkpoint "
                        f"({' or '.join(BEST_CKPT_NAMES)}); run the row again")
    return ckpt


# ----------------------------------------------------------------------------- tables

def expected_settings(bench: Benchmark, row: Row) -> Dict[str, object]:
    """Settings the paper's run of ``row`` used (published defaults overridden by the row's flags)."""
    from ranksim.paper import _flags_to_args

    expected = dict(bench.default_args)
    for name, value in _flags_to_args(row.flags, bench).items():
        if name in ("regularization_weight", "interpolation_lambda", "batch_size", "lr", "loss", "epoch"):
            expected[name] = value
    return expected


def _same(a: object, b: object) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def deviations(bench: Benchmark, row: Row, args: dict) -> List[str]:
    """'name=value (paper: value)' for each setting of the run that is not the paper's."""
    out = []
    for name, value in expected_settings(bench, row).items():
        if name in args and not _same(args[name], value):
            out.append(f"{name}={args[name]} (paper: {value})")
    return out


def metric_value(results: dict, metric: str, group: str) -> Optional[float]:
    """Our number for (metric, group) as the paper prints it (Pearson x100), or None."""
    if metric == "balanced_mae":  # Balanced MSE's metric: its own results.json key, never the MAE
        value = (results.get("balanced_mae") or {}).get(group)
    else:
        value = ((results.get("metrics") or {}).get(group) or {}).get(metric)
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return value * 100.0 if metric == "pearson" else value


METRIC_TITLES = {"mae": "MAE ↓", "gmean": "GM ↓", "mse": "MSE ↓", "pearson": "Pearson ↑",
                 "balanced_mae": "bMAE ↓"}
METRIC_TITLES_TEX = {"mae": r"MAE $\downarrow$", "gmean": r"GM $\downarrow$", "mse": r"MSE $\downarrow$",
                     "pearson": r"Pearson $\uparrow$", "balanced_mae": r"bMAE $\downarrow$"}
GROUP_TITLES = {"all": "All", "many": "Many", "medium": "Med.", "few": "Few"}
DECIMALS = {"mae": 2, "gmean": 2, "mse": 3, "pearson": 1, "balanced_mae": 3}


def build_table(bench: Benchmark, rows: List[Row], runs: Path) -> dict:
    """Everything the Markdown and LaTeX writers need: per row, per (metric, group): (ours, paper)."""
    matched, notes = match_runs(bench, load_results(runs))
    table_rows = []
    footnotes = []
    for row in rows:
        runs_of_row = matched.get(row.key, [])
        results = runs_of_row[-1][1] if runs_of_row else None
        marks = ""
        if len(runs_of_row) > 1:
            notes.append(f"{row.name}: {len(runs_of_row)} runs; the newest is shown "
                         f"({shown_path(runs_of_row[-1][0])})")
        if results is not None:
            dev = deviations(bench, row, results.get("args") or {})
            if dev:
                footnotes.append(f"{row.name}: run differs from the paper's settings: {', '.join(dev)}")
                marks += "*"
        if (bench.name, row.name) in BELIEVED:
            marks += "†"
        cells = {}
        for metric in bench.metrics:
            for group in ALL_GROUPS:
                ours = metric_value(results, metric, group) if results is not None else None
                cells[(metric, group)] = (ours, published(bench.name, row.name, metric, group))
        table_rows.append({"row": row, "marks": marks, "cells": cells,
                           "run": shown_path(runs_of_row[-1][0]) if runs_of_row else None})
    return {"bench": bench, "rows": table_rows, "notes": notes, "footnotes": footnotes}


def format_cell(ours: Optional[float], paper: Optional[float], decimals: int, latex: bool = False) -> str:
    """'ours [paper, ours-paper]' with the parts that exist; '' when neither exists."""
    text = "" if ours is None else f"{ours:.{decimals}f}"
    if paper is not None:
        bracket = f"{paper:.{decimals}f}"
        if ours is not None:
            bracket += f", {ours - paper:+.{decimals}f}"
        bracket = f"[{bracket}]"
        if latex:
            bracket = r"{\scriptsize " + bracket + "}"
        text = f"{text} {bracket}".strip()
    return text


LEGEND = ("Each cell: ours [published, ours − published]; an empty cell or a missing 'ours' means no run "
          "of that row was found. Published numbers: RankSim README and Yang et al. (2021) as reprinted "
          "(SPEC §9).")


def markdown_table(table: dict) -> str:
    bench = table["bench"]
    header = ["Method"] + [f"{METRIC_TITLES[m]} {GROUP_TITLES[g]}" for m in bench.metrics for g in ALL_GROUPS]
    lines = [f"### {bench.title}", "", LEGEND, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    group = None
    for entry in table["rows"]:
        row = entry["row"]
        if row.group != group:
            group = row.group
            lines.append(f"| *{group}* |" + " |" * (len(header) - 1))
        cells = [format_cell(*entry["cells"][(m, g)], DECIMALS[m]) for m in bench.metrics for g in ALL_GROUPS]
        lines.append(f"| {row.name}{entry['marks']} | " + " | ".join(cells) + " |")
    lines.append("")
    if any("†" in e["marks"] for e in table["rows"]):
        lines.append("† published row reprinted by later papers; its attribution to this combination is "
                     "believed, not confirmed.")
    for note in table["footnotes"]:
        lines.append(f"\\* {note}")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex_table(table: dict) -> str:
    bench = table["bench"]
    n = len(bench.metrics) * len(ALL_GROUPS)
    lines = [
        r"% Generated by reproduce.py table. Needs \usepackage{booktabs}.",
        r"% Each cell: ours [published, ours - published].",
        r"\begin{table}[t]", r"\centering", r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l" + "c" * n + "}", r"\toprule",
        "".join(rf" & \multicolumn{{4}}{{c}}{{{METRIC_TITLES_TEX[m]}}}" for m in bench.metrics) + r" \\",
        " ".join(rf"\cmidrule(lr){{{2 + 4 * i}-{5 + 4 * i}}}" for i in range(len(bench.metrics))),
        "Method & " + " & ".join(GROUP_TITLES[g] for _ in bench.metrics for g in ALL_GROUPS) + r" \\",
    ]
    group = None
    for entry in table["rows"]:
        row = entry["row"]
        if row.group != group:
            group = row.group
            lines += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{\textit{{{_tex(group)}}}}} \\"]
        marks = entry["marks"].replace("*", r"$^*$").replace("†", r"$^\dagger$")
        cells = [format_cell(*entry["cells"][(m, g)], DECIMALS[m], latex=True) for m in bench.metrics
                 for g in ALL_GROUPS]
        lines.append(f"{_tex(row.name)}{marks} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{bench.title}: ours [published, difference].}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- subcommands

def cmd_list(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs, data_dir = shown_path(opts.runs or f"runs/{bench.name}"), shown_path(opts.data_dir or bench.data_dir)
    rows = ROWS[bench.name]
    print(f"# {bench.title}: {len(rows)} rows. Run one with: python reproduce.py run --dataset {bench.name} "
          f"--rows KEY[,KEY...]")
    for row in rows:
        stage = f"   (RRT stage 2; stage 1 = row {row.stage1})" if row.stage1 else ""
        print(f"{row.key:<24} {row.name}{stage}")
        print(f"    {shell_line(bench, row, runs, data_dir, opts.extra)}")


def cmd_run(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs = Path(opts.runs or REPO / "runs" / bench.name)
    data_dir = shown_path(opts.data_dir or REPO / bench.data_dir)
    rows = with_stage1(bench, select_rows(bench, opts.rows))
    if opts.write_script or opts.job_array:
        write_cluster_files(bench, rows, shown_path(runs), data_dir, opts)
        return
    matched, _ = match_runs(bench, load_results(runs))
    for row in rows:
        if row.key in matched and not opts.force:
            print(f"[skip] {row.key}: finished run at {shown_path(matched[row.key][-1][0])} (--force runs it again)")
            continue
        pretrained = None
        if row.stage1 is not None:
            try:
                pretrained = shown_path(stage1_checkpoint(bench, runs, row.stage1))
            except UserError:
                if not opts.dry_run:  # in a dry run stage 1 may simply not have run yet
                    raise
        python = sys.executable if not opts.dry_run else "python"
        cmd = train_command(bench, row, shown_path(runs), data_dir, opts.extra, pretrained=pretrained,
                            python=python)
        print(f"[{'dry-run' if opts.dry_run else 'run'}] {row.key}: {shlex.join(cmd)}", flush=True)
        if opts.dry_run:
            continue
        status = subprocess.run(cmd, cwd=REPO).returncode
        if status != 0:
            raise UserError(f"row {row.key}: train.py exited with status {status}; fix the cause shown above "
                            "and rerun (finished rows are skipped)")
        matched, _ = match_runs(bench, load_results(runs))
        if row.key not in matched:
            raise UserError(f"row {row.key}: train.py finished but no results.json of this row appeared under "
                            f"{shown_path(runs)}; check --runs and the flags passed after --")


def write_cluster_files(bench: Benchmark, rows: List[Row], runs: str, data_dir: str,
                        opts: argparse.Namespace) -> None:
    """--write-script: one bash script; --job-array: command files (stage 1, RRT stage 2) + SLURM wrapper."""
    stage1 = [shell_line(bench, r, runs, data_dir, opts.extra) for r in rows if r.stage1 is None]
    stage2 = [shell_line(bench, r, runs, data_dir, opts.extra) for r in rows if r.stage1 is not None]
    if opts.write_script:
        path = Path(opts.write_script)
        refuse_overwrite(path, opts.force)
        lines = ["#!/usr/bin/env bash", f"# {bench.title}: {len(rows)} rows, written by `python reproduce.py run`.",
                 "# RRT rows (stage 2) run after the rows whose checkpoints they start from.",
                 "set -euo pipefail", f"cd {shlex.quote(str(REPO))}"]
        for row, line in zip([r for r in rows if r.stage1 is None] + [r for r in rows if r.stage1], stage1 + stage2):
            lines += ["", f"# {row.name}", line]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        print(f"wrote {path} ({len(rows)} rows); run it with: bash {path}")
    if opts.job_array:
        path = Path(opts.job_array)
        files = [path, Path(f"{path}.rrt"), Path(f"{path}.slurm")]
        for f in files:
            refuse_overwrite(f, opts.force)
        path.write_text("\n".join(stage1) + ("\n" if stage1 else ""))
        if stage2:
            files[1].write_text("\n".join(stage2) + "\n")
        wrapper = [
            "#!/usr/bin/env bash",
            f"#SBATCH --job-name=ranksim-{bench.name}",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --output=slurm-%A_%a.out",
            "# Runs line $SLURM_ARRAY_TASK_ID of the command file given as the first argument.",
            "# Submit (RRT stage 2 waits for stage 1):",
            f"#   jid=$(sbatch --parsable --array=1-{len(stage1)} {files[2]} {path})",
        ]
        if stage2:
            wrapper.append(f"#   sbatch --dependency=afterok:$jid --array=1-{len(stage2)} {files[2]} {files[1]}")
        wrapper += ["set -euo pipefail", f"cd {shlex.quote(str(REPO))}",
                    'line=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$1")',
                    'if [ -z "$line" ]; then echo "no line $SLURM_ARRAY_TASK_ID in $1" >&2; exit 2; fi',
                    'echo "$line"', 'eval "$line"']
        files[2].write_text("\n".join(wrapper) + "\n")
        written = [str(f) for f in files if f.exists() and (f != files[1] or stage2)]
        print(f"wrote {', '.join(written)}; submit with:")
        print(f"  jid=$(sbatch --parsable --array=1-{len(stage1)} {files[2]} {path})")
        if stage2:
            print(f"  sbatch --dependency=afterok:$jid --array=1-{len(stage2)} {files[2]} {files[1]}")


def refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; choose another file name or pass --force to overwrite it")


def cmd_table(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs = Path(opts.runs)
    if not runs.is_dir():
        raise UserError(f"--runs {runs}: no such directory; pass the --store_root your runs used "
                        f"(default runs/{bench.name})")
    rows = select_rows(bench, opts.rows)
    table = build_table(bench, rows, runs)
    md, tex = markdown_table(table), latex_table(table)
    print(tex if opts.latex else md, end="")
    n_found = sum(1 for e in table["rows"] if e["run"])
    print(f"\n{n_found} of {len(rows)} rows have a run under {runs}.", file=sys.stderr)
    for note in table["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if opts.out:
        for suffix, text in ((".md", md), (".tex", tex)):
            out = Path(f"{opts.out}{suffix}")
            out.write_text(text)
            print(f"wrote {out}", file=sys.stderr)


def cmd_ckpt(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    row = select_rows(bench, opts.row)
    if len(row) != 1:
        raise UserError(f"--row {opts.row}: give exactly one row")
    print(stage1_checkpoint(bench, Path(opts.runs), row[0].key))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, runs_required: bool = False) -> None:
        p.add_argument("--dataset", required=True, help="agedb | imdb_wiki | sts-b")
        p.add_argument("--runs", required=runs_required, default=None,
                       help="directory of the runs (train.py --store_root; default runs/<dataset>)")

    p = sub.add_parser("list", help="print every row and its train.py command")
    common(p)
    p.add_argument("--data_dir", default=None, help="data directory passed to train.py")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("run", help="run rows sequentially, or write a script / job array")
    common(p)
    p.add_argument("--rows", required=True, help="'all' or comma-separated row keys (see list)")
    p.add_argument("--data_dir", default=None, help="data directory passed to train.py")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun finished rows / overwrite script files")
    p.add_argument("--write-script", metavar="FILE", help="write a bash script running the rows")
    p.add_argument("--job-array", metavar="FILE", help="write a job-array command file + SLURM wrapper")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("table", help="collect results.json files into the paper's table")
    common(p, runs_required=True)
    p.add_argument("--rows", default="all", help="rows to show (default all)")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of Markdown")
    p.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.tex")
    p.set_defaults(fn=cmd_table)

    p = sub.add_parser("ckpt", help="print the best checkpoint of a row's newest finished run")
    common(p, runs_required=True)
    p.add_argument("--row", required=True, help="row key, e.g. vanilla")
    p.set_defaults(fn=cmd_ckpt)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:  # everything after `--` goes to train.py
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    opts = build_parser().parse_args(argv)
    opts.extra = extra
    if extra and opts.command not in ("list", "run"):
        raise UserError(f"arguments after -- ({shlex.join(extra)}) are only for list and run")
    opts.fn(opts)


if __name__ == "__main__":
    run_cli(main)
