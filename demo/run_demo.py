"""`make demo`: RankSim on a synthetic, imbalanced age-regression task, end to end on a CPU in minutes.

    python demo/run_demo.py [--methods vanilla,ranksim,sqinv-ranksim] [--retrain]

1. Generates the demo dataset (demo/make_data.py; skipped when present): 6,130 train images whose
   ages follow the AgeDB-DIR train histogram, balanced val/test (725 each), 32x32 px.
2. Trains each method with the REAL agedb-dir/train.py (ResNet-18 at 32 px, CPU), skipping a
   method whose finished run with the same settings is already under demo_runs/.
3. Prints a paper-style table (MAE and GM for all / many / medium / few, plus the "predict the train
   mean" baseline), writes it to demo_runs/demo_table.md, and draws the figures into
   demo_runs/figures/ (label distribution, per-label MAE, similarity rank matrices).

Settings (shared by all methods so that only the method differs): Adam, lr 1e-3, batch 64, L1 loss,
EPOCHS epochs with the lr divided by 10 for the last one, seed 0. RankSim uses the paper's AgeDB-DIR
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

from ranksim.errors import UserError, run_cli  # noqa: E402
from ranksim.metrics import age_shot_groups, per_label_mae, regression_metrics  # noqa: E402

EPOCHS = 5
RANKSIM = ("--regularization_weight", "100", "--interpolation_lambda", "2")
# key -> (table name, method flags)
METHODS = {
    "vanilla": ("Vanilla", ()),
    "ranksim": ("RankSim", RANKSIM),
    "sqinv-ranksim": ("SQINV+RankSim", ("--reweight", "sqrt_inv") + RANKSIM),
}
DEFAULT_METHODS = "vanilla,ranksim,sqinv-ranksim"


def common_flags(epochs: int, img_size: int = 32) -> tuple:
    """train.py flags every demo method shares."""
    return ("--model", "resnet18", "--img_size", str(img_size), "--batch_size", "64", "--lr", "1e-3",
            "--epoch", str(epochs), "--schedule", str(epochs - 1), "--workers", "0", "--seed", "0",
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


def finished_run(runs: Path, key: str, flags: dict):
    """Newest results.json under runs/<key>* whose recorded args equal ``flags``, else None."""
    candidates = sorted(runs.glob(f"{key}*/results.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(candidates):
        results = json.loads(path.read_text())
        args = results.get("args", {})
        if all(name in args and same_value(args[name], value) for name, value in flags.items()):
            return path
    return None


def train(key: str, data_dir: Path, runs: Path, epochs: int, img_size: int, retrain: bool) -> Path:
    """Run agedb-dir/train.py for one method unless a finished identical run exists; its results.json path."""
    name, method_flags = METHODS[key]
    flags = ("--data_dir", str(data_dir), "--store_root", str(runs), "--store_name", key) + \
        common_flags(epochs, img_size) + method_flags
    wanted = flags_to_dict(flags)
    wanted.pop("store_name")
    wanted.pop("store_root")
    if not retrain:
        done = finished_run(runs, key, wanted)
        if done is not None:
            print(f"[{name}] using the finished run {done.parent} (--retrain trains again)", flush=True)
            return done
    cmd = [sys.executable, str(REPO / "agedb-dir" / "train.py"), *flags]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    status = subprocess.run(cmd, cwd=REPO).returncode
    if status != 0:
        raise UserError(f"demo method {key}: agedb-dir/train.py exited with status {status} (see above)")
    done = finished_run(runs, key, wanted)
    if done is None:
        raise UserError(f"demo method {key}: train.py finished but wrote no matching results.json under {runs}")
    print(f"[{name}] trained in {time.time() - start:.0f} s", flush=True)
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


def demo_table(rows) -> str:
    """Markdown table: rows = [(name, metrics)] with metrics[group]["mae"/"gmean"/"count"]."""
    groups = ("all", "many", "medium", "few")
    counts = rows[0][1]
    header = ("| Method | " + " | ".join(f"MAE {g} ({counts[g]['count']})" for g in groups) + " | "
              + " | ".join(f"GM {g}" for g in groups) + " |")
    lines = [header, "|---" * 9 + "|"]
    for name, metrics in rows:
        cells = [f"{metrics[g]['mae']:.2f}" if metrics[g]["count"] else "" for g in groups]
        cells += [f"{metrics[g]['gmean']:.2f}" if metrics[g]["count"] else "" for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated subset of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs per method")
    parser.add_argument("--data_dir", default=str(REPO / "demo_data" / "agedb"), help="demo dataset folder")
    parser.add_argument("--runs", default=str(REPO / "demo_runs"), help="folder of the demo's runs")
    parser.add_argument("--figures", default=None, help="figure folder (default: <runs>/figures)")
    parser.add_argument("--retrain", action="store_true", help="train again even if finished runs exist")
    parser.add_argument("--no_figures", action="store_true", help="skip the figures")
    quick = parser.add_argument_group("a smaller demo (quick checks; the defaults are the documented demo)")
    quick.add_argument("--train_scale", type=float, default=DATA_DEFAULTS["train_scale"],
                       help="train images per AgeDB-DIR train image (default 0.5)")
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

    start = time.time()
    data_dir, runs = Path(opts.data_dir).resolve(), Path(opts.runs).resolve()
    make_demo_dataset(data_dir, train_scale=opts.train_scale, eval_scale=opts.eval_scale, img_size=opts.img_size)
    results_paths = {k: train(k, data_dir, runs, opts.epochs, opts.img_size, opts.retrain) for k in keys}
    results = {k: json.loads(p.read_text()) for k, p in results_paths.items()}
    baseline = mean_baseline(data_dir)

    rows = [(f"Predict the train mean ({baseline['mean']:.1f})", baseline["metrics"])]
    rows += [(METHODS[k][0], results[k]["metrics"]) for k in keys]
    table = demo_table(rows)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "demo_table.md").write_text(table)
    print("\nDemo results (test split; MAE and GM in years; column headers give the test samples per group):\n")
    print(table)

    if not opts.no_figures:
        import make_figures as figs

        out = Path(opts.figures).resolve() if opts.figures else runs / "figures"
        written = [
            figs.plot_examples(data_dir / "agedb.csv", out / "demo_examples.png", n=16,
                               title="Demo test images: the disc grows with the age (apparent age = age "
                                     "± 4 years); position, colours and noise vary"),
            figs.plot_label_distribution(baseline["train"], "age", out / "demo_label_distribution.png",
                                         "Demo data (synthetic, AgeDB-DIR-shaped)", test=baseline["test"]),
            figs.plot_per_label_mae([results[k] for k in keys], [METHODS[k][0] for k in keys],
                                    out / "demo_per_label_mae.png", "Demo: test MAE per age",
                                    train=baseline["train"],
                                    baseline_mae={a: v["mae"] for a, v in baseline["per_label"].items()}),
        ]
        ranked = [k for k in keys if k in ("vanilla", "ranksim")]
        if len(ranked) == 2:
            written.append(figs.plot_rank_matrices(
                [results_paths[k].parent for k in ranked], [METHODS[k][0] for k in ranked],
                out / "demo_rank_matrices.png", data_dir=str(data_dir), batch_size=32,
                title="Demo: similarity ranks within one test batch (32 images, distinct ages)"))
        print("figures: " + ", ".join(str(p) for p in written))
    print(f"demo finished in {time.time() - start:.0f} s (wall)")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
