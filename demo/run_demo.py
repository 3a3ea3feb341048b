"""`make demo`: RankSim on a synthetic, imbalanced age-regression task, end to end on a CPU in minutes.

    python demo/run_demo.py [--methods vanilla,ranksim,sqinv-ranksim] [--seeds 0,1,2] [--retrain]

1. Generates the demo dataset (demo/make_data.py; skipped when present): train images whose ages
   follow the AgeDB-DIR train histogram x 0.4, balanced val/test, 32x32 px (sizes: make_data.py).
2. Trains each method (default Vanilla and RankSim; SQINV+RankSim with --methods) once per seed
   (default 0, 1, 2) with the REAL agedb-dir/train.py (ResNet-18 at 32 px, CPU, --seed), skipping a
   run whose finished run with the same settings is already under demo_runs/.
3. Prints, per shot group, the mean ± sample std over the seeds of the test MAE and GM (plus the
   "predict the train mean" baseline), and each method's paired difference to Vanilla (same seeds)
   with its 95 % Student-t interval (ranksim/stats.py), and each method's RankSim health at the last
   epoch from results.json (mean cosine and rank agreement of the val features and of the fixed train
   batch, the gradient ratio); writes it all to demo_runs/demo_table.md and draws the figures into
   demo_runs/figures/.

Settings (shared by all methods so that only the method differs): Adam, lr 1e-3, batch 64, L1 loss,
EPOCHS epochs with the lr divided by 10 for the last one. RankSim uses the paper's AgeDB-DIR
strength (gamma=100, lambda=2). The paper trains ResNet-50 at 224 px for 90+ epochs with batch
64 / lr 2.5e-4 for RankSim; the demo is a scaled-down check that the pipeline learns, not a
reproduction of the paper's numbers (reproduce.py does that on the real data).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "demo"))
sys.path.insert(0, str(REPO / "figures"))

from make_data import DEFAULTS as DATA_DEFAULTS  # noqa: E402
from make_data import make_demo_dataset  # noqa: E402

from ranksim.harness.cli import UserError, parse_seeds, run_cli  # noqa: E402
from ranksim.metrics import age_shot_groups, per_label_mae, regression_metrics  # noqa: E402
from ranksim.stats import paired_difference, summarize  # noqa: E402

EPOCHS = 3
DEFAULT_SEEDS = "0,1,2"
GROUPS = ("all", "many", "medium", "few")
RANKSIM = ("--regularization_weight", "100", "--interpolation_lambda", "2")
# key -> (table name, method flags)
METHODS = {
    "vanilla": ("Vanilla", ()),
    "ranksim": ("RankSim", RANKSIM),
    "sqinv-ranksim": ("SQINV+RankSim", ("--reweight", "sqrt_inv") + RANKSIM),
}
DEFAULT_METHODS = "vanilla,ranksim"  # + sqinv-ranksim: 50 % more time (see demo/README.md)
REFERENCE = "vanilla"  # the paired differences are method - Vanilla


def common_flags(epochs: int, seed: int, img_size: int = 32) -> tuple:
    """train.py flags every demo run shares (only the seed differs between runs of one method)."""
    return ("--model", "resnet18", "--img_size", str(img_size), "--batch_size", "64", "--lr", "1e-3",
            "--epoch", str(epochs), "--schedule", str(epochs - 1), "--workers", "0", "--seed", str(seed),
            "--print_freq", "1000")


def flags_to_dict(flags) -> dict:
    """('--a', '1', '--b', ...) -> {'a': '1', ...} (every flag here takes one value)."""
    return {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}


def same_value(recorded, wanted: str) -> bool:
    if isinstance(recorded, list):  # --schedule
        return [str(v) for v in recorded] == wanted.split()
    try:
        return float(recorded) == float(wanted)
    except (TypeError, ValueError):
        return str(recorded) == wanted


def finished_run(runs: Path, name: str, flags: dict):
    """Newest results.json under runs/<name>* whose recorded args equal ``flags``, else None."""
    candidates = sorted(runs.glob(f"{name}*/results.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(candidates):
        results = json.loads(path.read_text())
        args = results.get("args", {})
        if all(key in args and same_value(args[key], value) for key, value in flags.items()):
            return path
    return None


def run_name(key: str, seed: int) -> str:
    """Run directory name of one method and seed under the demo's runs folder."""
    return f"{key}_seed{seed}"


def train(key: str, seed: int, data_dir: Path, runs: Path, epochs: int, img_size: int, retrain: bool) -> Path:
    """Run agedb-dir/train.py for one method and seed unless a finished identical run exists;
    returns its results.json path."""
    name, method_flags = METHODS[key]
    label = f"{name}, seed {seed}"
    store_name = run_name(key, seed)
    flags = ("--data_dir", str(data_dir), "--store_root", str(runs), "--store_name", store_name) + \
        common_flags(epochs, seed, img_size) + method_flags
    wanted = flags_to_dict(flags)
    wanted.pop("store_name")
    wanted.pop("store_root")
    if not retrain:
        done = finished_run(runs, store_name, wanted)
        if done is not None:
            print(f"[{label}] using the finished run {done.parent} (--retrain trains again)", flush=True)
            return done
    cmd = [sys.executable, str(REPO / "agedb-dir" / "train.py"), *flags]
    print(f"[{label}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    status = subprocess.run(cmd, cwd=REPO).returncode
    if status != 0:
        raise UserError(f"demo run {store_name}: agedb-dir/train.py exited with status {status} (see above)")
    done = finished_run(runs, store_name, wanted)
    if done is None:
        raise UserError(f"demo run {store_name}: train.py finished but wrote no matching results.json under {runs}")
    print(f"[{label}] trained in {time.time() - start:.0f} s", flush=True)
    return done


def mean_baseline(data_dir: Path) -> dict:
    """Metrics and per-label MAE of predicting the train mean age for every test image."""
    import pandas as pd

    table = pd.read_csv(data_dir / "agedb.csv")
    train = table.loc[table["split"] == "train", "age"].to_numpy(np.float64)
    test = table.loc[table["split"] == "test", "age"].to_numpy(np.float64)
    preds = np.full_like(test, train.mean())
    return {"metrics": regression_metrics(preds, test, age_shot_groups(train, test)),
            "per_label": per_label_mae(preds, test), "train": train, "test": test,
            "mean": float(train.mean())}


def seed_values(results: list, group: str, metric: str) -> list:
    """One value per seed of metrics[group][metric] (results: results.json dicts, one per seed)."""
    return [r["metrics"][group][metric] for r in results]


def summary_table(metric: str, baseline: dict, results: dict, counts: dict) -> str:
    """Markdown table of one metric ("mae" | "gmean"): mean ± sample std over seeds per shot group."""
    title = {"mae": "MAE", "gmean": "GM"}[metric]
    header = f"| {title} (mean ± std over seeds) | " + " | ".join(f"{g} ({counts[g]})" for g in GROUPS) + " |"
    lines = [header, "|---" * (len(GROUPS) + 1) + "|",
             f"| Predict the train mean ({baseline['mean']:.1f}; no training) | "
             + " | ".join(f"{baseline['metrics'][g][metric]:.2f}" if counts[g] else "" for g in GROUPS) + " |"]
    for key, runs in results.items():
        cells = [summarize(seed_values(runs, g, metric)).format(2) if counts[g] else "" for g in GROUPS]
        lines.append(f"| {METHODS[key][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (part, key, column title) of results.json's "health" record (ranksim/harness/health.py)
HEALTH_COLUMNS = (("val", "mean_cosine", "val mean cosine"), ("val", "rank_agreement", "val rank agreement"),
                  ("train", "mean_cosine", "train-batch mean cosine"),
                  ("train", "rank_agreement", "train-batch rank agreement"),
                  ("train", "grad_ratio", "grad ratio RankSim : L1"))


def health_cell(records: list, part: str, key: str) -> str:
    """One health number over the seeds' last-epoch records: mean ± std, 'null' for a vanilla run's
    gradient ratio, 'n/a' where a record has it undefined."""
    values = [record[part][key] for record in records]
    if all(v is None for v in values):
        return "null (gamma 0)" if key == "grad_ratio" else "n/a"
    if any(v is None for v in values):
        return "n/a"
    return summarize(values).format(3)


def health_table(results: dict) -> str:
    """Markdown table of each method's RankSim health at its last epoch, read from results.json
    ("health"), as mean ± std over the seeds; then the warnings of those records, one line each."""
    header = ("| RankSim health, last epoch (mean ± std over seeds) | "
              + " | ".join(title for _, _, title in HEALTH_COLUMNS) + " |")
    lines, notes = [header, "|---" * (len(HEALTH_COLUMNS) + 1) + "|"], []
    for key, runs in results.items():
        name, records = METHODS[key][0], [r.get("health") for r in runs]
        if any(record is None for record in records):
            cells = ["not recorded (runs made before the health record; --retrain)"] + [""] * (len(HEALTH_COLUMNS) - 1)
        else:
            cells = [health_cell(records, part, column) for part, column, _ in HEALTH_COLUMNS]
            seeds = [r["args"]["seed"] for r in runs]
            notes += [f"- {name}, seed {seed}: {warning}" for seed, record in zip(seeds, records)
                      for warning in record["warnings"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + notes) + "\n"


def verdict(difference, lower: str = "lower", higher: str = "higher") -> str:
    """What a paired difference supports: ``lower`` / ``higher`` than the reference, or within noise."""
    if difference.n < 2:
        return "one seed: no conclusion"
    if not difference.excludes_zero:
        return "within noise"
    return lower if difference.mean < 0 else higher


def paired_table(results: dict, counts: dict) -> str:
    """Markdown table: per method and shot group, the paired MAE difference to Vanilla (same seeds),
    its 95 % interval and what it supports. Empty when Vanilla or no other method was run."""
    others = [k for k in results if k != REFERENCE]
    if REFERENCE not in results or not others:
        return ""
    reference = METHODS[REFERENCE][0]
    header = (f"| MAE difference to {reference} (same seeds; 95 % interval) | "
              + " | ".join(f"{g} ({counts[g]})" for g in GROUPS) + " |")
    lines = [header, "|---" * (len(GROUPS) + 1) + "|"]
    for key in others:
        cells = []
        for g in GROUPS:
            if not counts[g]:
                cells.append("")
                continue
            diff = paired_difference(seed_values(results[key], g, "mae"), seed_values(results[REFERENCE], g, "mae"))
            cells.append(f"{diff.format(2)}: {verdict(diff)}")
        lines.append(f"| {METHODS[key][0]} − {reference} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_over_seeds(runs: list) -> dict:
    """A results-like dict whose per-label and overall MAE are the means over the seeds' runs."""
    ages = sorted(set.intersection(*(set(r["per_label"]) for r in runs)), key=float)
    return {"per_label": {a: {"count": runs[0]["per_label"][a]["count"],
                              "mae": float(np.mean([r["per_label"][a]["mae"] for r in runs]))} for a in ages},
            "metrics": {"all": {"mae": float(np.mean(seed_values(runs, "all", "mae")))}}}


def rank_agreement_lines(paths: dict, data_dir: Path) -> str:
    """Mean row-wise Spearman between feature- and label-similarity ranks on one test batch, per method
    (mean ± std over seeds), and RankSim's paired difference to Vanilla."""
    import make_figures as figs

    values = {}
    for key in ("vanilla", "ranksim"):
        values[key] = []
        for path in paths.get(key, []):
            features, labels, _ = figs.batch_features(path.parent, str(data_dir), 32)
            values[key].append(figs.rank_agreement(*figs.similarity_ranks(features, labels)))
    if not (values["vanilla"] and values["ranksim"]):
        return ""
    diff = paired_difference(values["ranksim"], values["vanilla"])
    return ("Feature/label similarity-rank agreement on one test batch of 32 distinct ages (mean row-wise "
            f"Spearman): Vanilla {summarize(values['vanilla']).format(2)}, "
            f"RankSim {summarize(values['ranksim']).format(2)}; "
            f"RankSim − Vanilla {diff.format(2)}: {verdict(diff, 'less agreement', 'more agreement')}\n")


def draw_figures(out: Path, data_dir: Path, baseline: dict, results: dict, paths: dict) -> list:
    """The demo's figures; per-label MAE averaged over the seeds, rank matrices of the first seed."""
    import make_figures as figs

    n = len(next(iter(results.values())))
    written = [
        figs.plot_examples(data_dir / "agedb.csv", out / "demo_examples.png", n=16,
                           title="Demo test images: the disc grows with the age (apparent age = age "
                                 "± 4 years); position, colours and noise vary"),
        figs.plot_label_distribution(baseline["train"], "age", out / "demo_label_distribution.png",
                                     "Demo data (synthetic, AgeDB-DIR-shaped)", test=baseline["test"]),
        figs.plot_per_label_mae([mean_over_seeds(runs) for runs in results.values()],
                                [METHODS[k][0] for k in results], out / "demo_per_label_mae.png",
                                f"Demo: test MAE per age (mean over {n} seed{'s' if n > 1 else ''})",
                                train=baseline["train"],
                                baseline_mae={a: v["mae"] for a, v in baseline["per_label"].items()}),
    ]
    ranked = [k for k in results if k in ("vanilla", "ranksim")]
    if len(ranked) == 2:
        seed = json.loads(paths[ranked[0]][0].read_text())["args"]["seed"]
        written.append(figs.plot_rank_matrices(
            [paths[k][0].parent for k in ranked], [METHODS[k][0] for k in ranked],
            out / "demo_rank_matrices.png", data_dir=str(data_dir), batch_size=32,
            title=f"Demo: similarity ranks within one test batch (32 images, distinct ages; seed {seed})"))
    return written




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated subset of {', '.join(METHODS)} (default: {DEFAULT_METHODS})")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS,
                        help=f"comma-separated --seed values, one run per method and seed (default: {DEFAULT_SEEDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs per run (default: {EPOCHS})")
    parser.add_argument("--data_dir", default=str(REPO / "demo_data" / "agedb"), help="demo dataset folder")
    parser.add_argument("--runs", default=str(REPO / "demo_runs"), help="folder of the demo's runs")
    parser.add_argument("--figures", default=None, help="figure folder (default: <runs>/figures)")
    parser.add_argument("--retrain", action="store_true", help="train again even if finished runs exist")
    parser.add_argument("--no_figures", action="store_true", help="skip the figures")
    quick = parser.add_argument_group("a smaller demo (quick checks; the defaults are the documented demo)")
    quick.add_argument("--train_scale", type=float, default=DATA_DEFAULTS["train_scale"],
                       help=f"train images per AgeDB-DIR train image (default {DATA_DEFAULTS['train_scale']})")
    quick.add_argument("--eval_scale", type=float, default=DATA_DEFAULTS["eval_scale"],
                       help="val/test images per AgeDB-DIR test image (default 1/3)")
    quick.add_argument("--img_size", type=int, default=DATA_DEFAULTS["img_size"], help="image side in pixels")
    opts = parser.parse_args(argv)
    keys = [k.strip() for k in opts.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        raise UserError(f"--methods {opts.methods}: unknown method(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(METHODS)}")
    if opts.epochs < 2:
        raise UserError(f"--epochs {opts.epochs}: need at least 2 (the last epoch runs at lr/10)")
    seeds = parse_seeds(opts.seeds)

    start = time.time()
    data_dir, runs = Path(opts.data_dir).resolve(), Path(opts.runs).resolve()
    make_demo_dataset(data_dir, train_scale=opts.train_scale, eval_scale=opts.eval_scale, img_size=opts.img_size)
    paths = {k: [train(k, seed, data_dir, runs, opts.epochs, opts.img_size, opts.retrain) for seed in seeds]
             for k in keys}
    results = {k: [json.loads(p.read_text()) for p in ps] for k, ps in paths.items()}
    baseline = mean_baseline(data_dir)
    counts = {g: baseline["metrics"][g]["count"] for g in GROUPS}

    report = (f"Demo results: test split, {len(seeds)} seed(s) per method ({', '.join(map(str, seeds))}); "
              "MAE and GM in years; column headers give the test images per shot group.\n\n"
              + summary_table("mae", baseline, results, counts) + "\n" + summary_table("gmean", baseline, results, counts))
    report += ("\nRankSim health (docs/library.md, 'Is RankSim working?'): features collapsed above a mean "
               "cosine of 0.99; rank agreement = mean row-wise Spearman of feature vs label similarity.\n\n"
               + health_table(results))
    paired = paired_table(results, counts)
    if paired:
        report += ("\nPaired differences (run i of each method uses seed i): mean [95 % Student-t interval]; "
                   "'within noise' where the interval includes 0.\n\n" + paired)
    if not opts.no_figures:
        agreement = rank_agreement_lines(paths, data_dir)
        report += ("\n" + agreement) if agreement else ""
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "demo_table.md").write_text(report)
    print("\n" + report)

    if not opts.no_figures:
        out = Path(opts.figures).resolve() if opts.figures else runs / "figures"
        written = draw_figures(out, data_dir, baseline, results, paths)
        print("figures: " + ", ".join(str(p) for p in written))
    print(f"demo finished in {time.time() - start:.0f} s (wall)")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
