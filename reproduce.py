"""Reproduce the RankSim paper's tables: list, run or script every row, then tabulate the results.

    python reproduce.py list  --dataset agedb                    # every row and its train.py command
    python reproduce.py run   --dataset agedb --rows vanilla,vanilla-ranksim [--seeds 0,1,2] [--dry-run] [-- --epoch 1]
    python reproduce.py run   --dataset agedb --rows all --write-script runs.sh      # a shell script
    python reproduce.py run   --dataset agedb --rows all --job-array jobs.txt        # SLURM job array
    python reproduce.py table --dataset agedb --runs runs/agedb [--per-seed] [--latex] [--out table]
    python reproduce.py compare --dataset agedb --runs runs/agedb --rows vanilla-ranksim,vanilla
    python reproduce.py ckpt  --dataset agedb --runs runs/agedb --row vanilla [--seed 0]  # best checkpoint
    python reproduce.py released                                  # the 13 released checkpoints
    python reproduce.py evaluate-released --dataset agedb --row sqinv-ranksim --checkpoint FILE

Datasets: agedb, imdb_wiki, sts-b; and agedb-extrapolation, agedb-interpolation, agedb-blindspot: Puetz et
al.'s AgeDB stress-test protocols (train.py --protocol), with that paper's training settings and no
published numbers (its text was not available; see ranksim/harness/paper.py and the README's "Which
protocol tests what"). The rows, their flags (those of the published README's commands)
and the published numbers are data in `ranksim/harness/paper.py` (its docstring states the choices made
where the paper is silent). Commands run from the repository root; everything after `--` is passed
to train.py unchanged (e.g. `--epoch 1` for a quick check).

Seeds: `run --seeds 0,1,2` runs every row once per seed (run directories <row>-seed<N>); without
--seeds a row runs once with train.py's default seed. `table` shows per cell the mean ± sample std
over the seeds of a row and their number n (n=1: one run, no ±), and marks with ‡ a published
number lying more than 2 standard errors from our mean; `compare` gives the paired difference of
two rows over their common seeds with a 95 % interval.

Which run is which: a run belongs to a row when the settings recorded in its results.json (reweight,
lds, fds, loss, retrain_fc, RankSim on/off) are the row's. `run` counts a row (and seed) as finished
only when a finished run's recorded settings equal the command it would run (epochs, model,
img_size, batch size, every flag of the row and after `--`, every switch the run had on; paths,
--workers, --print_freq, --gpu and --no_progress aside); otherwise it prints what differs and runs
the row again in a new run directory (nothing is deleted). `table` shows, per row, the newest run of
each seed among the runs whose settings equal the row's newest run, and lists settings that differ
from the paper's (epochs, batch size, ...) under the table. Rows without a run stay empty.
"""
import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ranksim.harness.cli import UserError, run_cli
from ranksim.harness.paper import (
    ALL_GROUPS,
    BELIEVED,
    BENCHMARKS,
    RELEASED,
    RELEASED_TOLERANCE,
    TABLE_ALIASES,
    TABLE_BENCHMARKS,
    TABLE_ROWS,
    Benchmark,
    ReleasedCheckpoint,
    Row,
    flags_to_args,
    model_flags,
    published,
    run_identity,
    table_of_run,
)
from ranksim.stats import Summary, differs_from, paired_difference, summarize

REPO = Path(__file__).resolve().parent
# File names a benchmark program may give its best checkpoint (age programs; STS-B).
BEST_CKPT_NAMES = ("ckpt.best.pth.tar", "model_state_best.th", "ckpt.best.th")
# Recorded args that do not change a run's numbers: paths and logging/placement switches.
NOT_SETTINGS = frozenset({"data_dir", "store_root", "store_name", "pretrained", "resume", "eval_model",
                          "word_embs_file", "workers", "print_freq", "gpu", "no_progress",
                          "data_dir_as_typed",  # --data_dir as typed (data_dir is recorded absolute)
                          "compile"})  # torch.compile: the same computation, compiled


# ----------------------------------------------------------------------------- rows and commands

def benchmark_of(name: str) -> Benchmark:
    key = TABLE_ALIASES.get(name.lower())  # the paper's benchmarks and the AgeDB protocol tables
    if key is None:
        raise UserError(f"--dataset {name}: unknown dataset; use one of {', '.join(TABLE_BENCHMARKS)}")
    return TABLE_BENCHMARKS[key]


def select_rows(bench: Benchmark, spec: str, flag: str = "--rows") -> List[Row]:
    """Rows named in ``spec`` ("all" or comma-separated keys or names, case-insensitive), in table order."""
    rows = TABLE_ROWS[bench.name]
    if spec.strip().lower() == "all":
        return list(rows)
    wanted = [row_of(bench, item, flag) for item in (s.strip() for s in spec.split(",")) if item]
    if not wanted:
        raise UserError(f"{flag}: no row given; pass keys such as vanilla,vanilla-ranksim or 'all'")
    keys = {r.key for r in wanted}
    return [r for r in rows if r.key in keys]


def row_of(bench: Benchmark, item: str, flag: str = "--row") -> Row:
    """The row whose key or name is ``item`` (case-insensitive)."""
    for row in TABLE_ROWS[bench.name]:
        if item.lower() in (row.key.lower(), row.name.lower()):
            return row
    raise UserError(f"{flag} {item}: no such row for {bench.name}; "
                    f"see `python reproduce.py list --dataset {bench.name}` for the keys")


def parse_seeds(spec: Optional[str]) -> List[Optional[int]]:
    """--seeds "0,1,2" -> [0, 1, 2]; no --seeds -> [None] (one run with train.py's default seed)."""
    if spec is None:
        return [None]
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {spec}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {spec}: give distinct integers, e.g. --seeds 0,1,2")
    return seeds


def with_stage1(bench: Benchmark, rows: List[Row]) -> List[Row]:
    """``rows`` plus the stage-1 rows their RRT rows need, in table order, stage 1 before stage 2."""
    keys = {r.key for r in rows} | {r.stage1 for r in rows if r.stage1}
    ordered = [r for r in TABLE_ROWS[bench.name] if r.key in keys]
    return [r for r in ordered if r.stage1 is None] + [r for r in ordered if r.stage1 is not None]


def shown_path(path: "str | Path") -> str:
    """``path`` relative to the repository root when inside it (commands run there), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def store_name(row: Row, seed: Optional[int]) -> str:
    return row.key if seed is None else f"{row.key}-seed{seed}"


def seed_flags(seed: Optional[int]) -> List[str]:
    return [] if seed is None else ["--seed", str(seed)]


def train_command(bench: Benchmark, row: Row, runs: str, data_dir: str, extra: Sequence[str],
                  pretrained: Optional[str] = None, python: str = "python", seed: Optional[int] = None) -> List[str]:
    """argv of ``row``'s train.py run (run from the repository root)."""
    cmd = [python, f"{bench.folder}/train.py", "--data_dir", data_dir, "--store_root", runs,
           "--store_name", store_name(row, seed), *bench.path_flags, *row.flags, *seed_flags(seed)]
    if row.stage1 is not None:
        cmd += ["--pretrained", pretrained if pretrained is not None else "<best checkpoint of row "
                f"{row.stage1}>"]
    return cmd + list(extra)


def shell_line(bench: Benchmark, row: Row, runs: str, data_dir: str, extra: Sequence[str],
               python: str = "python", seed: Optional[int] = None) -> str:
    """One shell line for ``row``; RRT's stage 2 first looks up stage 1's best checkpoint (same seed)."""
    if row.stage1 is None:
        return shlex.join(train_command(bench, row, runs, data_dir, extra, python=python, seed=seed))
    lookup = shlex.join([python, "reproduce.py", "ckpt", "--dataset", bench.name, "--runs", runs,
                         "--row", row.stage1, *seed_flags(seed)])
    cmd = train_command(bench, row, runs, data_dir, extra, pretrained="CKPT", python=python, seed=seed)
    body = shlex.join(cmd).replace("CKPT", '"$ckpt"')
    return f"ckpt=$({lookup}) && {body}"


# ----------------------------------------------------------------------------- settings of a run

def same_value(a: object, b: object) -> bool:
    """Equal as recorded settings: numbers by value (``"1e-3"`` == 0.001), lists elementwise."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        a_list = list(a) if isinstance(a, (list, tuple)) else [a]
        b_list = list(b) if isinstance(b, (list, tuple)) else [b]
        return len(a_list) == len(b_list) and all(same_value(x, y) for x, y in zip(a_list, b_list))
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def run_seed(bench: Benchmark, args: dict) -> int:
    """The seed a run used (train.py's default when its results.json does not record one)."""
    return int(args.get(bench.seed_arg, bench.default_seed))


def command_settings(bench: Benchmark, row: Row, extra: Sequence[str], seed: Optional[int]) -> Dict[str, object]:
    """The settings a run of ``row`` started by reproduce.py records: the paper's defaults, then the
    row's flags, the seed and the flags after ``--`` (paths and NOT_SETTINGS left out)."""
    settings: Dict[str, object] = dict(bench.default_args)
    settings[bench.seed_arg] = bench.default_seed if seed is None else seed
    try:
        given = flags_to_args(list(row.flags) + list(extra))
    except ValueError as exc:
        raise UserError(f"arguments after --: {exc}; pass train.py flags such as -- --epoch 1") from None
    if "seed" in given:  # every program takes --seed; STS-B records it under its published name
        given[bench.seed_arg] = given.pop("seed")
    settings.update({k: v for k, v in given.items() if k not in NOT_SETTINGS})
    return settings


def settings_differences(expected: Dict[str, object], args: dict, reference: str = "command") -> List[str]:
    """'name=recorded (command: value)' for every expected setting the run does not have, and every
    switch the run had on that the command does not set (``reference`` names where ``expected`` is from)."""
    out = []
    for name, value in expected.items():
        if name not in args:
            out.append(f"{name} not recorded ({reference}: {value})")
        elif not same_value(args[name], value):
            out.append(f"{name}={args[name]} ({reference}: {value})")
    for name, value in args.items():
        if value is True and name not in expected and name not in NOT_SETTINGS:
            out.append(f"{name}=True ({reference}: off)")
    return out


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
    by_identity = {row.identity: row for row in TABLE_ROWS[bench.name]}
    matched: Dict[str, List[Tuple[Path, dict]]] = {}
    notes = []
    for path, results in found:
        if table_of_run(results) != bench.name:  # another dataset, or another protocol of AgeDB
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


def stage1_checkpoint(bench: Benchmark, runs: Path, key: str, seed: Optional[int] = None) -> Path:
    """Best checkpoint of the newest finished run of row ``key`` (of that seed when ``seed`` is given)."""
    matched, _ = match_runs(bench, load_results(runs))
    candidates = [(p, r) for p, r in matched.get(key, [])
                  if seed is None or run_seed(bench, r.get("args") or {}) == seed]
    seed_text = "" if seed is None else f" with seed {seed}"
    if not candidates:
        raise UserError(f"--runs {runs}: no finished run of row {key}{seed_text} (RRT's stage 1) found; run it first: "
                        f"python reproduce.py run --dataset {bench.name} --rows {key} --runs {runs}"
                        + ("" if seed is None else f" --seeds {seed}"))
    path, results = candidates[-1]
    ckpt = best_checkpoint(path.parent, results)
    if ckpt is None:
        raise UserError(f"{path.parent}: finished run of row {key} has no best checkpoint "
                        f"({' or '.join(BEST_CKPT_NAMES)}); run the row again")
    return ckpt


def comparable_runs(bench: Benchmark, row: Row, runs_of_row: List[Tuple[Path, dict]]) -> Tuple[List[Tuple[Path, dict]],
                                                                                              List[str]]:
    """The runs of a row that a table aggregates, and notes on the runs left out.

    The newest run fixes the settings; runs whose settings (seed, paths and NOT_SETTINGS aside)
    differ from it are left out; of several runs with one seed the newest is kept. Returned sorted by seed.
    """
    if not runs_of_row:
        return [], []
    newest_args = runs_of_row[-1][1].get("args") or {}
    ignored = NOT_SETTINGS | {bench.seed_arg}
    reference = {k: v for k, v in newest_args.items() if k not in ignored}
    by_seed: Dict[int, Tuple[Path, dict]] = {}
    notes = []
    for path, results in runs_of_row:
        args = results.get("args") or {}
        differences = settings_differences(reference, {k: v for k, v in args.items() if k not in ignored},
                                           "newest run")
        if differences:
            notes.append(f"{row.name}: {shown_path(path)} left out, its settings differ from the newest run's: "
                         f"{', '.join(differences)}")
            continue
        seed = run_seed(bench, args)
        if seed in by_seed:
            notes.append(f"{row.name}: seed {seed} has several runs; the newest is shown ({shown_path(path)})")
        by_seed[seed] = (path, results)
    return [by_seed[s] for s in sorted(by_seed)], notes


# ----------------------------------------------------------------------------- tables

def expected_settings(bench: Benchmark, row: Row) -> Dict[str, object]:
    """Settings the paper's run of ``row`` used (published defaults overridden by the row's flags)."""
    expected = dict(bench.default_args)
    for name, value in flags_to_args(row.flags, bench).items():
        if name in ("regularization_weight", "interpolation_lambda", "batch_size", "lr", "loss", "epoch"):
            expected[name] = value
    return expected


def deviations(bench: Benchmark, row: Row, args: dict) -> List[str]:
    """'name=value (paper: value)' for each setting of the run that is not the paper's."""
    out = []
    for name, value in expected_settings(bench, row).items():
        if name in args and not same_value(args[name], value):
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


def metric_summary(runs: List[Tuple[Path, dict]], metric: str, group: str) -> Optional[Summary]:
    """Mean ± std over the runs that have a value for (metric, group); None when none has one."""
    values = [v for v in (metric_value(r, metric, group) for _, r in runs) if v is not None]
    return summarize(values) if values else None


METRIC_TITLES = {"mae": "MAE ↓", "gmean": "GM ↓", "mse": "MSE ↓", "pearson": "Pearson ↑",
                 "balanced_mae": "bMAE ↓"}
METRIC_TITLES_TEX = {"mae": r"MAE $\downarrow$", "gmean": r"GM $\downarrow$", "mse": r"MSE $\downarrow$",
                     "pearson": r"Pearson $\uparrow$", "balanced_mae": r"bMAE $\downarrow$"}
GROUP_TITLES = {"all": "All", "many": "Many", "medium": "Med.", "few": "Few"}
DECIMALS = {"mae": 2, "gmean": 2, "mse": 3, "pearson": 1, "balanced_mae": 3}
DIFFERS_MARK = "‡"


def table_entry(bench: Benchmark, row: Row, runs: List[Tuple[Path, dict]], name: str) -> dict:
    """One table line: per (metric, group) the summary over ``runs`` and the published number."""
    marks = ""
    if runs and deviations(bench, row, runs[-1][1].get("args") or {}):
        marks += "*"
    if (bench.name, row.name) in BELIEVED:
        marks += "†"
    cells = {(m, g): (metric_summary(runs, m, g), published(bench.name, row.name, m, g))
             for m in bench.metrics for g in ALL_GROUPS}
    return {"row": row, "name": name, "marks": marks, "cells": cells, "runs": [shown_path(p) for p, _ in runs]}


def build_table(bench: Benchmark, rows: List[Row], runs: Path, per_seed: bool = False) -> dict:
    """Everything the Markdown and LaTeX writers need: per row, per (metric, group): (summary, paper).

    per_seed: one line per run (named "<row> (seed N)") instead of one per row."""
    matched, notes = match_runs(bench, load_results(runs))
    entries, footnotes = [], []
    for row in rows:
        chosen, left_out = comparable_runs(bench, row, matched.get(row.key, []))
        notes += left_out
        if chosen:
            dev = deviations(bench, row, chosen[-1][1].get("args") or {})
            if dev:
                footnotes.append(f"{row.name}: run differs from the paper's settings: {', '.join(dev)}")
        if per_seed and chosen:
            entries += [table_entry(bench, row, [run], f"{row.name} (seed {run_seed(bench, run[1].get('args') or {})})")
                        for run in chosen]
        else:
            entries.append(table_entry(bench, row, chosen, row.name))
    return {"bench": bench, "rows": entries, "notes": notes, "footnotes": footnotes}


def format_cell(summary: Optional[Summary], paper: Optional[float], decimals: int, latex: bool = False) -> str:
    """'mean ± std (n=N) [paper, mean-paper]' with the parts that exist, ‡ when the published number
    lies more than 2 standard errors from the mean; '' when neither exists."""
    text = "" if summary is None else summary.format(decimals)
    if latex:
        text = text.replace("±", r"$\pm$")
    if paper is not None:
        bracket = f"{paper:.{decimals}f}"
        if summary is not None:
            bracket += f", {summary.mean - paper:+.{decimals}f}"
        bracket = f"[{bracket}]"
        if latex:
            bracket = r"{\scriptsize " + bracket + "}"
        text = f"{text} {bracket}".strip()
        if summary is not None and differs_from(summary, paper):
            text += r"$^\ddagger$" if latex else DIFFERS_MARK
    return text


LEGEND = ("Each cell: ours as mean ± sample std over n seeds (n=1: a single run, no ±) [published, ours − "
          "published]; ‡: the published number lies more than 2 standard errors from our mean. An empty cell "
          "or a missing 'ours' means no run of that row was found. Published numbers: the RankSim README "
          "(BorealisAI/ranksim-imbalanced-regression) and Yang et al. (2021) as reprinted by later papers; "
          "see ranksim/harness/paper.py.")


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
        cells = [format_cell(*entry["cells"][(m, g)], DECIMALS[m]) or empty_cell(entry) for m in bench.metrics
                 for g in ALL_GROUPS]
        lines.append(f"| {entry['name']}{entry['marks']} | " + " | ".join(cells) + " |")
    lines.append("")
    if any("†" in e["marks"] for e in table["rows"]):
        lines.append("† published row reprinted by later papers; its attribution to this combination is "
                     "believed, not confirmed.")
    for note in table["footnotes"]:
        lines.append(f"\\* {note}")
    if bench.note:
        lines.append(bench.note)
    return "\n".join(lines) + "\n"


def empty_cell(entry: dict) -> str:
    """What a cell without a number shows: 'n/a' when the row has runs (their region is empty, e.g. the
    blind-spot protocol's medium shots), '' when no run of the row was found."""
    return "n/a" if entry["runs"] else ""


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def latex_table(table: dict) -> str:
    bench = table["bench"]
    n = len(bench.metrics) * len(ALL_GROUPS)
    lines = [
        r"% Generated by reproduce.py table. Needs \usepackage{booktabs}.",
        r"% Each cell: ours, mean $\pm$ sample std over n seeds [published, ours - published];",
        r"% $^\ddagger$: published number more than 2 standard errors from our mean.",
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
        cells = [format_cell(*entry["cells"][(m, g)], DECIMALS[m], latex=True) or empty_cell(entry)
                 for m in bench.metrics for g in ALL_GROUPS]
        lines.append(f"{_tex(entry['name'])}{marks} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}",
              rf"\caption{{{bench.title}: ours (mean $\pm$ std over n seeds) [published, difference].}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- subcommands

def cmd_list(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs, data_dir = shown_path(opts.runs or f"runs/{bench.name}"), shown_path(opts.data_dir or bench.data_dir)
    rows = TABLE_ROWS[bench.name]
    print(f"# {bench.title}: {len(rows)} rows. Run one with: python reproduce.py run --dataset {bench.name} "
          f"--rows KEY[,KEY...]")
    for row in rows:
        stage = f"   (RRT stage 2; stage 1 = row {row.stage1})" if row.stage1 else ""
        print(f"{row.key:<24} {row.name}{stage}")
        print(f"    {shell_line(bench, row, runs, data_dir, opts.extra)}")


def finished_run(bench: Benchmark, row: Row, runs_of_row: List[Tuple[Path, dict]], extra: Sequence[str],
                 seed: Optional[int]) -> Tuple[Optional[Path], List[str]]:
    """(a finished run of ``row`` whose settings equal the command, None) or (None, what differs in
    the newest run of that seed; [] when there is none)."""
    expected = command_settings(bench, row, extra, seed)
    differences: List[str] = []
    for path, results in reversed(runs_of_row):
        args = results.get("args") or {}
        found = settings_differences(expected, args)
        if not found:
            return path, []
        if not differences and run_seed(bench, args) == expected[bench.seed_arg]:
            differences = [f"{shown_path(path)}: {', '.join(found)}"]
    return None, differences


def cmd_run(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs = Path(opts.runs or REPO / "runs" / bench.name)
    data_dir = shown_path(opts.data_dir or REPO / bench.data_dir)
    rows = with_stage1(bench, select_rows(bench, opts.rows))
    seeds = parse_seeds(opts.seeds)
    if opts.write_script or opts.job_array:
        write_cluster_files(bench, rows, seeds, shown_path(runs), data_dir, opts)
        return
    for row in rows:
        for seed in seeds:
            run_row(bench, row, seed, runs, data_dir, opts)


def run_row(bench: Benchmark, row: Row, seed: Optional[int], runs: Path, data_dir: str,
            opts: argparse.Namespace) -> None:
    """Run one row with one seed unless a finished run with the same settings exists (or --force)."""
    label = store_name(row, seed)
    matched, _ = match_runs(bench, load_results(runs))
    done, differences = finished_run(bench, row, matched.get(row.key, []), opts.extra, seed)
    if done is not None and not opts.force:
        print(f"[skip] {label}: finished run at {shown_path(done)} (--force runs it again)")
        return
    if differences and done is None:
        print(f"[differs] {label}: the finished run {differences[0]}; running the row's command in a new "
              "run directory")
    pretrained = None
    if row.stage1 is not None:
        try:
            pretrained = shown_path(stage1_checkpoint(bench, runs, row.stage1, seed))
        except UserError:
            if not opts.dry_run:  # in a dry run stage 1 may simply not have run yet
                raise
    python = sys.executable if not opts.dry_run else "python"
    cmd = train_command(bench, row, shown_path(runs), data_dir, opts.extra, pretrained=pretrained,
                        python=python, seed=seed)
    print(f"[{'dry-run' if opts.dry_run else 'run'}] {label}: {shlex.join(cmd)}", flush=True)
    if opts.dry_run:
        return
    status = subprocess.run(cmd, cwd=REPO).returncode
    if status != 0:
        raise UserError(f"row {label}: train.py exited with status {status}; fix the cause shown above "
                        "and rerun (finished rows are skipped)")
    matched, _ = match_runs(bench, load_results(runs))
    if finished_run(bench, row, matched.get(row.key, []), opts.extra, seed)[0] is None:
        raise UserError(f"row {label}: train.py finished but no results.json of this row with these settings "
                        f"appeared under {shown_path(runs)}; check --runs and the flags passed after --")


def write_cluster_files(bench: Benchmark, rows: List[Row], seeds: List[Optional[int]], runs: str, data_dir: str,
                        opts: argparse.Namespace) -> None:
    """--write-script: one bash script; --job-array: command files (stage 1, RRT stage 2) + SLURM wrapper.
    One line per row and seed."""
    ordered = [r for r in rows if r.stage1 is None] + [r for r in rows if r.stage1 is not None]
    jobs = [(row, seed, shell_line(bench, row, runs, data_dir, opts.extra, seed=seed))
            for row in ordered for seed in seeds]
    stage1 = [line for row, _, line in jobs if row.stage1 is None]
    stage2 = [line for row, _, line in jobs if row.stage1 is not None]
    seed_text = "" if seeds == [None] else f" x {len(seeds)} seeds"
    if opts.write_script:
        path = Path(opts.write_script)
        refuse_overwrite(path, opts.force)
        lines = ["#!/usr/bin/env bash",
                 f"# {bench.title}: {len(rows)} rows{seed_text}, written by `python reproduce.py run`.",
                 "# RRT rows (stage 2) run after the rows whose checkpoints they start from.",
                 "set -euo pipefail", f"cd {shlex.quote(str(REPO))}"]
        for row, seed, line in jobs:
            lines += ["", f"# {row.name}" + ("" if seed is None else f", seed {seed}"), line]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        print(f"wrote {path} ({len(jobs)} runs); run it with: bash {path}")
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


def existing_runs_dir(bench: Benchmark, runs: str) -> Path:
    path = Path(runs)
    if not path.is_dir():
        raise UserError(f"--runs {runs}: no such directory; pass the --store_root your runs used "
                        f"(default runs/{bench.name})")
    return path


def cmd_table(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs = existing_runs_dir(bench, opts.runs)
    rows = select_rows(bench, opts.rows)
    table = build_table(bench, rows, runs, per_seed=opts.per_seed)
    md, tex = markdown_table(table), latex_table(table)
    print(tex if opts.latex else md, end="")
    n_found = len({e["row"].key for e in table["rows"] if e["runs"]})
    print(f"\n{n_found} of {len(rows)} rows have a run under {runs}.", file=sys.stderr)
    for note in table["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if opts.out:
        for suffix, text in ((".md", md), (".tex", tex)):
            out = Path(f"{opts.out}{suffix}")
            out.write_text(text)
            print(f"wrote {out}", file=sys.stderr)


def paired_comparison(bench: Benchmark, row_a: Row, row_b: Row, runs: Path,
                      confidence: float = 0.95) -> Tuple[List[int], Dict[Tuple[str, str], object]]:
    """Seeds both rows have, and per (metric, group) the paired difference A - B over them (stats.PairedDifference;
    None where a seed lacks the value)."""
    matched, _ = match_runs(bench, load_results(runs))
    by_seed = []
    for row in (row_a, row_b):
        chosen, _ = comparable_runs(bench, row, matched.get(row.key, []))
        by_seed.append({run_seed(bench, r.get("args") or {}): r for _, r in chosen})
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    differences: Dict[Tuple[str, str], object] = {}
    for metric in bench.metrics:
        for group in ALL_GROUPS:
            a = [metric_value(by_seed[0][s], metric, group) for s in seeds]
            b = [metric_value(by_seed[1][s], metric, group) for s in seeds]
            ok = seeds and None not in a and None not in b
            differences[(metric, group)] = paired_difference(a, b, confidence) if ok else None
    return seeds, differences


def cmd_compare(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    runs = existing_runs_dir(bench, opts.runs)
    names = [s.strip() for s in opts.rows.split(",") if s.strip()]
    if len(names) != 2:
        raise UserError(f"--rows {opts.rows}: give exactly two rows, A,B (the difference shown is A - B)")
    row_a, row_b = (row_of(bench, n, "--rows") for n in names)
    seeds, differences = paired_comparison(bench, row_a, row_b, runs)
    if not seeds:
        raise UserError(f"--runs {runs}: rows {row_a.key} and {row_b.key} have no seed in common; run both with "
                        f"the same seeds: python reproduce.py run --dataset {bench.name} --rows "
                        f"{row_a.key},{row_b.key} --seeds 0,1,2")
    print(f"### {bench.title}: {row_a.name} − {row_b.name}, paired over seeds {', '.join(map(str, seeds))} "
          f"(n={len(seeds)})")
    print()
    print("Mean of the per-seed differences with its 95 % Student-t interval; an interval excluding 0 is marked "
          "✓. Errors (MAE, GM, MSE): negative = A lower; Pearson: positive = A higher.")
    print()
    print("| Metric | " + " | ".join(GROUP_TITLES[g] for g in ALL_GROUPS) + " |")
    print("|---|" + "---|" * len(ALL_GROUPS))
    for metric in bench.metrics:
        cells = []
        for group in ALL_GROUPS:
            diff = differences[(metric, group)]
            cells.append("" if diff is None else diff.format(DECIMALS[metric]) + (" ✓" if diff.excludes_zero else ""))
        print(f"| {METRIC_TITLES[metric]} | " + " | ".join(cells) + " |")
    if len(seeds) < 2:
        print("\nOne common seed: no interval; run more seeds (--seeds 0,1,2) before drawing a conclusion.")


def cmd_ckpt(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    print(stage1_checkpoint(bench, Path(opts.runs), row_of(bench, opts.row).key, opts.seed))


# ----------------------------------------------------------------------------- released checkpoints

def released_entry(bench: Benchmark, row: Row) -> ReleasedCheckpoint:
    for entry in RELEASED:
        if entry.dataset == bench.name and entry.row == row.name:
            return entry
    names = ", ".join(_released_keys(bench))
    raise UserError(f"--row {row.key}: no released checkpoint of {bench.name} row {row.name}; released: {names}")


def _released_keys(bench: Benchmark) -> List[str]:
    keys = {r.name: r.key for r in TABLE_ROWS[bench.name]}
    return [keys[e.row] for e in RELEASED if e.dataset == bench.name]


def evaluate_command(bench: Benchmark, row: Row, checkpoint: str, data_dir: str, runs: str,
                     extra: Sequence[str] = (), python: str = "python") -> List[str]:
    """argv testing a released checkpoint of ``row`` (run from the repository root): the published
    form, age `train.py --evaluate [model flags] --resume FILE`, STS-B `train.py [model flags]
    --evaluate --eval_model FILE`, plus where the data is and where the results go."""
    script = f"{bench.folder}/train.py"
    flags = list(model_flags(row.flags))
    if bench.evaluate_style == "resume":
        cmd = [python, script, "--evaluate", *flags, "--resume", checkpoint]
    else:
        cmd = [python, script, *flags, "--evaluate", "--eval_model", checkpoint]
    return cmd + ["--data_dir", data_dir, "--store_root", runs, *bench.path_flags, *extra]


def released_figures(entry: ReleasedCheckpoint) -> List[Tuple[str, str, float]]:
    """(metric, group, published value) of each figure the README states for a released checkpoint."""
    return [(m, g, published(entry.dataset, entry.row, m, g)) for m, g in entry.figures]


def check_released(results: dict, figures: Sequence[Tuple[str, str, float]]) -> Tuple[List[str], bool]:
    """Lines 'MAE all: ours 6.912, published 6.91, |difference| 0.002 <= 0.01 PASS' and whether all pass."""
    lines, all_pass = [], True
    for metric, group, paper in figures:
        ours = metric_value(results, metric, group)
        tolerance = RELEASED_TOLERANCE[metric]
        ok = ours is not None and abs(ours - paper) <= tolerance + 1e-9
        all_pass &= ok
        ours_text = "missing" if ours is None else f"{ours:.{DECIMALS[metric] + 2}f}"
        diff_text = "" if ours is None else f", |difference| {abs(ours - paper):.{DECIMALS[metric] + 2}f}"
        lines.append(f"{METRIC_TITLES[metric].split()[0]} {group}: ours {ours_text}, published {paper:.{DECIMALS[metric]}f}{diff_text} "
                     f"(tolerance {tolerance}) {'PASS' if ok else 'FAIL'}")
    return lines, all_pass


def cmd_released(opts: argparse.Namespace) -> None:
    datasets = [benchmark_of(opts.dataset).name] if opts.dataset else list(BENCHMARKS)
    entries = [e for e in RELEASED if e.dataset in datasets]
    print(f"# {len(entries)} checkpoints released by the RankSim authors (Google Drive file ids; download "
          "https://drive.google.com/uc?id=<id>). Test one with: python reproduce.py evaluate-released "
          "--dataset D --row KEY --checkpoint FILE")
    for entry in entries:
        bench = BENCHMARKS[entry.dataset]
        row = row_of(bench, entry.row)
        figures = ", ".join(f"{METRIC_TITLES[m].split()[0]} {g} {v:.{DECIMALS[m]}f}" for m, g, v in released_figures(entry))
        print(f"{bench.title:<14} {row.key:<26} {row.name:<26} {figures}   drive id {entry.drive_id}")
        print(f"    {shlex.join(evaluate_command(bench, row, 'FILE', shown_path(bench.data_dir), 'runs/released'))}")


def cmd_evaluate_released(opts: argparse.Namespace) -> None:
    bench = benchmark_of(opts.dataset)
    row = row_of(bench, opts.row)
    entry = released_entry(bench, row)
    checkpoint = Path(opts.checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"--checkpoint {checkpoint}: no such file; download it (drive id {entry.drive_id}, see "
                        "`python reproduce.py released`)")
    runs = Path(opts.runs or REPO / "runs" / "released")
    before = set(runs.rglob("results.json")) if runs.is_dir() else set()
    cmd = evaluate_command(bench, row, shown_path(checkpoint), shown_path(opts.data_dir or REPO / bench.data_dir),
                           shown_path(runs), opts.extra, python=sys.executable)
    print(f"[evaluate] {row.name}: {shlex.join(cmd)}", flush=True)
    status = subprocess.run(cmd, cwd=REPO).returncode
    if status != 0:
        raise UserError(f"--checkpoint {checkpoint}: train.py --evaluate exited with status {status}; fix the cause "
                        "shown above")
    new = sorted(set(runs.rglob("results.json")) - before)
    if len(new) != 1:
        raise UserError(f"--runs {runs}: expected one new results.json from the evaluation, found {len(new)}")
    results = json.loads(new[0].read_text())
    lines, all_pass = check_released(results, released_figures(entry))
    print(f"{bench.title} {row.name}, released checkpoint {shown_path(checkpoint)} (results: {shown_path(new[0])}):")
    for line in lines:
        print(f"  {line}")
    if not all_pass:
        raise UserError(f"{row.name}: our evaluation of {checkpoint} differs from the published figure beyond the "
                        "tolerance (FAIL above); check the data split (--data_dir) and the checkpoint file")
    print("PASS")


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def subcommand(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text + " (switches are off by default)")

    def common(p: argparse.ArgumentParser, runs_required: bool = False) -> None:
        p.add_argument("--dataset", required=True, help="agedb | imdb_wiki | sts-b")
        if runs_required:
            p.add_argument("--runs", required=True, help="directory of the runs (train.py --store_root)")
        else:
            p.add_argument("--runs", default=None,
                           help="directory of the runs (train.py --store_root); default: runs/<dataset>")

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data_dir", default=None,
                       help="data directory passed to train.py; default: the benchmark's data folder "
                            "(agedb-dir/data, imdb-wiki-dir/data, sts-b-dir/glue_data/STS-B)")

    p = subcommand("list", "print every row and its train.py command")
    common(p)
    data_dir(p)
    p.set_defaults(fn=cmd_list)

    p = subcommand("run", "run rows sequentially (skipping finished ones), or write a script / job array")
    common(p)
    p.add_argument("--rows", required=True, help="'all' or comma-separated row keys (see list)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0,1,2: one run per row and seed (run directories "
                        "<row>-seed<N>); default: one run with train.py's default seed")
    data_dir(p)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun finished rows / overwrite script files")
    p.add_argument("--write-script", metavar="FILE", help="write a bash script running the rows")
    p.add_argument("--job-array", metavar="FILE", help="write a job-array command file + SLURM wrapper")
    p.set_defaults(fn=cmd_run)

    p = subcommand("table", "collect results.json files into the paper's table (Markdown on stdout)")
    common(p, runs_required=True)
    p.add_argument("--rows", default="all", help="rows to show; default: all")
    p.add_argument("--per-seed", action="store_true", help="one line per run (seed) instead of mean ± std per row")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of Markdown")
    p.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.tex")
    p.set_defaults(fn=cmd_table)

    p = subcommand("compare", "paired difference of two rows over their common seeds, per shot group")
    common(p, runs_required=True)
    p.add_argument("--rows", required=True, help="A,B: two row keys; the difference shown is A - B")
    p.set_defaults(fn=cmd_compare)

    p = subcommand("ckpt", "print the best checkpoint of a row's newest finished run")
    common(p, runs_required=True)
    p.add_argument("--row", required=True, help="row key, e.g. vanilla")
    p.add_argument("--seed", type=int, default=None,
                   help="only runs with this seed; default: the newest run of any seed")
    p.set_defaults(fn=cmd_ckpt)

    p = subcommand("released", "list the released checkpoints with their published figures and evaluate commands")
    p.add_argument("--dataset", default=None, help="only this dataset; default: all three")
    p.set_defaults(fn=cmd_released)

    p = subcommand("evaluate-released", "evaluate a released checkpoint and compare with its published figure "
                   "(exit status 2 on FAIL)")
    p.add_argument("--dataset", required=True, help="agedb | imdb_wiki | sts-b")
    p.add_argument("--row", required=True, help="row key of the checkpoint (see released), e.g. sqinv-ranksim")
    p.add_argument("--checkpoint", required=True, help="the downloaded checkpoint file")
    data_dir(p)
    p.add_argument("--runs", default=None,
                   help="where the evaluation's run directory goes; default: runs/released")
    p.set_defaults(fn=cmd_evaluate_released)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:  # everything after `--` goes to train.py
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    opts = build_parser().parse_args(argv)
    opts.extra = extra
    if extra and opts.command not in ("list", "run", "evaluate-released"):
        raise UserError(f"arguments after -- ({shlex.join(extra)}) are only for list, run and evaluate-released")
    opts.fn(opts)


if __name__ == "__main__":
    run_cli(main)
