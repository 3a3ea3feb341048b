"""Figures of the paper's kind, from split files, results.json files and trained checkpoints.

    # (a) train label distribution with many / medium / few shading
    python figures/make_figures.py dist --split_file agedb-dir/data/agedb.csv --out figures/agedb_labels.png
    python figures/make_figures.py dist --split_file sts-b-dir/glue_data/STS-B/train_new.tsv --out stsb.png
    # (b) per-label test MAE of several runs on one plot (shading from the train split)
    python figures/make_figures.py per-label --results runs/a/results.json runs/b/results.json \
        --names Vanilla RankSim --split_file agedb-dir/data/agedb.csv --out per_label.png
    # (c) label-similarity ranks next to feature-similarity ranks of trained models, one test batch
    python figures/make_figures.py ranks --runs runs/vanilla runs/vanilla-ranksim --names Vanilla RankSim \
        --out ranks.png

Shot groups are the ones the metrics use (the paper's protocol, ranksim/metrics.py): age labels by
their number of TRAIN samples (many > 100, few < 20, medium otherwise); STS-B bins by the published fixed bin lists.
`make demo` calls these functions for the demo's figures (demo/run_demo.py).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ranksim.harness.cli import UserError, check_file, run_cli  # noqa: E402
from ranksim.metrics import (  # noqa: E402
    AGE_FEW_SHOT_THRESHOLD,
    AGE_MANY_SHOT_THRESHOLD,
    STSB_MANY_BINS,
    STSB_MEDIUM_BINS,
)
from ranksim.weighting import stsb_bin_of  # noqa: E402

GROUP_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}
GROUP_SHADES = {"many": "#d3e0f0", "medium": "#f8dcc6", "few": "#f2cfcf"}
RUN_COLOURS = ["#333333", "#2ca02c", "#9467bd", "#17becf", "#bcbd22", "#8c564b"]
STSB_BIN_WIDTH = 0.1  # 50 bins on [0, 5]


# ----------------------------------------------------------------------------- reading inputs

def read_train_labels(split_file: "str | Path") -> Dict[str, object]:
    """Train labels of a benchmark split file.

    Age CSV (age,path,split): {"kind": "age", "train": float array of train ages, "test": test ages}.
    STS-B TSV (score in the last column): {"kind": "stsb", "train": scores, "test": scores of the
    test_new.tsv beside a train_new.tsv, else None}.
    """
    split_file = Path(split_file)
    check_file(split_file, "split file", "pass the agedb.csv / imdb_wiki.csv / train_new.tsv of a benchmark")
    if split_file.suffix == ".tsv":
        scores = []
        with open(split_file, encoding="utf-8") as f:
            next(f, None)  # header
            for number, line in enumerate(f, start=2):
                fields = line.rstrip("\n").split("\t")
                if not fields[-1].strip():
                    continue  # rows without a score are skipped by the loaders too
                try:
                    scores.append(float(fields[-1]))
                except ValueError:
                    raise UserError(f"{split_file}:{number}: score {fields[-1]!r} is not a number; "
                                    "pass an STS-B-DIR TSV (score in the last column)") from None
        if not scores:
            raise UserError(f"{split_file}: no scored rows; pass an STS-B-DIR train_new.tsv")
        test = None
        sibling = split_file.with_name("test_new.tsv")  # STS-B-DIR keeps the splits side by side
        if split_file.name == "train_new.tsv" and sibling.is_file():
            test = read_train_labels(sibling)["train"]
        return {"kind": "stsb", "train": np.asarray(scores), "test": test}
    import pandas as pd

    try:
        table = pd.read_csv(split_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"{split_file}: not a readable CSV ({' '.join(str(exc).split())}); "
                        "pass a split file with columns age,path,split") from None
    if not {"age", "split"} <= set(table.columns):
        raise UserError(f"{split_file}: needs columns age,path,split (found {','.join(map(str, table.columns))}); "
                        "pass agedb.csv or imdb_wiki.csv")
    train = table.loc[table["split"] == "train", "age"].to_numpy(dtype=np.float64)
    if len(train) == 0:
        raise UserError(f"{split_file}: no rows with split 'train'")
    return {"kind": "age", "train": train, "test": table.loc[table["split"] == "test", "age"].to_numpy(np.float64)}


def read_results(path: "str | Path") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    check_file(path, "results.json", "pass a results.json written by a train.py (or its run directory)")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); re-run the evaluation that writes it") from None


# ----------------------------------------------------------------------------- shot groups

def age_group_of_counts(counts: np.ndarray) -> np.ndarray:
    """Group name per integer age from its train count (as ranksim/metrics.py). counts: int [n] -> object [n]."""
    groups = np.full(len(counts), "medium", dtype=object)
    groups[counts > AGE_MANY_SHOT_THRESHOLD] = "many"
    groups[counts < AGE_FEW_SHOT_THRESHOLD] = "few"
    return groups


def stsb_group_of_bins(bins: np.ndarray) -> np.ndarray:
    """Group name per STS-B bin index from the published fixed lists. bins: int [n] -> object [n]."""
    return np.array(["many" if b in STSB_MANY_BINS else "medium" if b in STSB_MEDIUM_BINS else "few"
                     for b in bins], dtype=object)


def label_axis(kind: str, train: np.ndarray):
    """(x positions, train count per position, group per position, bar width) for the label axis."""
    if kind == "age":
        ages = np.clip(train.astype(np.int64), 0, 120)
        counts = np.bincount(ages, minlength=121)
        present = np.nonzero(counts)[0]
        x = np.arange(max(present[0] - 1, 0), min(present[-1] + 2, 121))
        return x, counts[x], age_group_of_counts(counts[x]), 1.0
    counts = np.bincount(stsb_bin_of(train), minlength=50)  # the metrics' bins (np.histogram edges)
    x = np.arange(50)
    return (x + 0.5) * STSB_BIN_WIDTH, counts, stsb_group_of_bins(x), STSB_BIN_WIDTH


def shade_groups(ax, x: np.ndarray, groups: np.ndarray, width: float) -> None:
    """Background bands: one axvspan per run of consecutive positions in the same group."""
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or groups[i] != groups[start]:
            ax.axvspan(x[start] - width / 2, x[i - 1] + width / 2, color=GROUP_SHADES[groups[start]], lw=0,
                       zorder=0)
            start = i


def group_legend_handles(groups: np.ndarray, counts: Optional[Dict[str, int]] = None) -> list:
    from matplotlib.patches import Patch

    handles = []
    for g in ("many", "medium", "few"):
        if g in set(groups):
            label = f"{g}-shot" + (f" ({counts[g]} test samples)" if counts else "")
            handles.append(Patch(facecolor=GROUP_COLOURS[g], label=label))
    return handles


# ----------------------------------------------------------------------------- (a) distribution

def plot_label_distribution(train: np.ndarray, kind: str, out: "str | Path", title: str,
                            test: Optional[np.ndarray] = None) -> Path:
    """Bar chart of the train label histogram; bars and background coloured by shot group.

    train: train labels [N] (ages or STS-B scores); kind: "age" | "stsb"; test: optional test labels,
    used to print the number of test samples per group in the legend. Writes a PNG, returns its path.
    """
    x, counts, groups, width = label_axis(kind, np.asarray(train, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
    shade_groups(ax, x, groups, width)
    ax.bar(x, counts, width=width * 0.9, color=[GROUP_COLOURS[g] for g in groups], zorder=2)
    if kind == "age":
        for threshold in (AGE_MANY_SHOT_THRESHOLD, AGE_FEW_SHOT_THRESHOLD):
            ax.axhline(threshold, color="#555555", lw=0.8, ls="--", zorder=3)
            ax.text(x[-1] + width / 2, threshold, f" {threshold}", va="center", fontsize=7, color="#555555")
    test_counts = None
    if test is not None and len(test):
        test_groups = groups_of_labels(kind, np.asarray(train, dtype=np.float64), np.asarray(test, np.float64))
        test_counts = {g: int((test_groups == g).sum()) for g in ("many", "medium", "few")}
    ax.legend(handles=group_legend_handles(groups, test_counts), fontsize=8, loc="upper right", frameon=True,
              framealpha=0.95, edgecolor="none")
    ax.set_xlim(x[0] - width, x[-1] + width)
    ax.set_xlabel("age (years)" if kind == "age" else "similarity score (bins of 0.1)")
    ax.set_ylabel("train samples")
    ax.set_title(f"{title}: {len(train):,} train samples", fontsize=10)
    return save(fig, out)


def groups_of_labels(kind: str, train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Shot group name of each label in ``labels`` (object [n])."""
    if kind == "age":
        counts = np.bincount(np.clip(train.astype(np.int64), 0, 120), minlength=121)
        return age_group_of_counts(counts[np.clip(labels.astype(np.int64), 0, 120)])
    return stsb_group_of_bins(stsb_bin_of(labels))


# ----------------------------------------------------------------------------- (b) per-label MAE

def plot_per_label_mae(results: Sequence[dict], names: Sequence[str], out: "str | Path", title: str,
                       train: Optional[np.ndarray] = None, kind: str = "age",
                       baseline_mae: Optional[Dict[str, float]] = None) -> Path:
    """Test MAE per label of several runs as lines; the train histogram and shot groups behind them.

    results: results.json dicts (their "per_label": {"<label>": {"count", "mae"}}); names: legend
    labels; train: train labels for the background histogram and shading (optional);
    baseline_mae: optional per-label MAE of a reference predictor ({"<label>": mae}, dashed line).
    """
    if len(results) != len(names):
        raise UserError(f"--names: {len(names)} names for {len(results)} results files; give one name per file")
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    if train is not None:
        x, counts, groups, width = label_axis(kind, np.asarray(train, dtype=np.float64))
        # Shading and the train histogram on a twin axis drawn BEHIND the MAE lines.
        twin = ax.twinx()
        shade_groups(twin, x, groups, width)
        twin.bar(x, counts, width=width * 0.9, color="#aaaaaa", alpha=0.5, zorder=1)
        twin.set_ylabel("train samples", color="#888888")
        twin.tick_params(axis="y", colors="#888888")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    top = 0.0  # largest per-label MAE of the runs: the y range is set by the runs, not the baseline
    for i, (res, name) in enumerate(zip(results, names)):
        per_label = res.get("per_label") or {}
        if not per_label:
            raise UserError(f"results of {name!r} have no per_label entry; re-run its evaluation with a "
                            "train.py that writes per-label MAE")
        keys = sorted(per_label, key=float)
        xs = np.array([float(k) for k in keys])
        if kind == "stsb":  # per_label keys are bins of 0.1
            xs = (xs + 0.5) * STSB_BIN_WIDTH
        ys = np.array([per_label[k]["mae"] for k in keys])
        overall = (res.get("metrics") or {}).get("all", {}).get("mae")
        label = name + (f" (MAE {overall:.2f})" if overall is not None else "")
        ax.plot(xs, ys, marker="o", ms=2.5, lw=1.2, color=RUN_COLOURS[i % len(RUN_COLOURS)], label=label, zorder=3)
        top = max(top, float(ys.max()))
    if baseline_mae:
        keys = sorted(baseline_mae, key=float)
        ax.plot([float(k) for k in keys], [baseline_mae[k] for k in keys], ls="--", lw=1, color="#999999",
                label="predict the train mean", zorder=2)
    ax.set_xlabel("age (years)" if kind == "age" else "similarity score")
    ax.set_ylabel("test MAE")
    ax.set_ylim(0, 1.45 * top if top > 0 else None)  # head room for the legend
    handles, labels = ax.get_legend_handles_labels()
    if train is not None:
        extra = group_legend_handles(groups)
        for h in extra:
            h.set_facecolor(GROUP_SHADES[h.get_label().split("-")[0]])
        handles, labels = handles + extra, labels + [h.get_label() for h in extra]
    ax.legend(handles, labels, fontsize=7.5, loc="upper center", frameon=True, framealpha=0.95, edgecolor="none",
              ncol=2)
    ax.set_title(title, fontsize=10)
    return save(fig, out)


# ----------------------------------------------------------------------------- (c) rank matrices

def similarity_ranks(features, labels):
    """(label ranks [B, B], feature ranks [B, B]) as RankSim compares them, row by row (ranksim/regularizer.py).

    features: float tensor [B, D]; labels: float tensor [B]. Label similarity of i and j is
    -|y_i - y_j|, feature similarity the cosine similarity; each row is ranked with
    ranksim.rank_normalised (1/B = most similar ... 1 = least similar).
    """
    import torch

    from ranksim import rank_normalised

    x = torch.nn.functional.normalize(features.float(), dim=1)
    labels = labels.reshape(-1, 1).float()
    label_ranks = rank_normalised(-torch.abs(labels - labels.T))
    feature_ranks = rank_normalised(x @ x.T)
    return label_ranks, feature_ranks


def rank_agreement(label_ranks, feature_ranks) -> float:
    """Mean over rows of the Spearman correlation between a row's feature ranks and label ranks."""
    from scipy import stats

    a, b = label_ranks.numpy(), feature_ranks.numpy()
    return float(np.mean([stats.spearmanr(a[i], b[i]).statistic for i in range(len(a))]))


def pick_batch(labels: np.ndarray, batch_size: int) -> np.ndarray:
    """Indices of ``batch_size`` samples with distinct labels spread evenly over the label range,
    ascending by label (distinct labels: RankSim compares rows without ties after its tie reduction)."""
    distinct, first = np.unique(labels, return_index=True)
    if len(distinct) < 2:
        raise UserError("the test split has fewer than two distinct labels; cannot draw a rank matrix")
    take = np.unique(np.linspace(0, len(distinct) - 1, min(batch_size, len(distinct))).round().astype(int))
    return first[take]


def training_directory(run_dir: Path, store_root: Optional[str]) -> Optional[Path]:
    """The working directory a run was trained in, or None if it cannot be told.

    Runs record their flags, not their working directory; relative paths in them (``--data_dir
    ./data``, the checkpoint) are relative to it. A run directory is ``<cwd>/<store_root>/<name>``, so
    with a relative ``store_root`` the working directory is what remains of the run directory's
    absolute parent once ``store_root`` is taken off its end.
    """
    if not store_root or Path(store_root).is_absolute():
        return None
    parent, tail = run_dir.resolve().parent, Path(store_root).parts
    tail = tuple(part for part in tail if part != ".")
    if tail and parent.parts[-len(tail):] != tail:
        return None
    return Path(*parent.parts[:len(parent.parts) - len(tail)]) if tail else parent


def recorded_data_dir(run_dir: Path, data_dir: str, trained_in: Optional[Path], typed: Optional[str] = None) -> str:
    """The run's recorded --data_dir as a usable path. Runs record it absolute (``typed``: as typed);
    older runs recorded it as typed: relative ones are resolved against the directory the run was trained
    in (else the current one). A one-line error if that folder is not there."""
    path = Path(data_dir)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = ([trained_in / path] if trained_in is not None else []) + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    raise UserError(f"{run_dir}: its data folder (--data_dir {typed or data_dir} when trained) is not at "
                    f"{' or '.join(str(c) for c in dict.fromkeys(candidates))}; pass --data_dir FOLDER "
                    "(the folder holding the run's split CSV and images)")


def batch_features(run_dir: "str | Path", data_dir: Optional[str], batch_size: int):
    """Backbone features of one test batch for the best checkpoint of a finished age run.

    Returns (features [B, D] tensor, labels [B] tensor, results dict). The batch is chosen by
    :func:`pick_batch`, so runs on the same data see the same images.
    """
    import torch

    from ranksim.harness.checkpoint import load_checkpoint, load_model_state, state_dict_of
    from ranksim.harness.data.age import AgeCSVDataset
    from ranksim.harness.models.resnet import build_model

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    args = results.get("args") or {}
    trained_in = training_directory(run_dir, args.get("store_root"))
    ckpt = Path(results.get("checkpoint", ""))
    if not ckpt.is_absolute() and trained_in is not None:
        ckpt = trained_in / ckpt
    if not ckpt.is_file():
        ckpt = run_dir / "ckpt.best.pth.tar"
    data_dir = data_dir or recorded_data_dir(run_dir, args.get("data_dir", "./data"), trained_in,
                                             args.get("data_dir_as_typed"))
    csv_name = {"imdb_wiki": "imdb_wiki.csv"}.get(results.get("dataset"), "agedb.csv")
    dataset_cls = type("SplitFile", (AgeCSVDataset,), {"csv_name": csv_name})
    table = dataset_cls.read_table(data_dir)
    test = dataset_cls(data_dir, table, int(args.get("img_size", 224)), "test")
    index = pick_batch(test.labels, batch_size)
    images = torch.stack([test[i][0] for i in index])
    checkpoint = load_checkpoint(ckpt)
    model = build_model(args.get("model", checkpoint.get("model", "resnet50")))
    load_model_state(model, state_dict_of(checkpoint, str(ckpt)), ignore_fds=True, source=str(ckpt))
    model.eval()
    with torch.no_grad():
        features = model.backbone(images)
    return features, torch.as_tensor(test.labels[index]), results


def plot_rank_matrices(runs: Sequence["str | Path"], names: Sequence[str], out: "str | Path",
                       data_dir: Optional[str] = None, batch_size: int = 32, title: str = "") -> Path:
    """Label-similarity ranks next to each run's feature-similarity ranks, on the same test batch."""
    if len(runs) != len(names):
        raise UserError(f"--names: {len(names)} names for {len(runs)} runs; give one name per run")
    panels = []
    labels = None
    for run, name in zip(runs, names):
        features, batch_labels, _ = batch_features(run, data_dir, batch_size)
        if labels is not None and not np.array_equal(labels.numpy(), batch_labels.numpy()):
            raise UserError(f"{run}: its test split differs from the first run's; compare runs on the same data")
        labels = batch_labels
        label_ranks, feature_ranks = similarity_ranks(features, batch_labels)
        panels.append((f"{name}: feature-similarity ranks\n(mean row Spearman with labels "
                       f"{rank_agreement(label_ranks, feature_ranks):.2f})", feature_ranks))
    panels.insert(0, ("label-similarity ranks\n(target of RankSim)", label_ranks))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6), dpi=120)
    ticks = np.linspace(0, len(labels) - 1, 5).round().astype(int)
    for ax, (panel_title, matrix) in zip(axes, panels):
        image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(panel_title, fontsize=8.5)
        ax.set_xticks(ticks, [f"{labels[t]:.0f}" for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [f"{labels[t]:.0f}" for t in ticks], fontsize=7)
        ax.set_xlabel("sample (by label)", fontsize=8)
    axes[0].set_ylabel("row: anchor sample (by label)", fontsize=8)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.015, pad=0.02)
    bar.set_label("normalised rank (small = most similar)", fontsize=7.5)
    fig.suptitle(title or f"one test batch of {len(labels)} samples with distinct labels", fontsize=9.5)
    return save(fig, out)


# ----------------------------------------------------------------------------- example images

def plot_examples(split_file: "str | Path", out: "str | Path", n: int = 16, title: str = "") -> Path:
    """A row-major grid of ``n`` test images of an age split file, at evenly spaced ages, with their labels."""
    import pandas as pd

    split_file = Path(split_file)
    table = pd.read_csv(split_file)
    test = table[table["split"] == "test"].sort_values("age", kind="stable").drop_duplicates("age")
    picks = test.iloc[np.linspace(0, len(test) - 1, min(n, len(test))).round().astype(int)]
    cols = min(8, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.3 * rows), dpi=120, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), picks.iterrows()):
        from PIL import Image

        with Image.open(split_file.parent / row["path"]) as img:
            ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
        ax.set_title(f"age {row['age']}", fontsize=7.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, out)


# ----------------------------------------------------------------------------- command line

def save(fig, out: "str | Path") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dist", help="(a) train label distribution with shot-group shading")
    p.add_argument("--split_file", required=True, help="agedb.csv / imdb_wiki.csv / STS-B train_new.tsv")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="PNG to write")
    p = sub.add_parser("per-label", help="(b) per-label test MAE of several runs")
    p.add_argument("--results", nargs="+", required=True, help="results.json files (or run directories)")
    p.add_argument("--names", nargs="+", required=True, help="one legend name per results file")
    p.add_argument("--split_file", default=None, help="split file of the train labels (background, shading)")
    p.add_argument("--title", default="test MAE per label")
    p.add_argument("--out", required=True)
    p = sub.add_parser("ranks", help="(c) label vs feature similarity rank matrices of trained age models")
    p.add_argument("--runs", nargs="+", required=True, help="run directories (results.json + best checkpoint)")
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--data_dir", default=None, help="data folder (default: the runs' --data_dir)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--out", required=True)
    opts = parser.parse_args(argv)

    if opts.command == "dist":
        data = read_train_labels(opts.split_file)
        title = opts.title or Path(opts.split_file).name
        out = plot_label_distribution(data["train"], data["kind"], opts.out, title, test=data["test"])
    elif opts.command == "per-label":
        results = [read_results(r) for r in opts.results]
        kind = "stsb" if "pearson" in (results[0].get("metrics") or {}).get("all", {}) else "age"
        train = read_train_labels(opts.split_file)["train"] if opts.split_file else None
        out = plot_per_label_mae(results, opts.names, opts.out, opts.title, train=train, kind=kind)
    else:
        if opts.batch_size < 2:
            raise UserError(f"--batch_size {opts.batch_size}: need at least 2 samples")
        out = plot_rank_matrices(opts.runs, opts.names, opts.out, data_dir=opts.data_dir,
                                 batch_size=opts.batch_size)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
