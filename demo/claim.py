"""A claim test on synthetic data: does RankSim help where a label has few or no train neighbours' images?

    python demo/claim.py [--seeds 0,1,2] [--epochs 4] [--retrain]

RankSim's claim (Gong et al., ICML 2022) is that a rare label learns from its neighbours in label space.
Puetz et al. ("Deconstructing Deep Imbalanced Regression", Artif. Intell. Rev. 2026) stress it with
re-splits of AgeDB; this script builds two of their shapes from the demo's synthetic disc images
(demo/make_data.py's picture model) and measures, per shape, Vanilla and RankSim on the same seeds:

- blind spot: train ages 20..73 with equal counts, except ages 47..53 (BLIND_GAP), absent from
  train and val; test is balanced over 20..73. Reported: the test MAE inside the gap.
- interpolation: a bimodal train histogram (weights exp(-0.01 (a-25)^2) + exp(-0.01 (a-80)^2), the
  protocol's) over 20..75 with ages 44..56 (INTERP_GAP) thinned to 2 images each; test balanced over
  20..75. Reported: the test MAE on the thinned ages.

Each (shape, method, seed) is one run of the REAL agedb-dir/train.py (in this process), with the demo's
settings (ResNet-18, 32 px, Adam, lr 1e-3, batch 64, L1, the last epoch at lr/10; RankSim gamma 100,
lambda 2). The table gives each method's mean ± std over the seeds, RankSim − Vanilla paired over the
seeds with its 95 % Student-t interval (ranksim.stats), and the RankSim health numbers the run recorded
(results.json "health" -> "val": mean cosine similarity and rank agreement; "n/a" when absent).
Nothing here is tuned toward a result: the shapes and settings were fixed before the first run, and the
numbers are reported as they come out. A synthetic check at toy scale, not a reproduction of either paper.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

from ranksim.harness.cli import UserError, parse_seeds, run_cli  # noqa: E402
from ranksim.harness.data.synthetic import draw_age_image  # noqa: E402
from ranksim.stats import paired_difference, summarize  # noqa: E402

BLIND_RANGE, BLIND_GAP = (20, 73), tuple(range(47, 54))
INTERP_RANGE, INTERP_GAP = (20, 75), tuple(range(44, 57))
PROTOCOLS = ("blindspot", "interpolation")
DEFAULTS = {"seed": 0, "img_size": 16, "per_age": 20, "peak": 40, "gap_images": 2, "val_per_age": 4,
            "test_per_age": 5, "apparent_age_sd": 4.0, "age_range": [0, 101]}
EPOCHS = 8
RANKSIM = ("--regularization_weight", "100", "--interpolation_lambda", "2")
METHODS = {"vanilla": ("Vanilla", ()), "ranksim": ("RankSim", RANKSIM)}
HEALTH_KEYS = ("mean_cosine", "rank_agreement")


# ----------------------------------------------------------------------------- data

def train_counts(protocol: str, params: dict) -> Dict[int, int]:
    """Train images per age of a protocol shape: {age: count}, ages with no image left out."""
    if protocol == "blindspot":
        lo, hi = BLIND_RANGE
        return {a: params["per_age"] for a in range(lo, hi + 1) if a not in BLIND_GAP}
    if protocol == "interpolation":
        lo, hi = INTERP_RANGE
        weight = {a: np.exp(-0.01 * (a - 25) ** 2) + np.exp(-0.01 * (a - 80) ** 2) for a in range(lo, hi + 1)}
        top = max(weight.values())
        return {a: params["gap_images"] if a in INTERP_GAP else max(params["gap_images"] + 1,
                                                                     int(round(params["peak"] * w / top)))
                for a, w in weight.items()}
    raise ValueError(f"protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")


def gap_ages(protocol: str) -> tuple:
    return BLIND_GAP if protocol == "blindspot" else INTERP_GAP


def split_ages(protocol: str, params: dict) -> Dict[str, np.ndarray]:
    """{"train"|"val"|"test": int64 ages}: val skips the blind spot (as the protocol's val does)."""
    lo, hi = BLIND_RANGE if protocol == "blindspot" else INTERP_RANGE
    counts = train_counts(protocol, params)
    every = np.arange(lo, hi + 1)
    val_ages = [a for a in every if not (protocol == "blindspot" and a in BLIND_GAP)]
    return {"train": np.repeat(list(counts), list(counts.values())),
            "val": np.repeat(val_ages, params["val_per_age"]), "test": np.repeat(every, params["test_per_age"])}


def make_protocol_dataset(out: Path, protocol: str, **overrides) -> Path:
    """Write ``out/agedb.csv`` + ``out/AgeDB/*.jpg`` of one shape (skipped when present with the same
    parameters); returns the CSV path. Images: the demo's discs, radius from age + N(0, apparent_age_sd)."""
    params = {**DEFAULTS, **overrides, "protocol": protocol}
    csv_path, params_path = out / "agedb.csv", out / "claim_params.json"
    if csv_path.is_file() and params_path.is_file() and json.loads(params_path.read_text()) == params:
        return csv_path
    rng = np.random.default_rng(params["seed"])
    (out / "AgeDB").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, ages in split_ages(protocol, params).items():
        for age in rng.permutation(ages):
            apparent = float(age) + rng.normal(0.0, params["apparent_age_sd"])
            image = draw_age_image(rng, apparent, tuple(params["age_range"]), params["img_size"])
            rel = f"AgeDB/{len(rows):05d}_Synthetic_{int(age)}_m.jpg"
            Image.fromarray(image).save(out / rel, quality=90)
            rows.append(f"{int(age)},{rel},{split}")
    params_path.write_text(json.dumps(params, indent=1) + "\n")
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    tmp.write_text("age,path,split\n" + "\n".join(rows) + "\n")
    os.replace(tmp, csv_path)  # last: its presence marks a complete dataset
    return csv_path


# ----------------------------------------------------------------------------- runs

def load_train_main() -> Callable[[Sequence[str]], dict]:
    """agedb-dir/train.py's main(argv), imported in this process (its folder's modules on sys.path)."""
    folder = REPO / "agedb-dir"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("agedb_dir_train", folder / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_flags(data_dir: Path, epochs: int, seed: int, img_size: int, method: str) -> List[str]:
    return ["--data_dir", str(data_dir), "--model", "resnet18", "--img_size", str(img_size), "--batch_size", "64",
            "--lr", "1e-3", "--epoch", str(epochs), "--schedule", str(epochs - 1), "--workers", "0",
            "--seed", str(seed), "--print_freq", "1000", *METHODS[method][1]]


def recorded_matches(results_path: Path, flags: Sequence[str]) -> bool:
    """Whether a finished run's recorded args equal every ``--name value`` pair of ``flags``."""
    if not results_path.is_file():
        return False
    args = json.loads(results_path.read_text()).get("args", {})
    for name, value in zip(flags[::2], flags[1::2]):
        recorded = args.get(name.lstrip("-"))
        recorded = " ".join(map(str, recorded)) if isinstance(recorded, list) else recorded
        try:
            same = float(recorded) == float(value)
        except (TypeError, ValueError):
            same = str(recorded) == value
        if not same:
            return False
    return True


def run_one(train_main, protocol: str, method: str, seed: int, data_dir: Path, runs: Path, epochs: int,
            img_size: int, retrain: bool) -> dict:
    """results.json content of one run, trained unless a finished run with the same flags exists."""
    name = f"{protocol}_{method}_seed{seed}"
    flags = run_flags(data_dir, epochs, seed, img_size, method)
    results_path = runs / name / "results.json"
    if not retrain and recorded_matches(results_path, flags):
        print(f"[{name}] using the finished run {results_path.parent}", flush=True)
    else:
        start = time.time()
        print(f"[{name}] training", flush=True)
        train_main(flags + ["--store_root", str(runs), "--store_name", name])
        print(f"[{name}] trained in {time.time() - start:.0f} s", flush=True)
    return json.loads(results_path.read_text())


# ----------------------------------------------------------------------------- the table

def gap_mae(results: dict, ages: Sequence[int]) -> float:
    """Test MAE over the test images whose age is in ``ages`` (from results.json's per-label MAE)."""
    per_label = results["per_label"]
    cells = [per_label[str(a)] for a in ages if str(a) in per_label]
    if not cells:
        raise ValueError(f"no test image of ages {ages[0]}..{ages[-1]} in this run")
    return sum(c["mae"] * c["count"] for c in cells) / sum(c["count"] for c in cells)


def mean_baseline(csv_path: Path, gap: Sequence[int]) -> Dict[str, float]:
    """Test MAE of predicting the train mean age for every image: in the gap and over all test ages.
    A gap in the middle of the label range is where this trivial predictor is at its best, so the
    table shows it beside the trained models."""
    import pandas as pd

    table = pd.read_csv(csv_path)
    mean = table.loc[table["split"] == "train", "age"].to_numpy(np.float64).mean()
    test = table.loc[table["split"] == "test", "age"].to_numpy(np.float64)
    errors = np.abs(test - mean)
    return {"MAE in the gap": float(errors[np.isin(test, gap)].mean()), "MAE, all test ages": float(errors.mean())}


def health_cell(runs: List[dict], key: str) -> str:
    """Mean ± std over seeds of results["health"]["val"][key], or n/a when a run did not record it."""
    values = [((r.get("health") or {}).get("val") or {}).get(key) for r in runs]
    if any(v is None for v in values):
        return "n/a"
    return summarize(values).format(3)


def verdict(diff) -> str:
    if diff.n < 2:
        return "one seed: no conclusion"
    if not diff.excludes_zero:
        return "within noise"
    return "RankSim lower" if diff.mean < 0 else "RankSim higher"


def claim_table(results: Dict[str, Dict[str, List[dict]]], seeds: Sequence[int],
                baselines: Dict[str, Dict[str, float]]) -> str:
    """Markdown: per shape, the gap MAE and overall MAE of each method and of predicting the train mean
    (``baselines[protocol][metric]``), RankSim − Vanilla paired over the seeds, and the health numbers."""
    lines = ["| Shape | Metric | Predict the train mean | Vanilla | RankSim | RankSim − Vanilla (paired, 95 % "
             "interval) | Verdict |", "|---|---|---|---|---|---|---|"]
    for protocol, by_method in results.items():
        gap = gap_ages(protocol)
        label = (f"blind spot (ages {gap[0]}-{gap[-1]} absent from train)" if protocol == "blindspot" else
                 f"interpolation (ages {gap[0]}-{gap[-1]} thinned to {DEFAULTS['gap_images']} train images)")
        for metric in ("MAE in the gap", "MAE, all test ages"):
            values = {m: [gap_mae(r, gap) if metric == "MAE in the gap" else r["metrics"]["all"]["mae"]
                          for r in by_method[m]] for m in METHODS}
            diff = paired_difference(values["ranksim"], values["vanilla"])
            lines.append(f"| {label} | {metric} | {baselines[protocol][metric]:.2f} | "
                         f"{summarize(values['vanilla']).format(2)} | {summarize(values['ranksim']).format(2)} | "
                         f"{diff.format(2)} | {verdict(diff)} |")
    health = ["", "RankSim health on val (results.json health.val; mean ± std over seeds, n/a when not recorded):",
              "", "| Shape | Method | mean cosine | rank agreement |", "|---|---|---|---|"]
    for protocol, by_method in results.items():
        for method, runs in by_method.items():
            health.append(f"| {protocol} | {METHODS[method][0]} | "
                          + " | ".join(health_cell(runs, k) for k in HEALTH_KEYS) + " |")
    head = (f"Claim test on synthetic protocol shapes: {len(seeds)} seeds ({', '.join(map(str, seeds))}) per method; "
            "test MAE in years (mean ± sample std over the seeds). Verdict: 'within noise' where the paired "
            "interval includes 0.\n\n")
    return head + "\n".join(lines + health) + "\n"




def main(argv: Optional[Sequence[str]] = None, train_main: Optional[Callable] = None) -> str:
    """Run the claim test; returns (and writes to <runs>/claim_table.md) the Markdown table.
    ``train_main``: agedb-dir/train.py's main (None: imported here; tests pass the one they loaded)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per shape, method and seed")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per run (default {EPOCHS})")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="blindspot,interpolation or one of them")
    parser.add_argument("--data_root", default=str(REPO / "demo_data" / "claim"), help="folder of the shapes' data")
    parser.add_argument("--runs", default=str(REPO / "demo_runs" / "claim"), help="folder of the runs")
    parser.add_argument("--retrain", action="store_true", help="train again even if finished runs exist")
    small = parser.add_argument_group("a smaller test (plumbing checks; the defaults are the documented claim test)")
    small.add_argument("--img_size", type=int, default=DEFAULTS["img_size"], help="image side in pixels")
    small.add_argument("--per_age", type=int, default=DEFAULTS["per_age"], help="blind spot: train images per age")
    small.add_argument("--peak", type=int, default=DEFAULTS["peak"], help="interpolation: train images at a mode")
    small.add_argument("--test_per_age", type=int, default=DEFAULTS["test_per_age"], help="test images per age")
    opts = parser.parse_args(argv)
    seeds = parse_seeds(opts.seeds)
    protocols = [p.strip() for p in opts.protocols.split(",") if p.strip()]
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        raise UserError(f"--protocols {opts.protocols}: choose from {', '.join(PROTOCOLS)}")
    if opts.epochs < 2:
        raise UserError(f"--epochs {opts.epochs}: need at least 2 (the last epoch runs at lr/10)")

    start = time.time()
    train_main = train_main or load_train_main()
    runs = Path(opts.runs).resolve()
    results: Dict[str, Dict[str, List[dict]]] = {}
    baselines: Dict[str, Dict[str, float]] = {}
    for protocol in protocols:
        data_dir = Path(opts.data_root).resolve() / protocol
        csv_path = make_protocol_dataset(data_dir, protocol, img_size=opts.img_size, per_age=opts.per_age,
                                         peak=opts.peak, test_per_age=opts.test_per_age)
        baselines[protocol] = mean_baseline(csv_path, gap_ages(protocol))
        results[protocol] = {m: [run_one(train_main, protocol, m, s, data_dir, runs, opts.epochs, opts.img_size,
                                         opts.retrain) for s in seeds] for m in METHODS}
    report = claim_table(results, seeds, baselines)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "claim_table.md").write_text(report)
    print("\n" + report + f"\nclaim test finished in {time.time() - start:.0f} s (wall)")
    return report


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
