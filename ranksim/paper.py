"""The rows of the paper's tables as data: which flags each row trains with and what was published.

RankSim (Gong, Mori, Tung, ICML 2022) reports, for AgeDB-DIR, IMDB-WIKI-DIR and STS-B-DIR, the
baselines of Yang et al. (ICML 2021) each with and without RankSim. `reproduce.py` turns these rows
into train.py command lines and collects the resulting ``results.json`` files into tables laid out
like the paper's, with the published numbers (SPEC §9) beside ours.

Row set (per benchmark, each with and without RankSim, 28 rows):
  Vanilla, FDS                      (no re-weighting)
  SQINV | INV, +LDS, +FDS, +LDS+FDS (cost-sensitive re-weighting; SQINV on the age data, INV on STS-B)
  Focal-R, +LDS, +FDS, +LDS+FDS     (focal version of the benchmark's default loss)
  RRT, +LDS, +FDS, +LDS+FDS         (two stages, see below)

Decisions (documented here because they are choices, not published facts):
- Only the flags that define a row are passed; kernel sizes, FDS buckets, epochs etc. stay at the
  train.py defaults, which are the published defaults (SPEC §7, §8).
- RankSim rows add the paper's RankSim settings (SPEC §1.6): age data gamma=100, lambda=2, batch 64,
  lr 2.5e-4; STS-B gamma=3e-4, lambda=2 (batch 16 and lr 2.5e-4 are already the STS-B defaults).
  Rows without RankSim use Yang et al.'s defaults (batch 256, lr 1e-3 on the age data), because the
  paper's baseline numbers are Yang et al.'s.
- Focal-R is ``--loss focal_l1`` on the age data (default loss l1) and ``--loss focal_mse`` on STS-B
  (default loss mse): the focal version of each benchmark's own loss. ``+LDS`` adds the LDS weights
  (``--reweight sqrt_inv|inverse --lds``), as in the cost-sensitive group.
- RRT stage 1 is an ordinary row (Vanilla, or FDS for RRT+FDS / RRT+LDS+FDS, with RankSim for the
  RankSim variants), so it is trained once and shared. Stage 2 retrains only the head from its best
  checkpoint: ``--retrain_fc --pretrained <ckpt> --reweight sqrt_inv|inverse`` (+ ``--lds``), and it
  repeats stage 1's ``--fds`` and RankSim flags. The backbone is frozen in stage 2, so the RankSim
  flags change nothing there; they are passed so that the run's results.json says which row it is.
- The plain "FDS" row (``--fds`` without re-weighting) is the published README's "FDS" command; the
  STS-B number published as "FDS+RankSim" is attached to it.
- SPEC §9's "RankSim row reprinted by later papers" (combination believed SQINV+FDS+RankSim) is
  attached to SQINV+FDS+RankSim (INV+FDS+RankSim on STS-B) and marked ``believed=True``; on AgeDB-DIR
  its few-shot MAE 9.68 equals the README's SQINV+FDS+RankSim number, elsewhere it is unconfirmed.
"""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

GROUPS = ("many", "medium", "few")
ALL_GROUPS = ("all",) + GROUPS


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's benchmarks: where its program lives and what its tables report."""

    name: str                 # --dataset value of reproduce.py and results.json "dataset"
    title: str                # as in the paper
    folder: str               # benchmark folder holding train.py
    data_dir: str             # default --data_dir, relative to the repository root
    reweight: str             # the cost-sensitive scheme of the paper's rows: sqrt_inv | inverse
    reweight_title: str       # SQINV | INV
    focal_loss: str           # Focal-R's --loss
    ranksim_flags: Tuple[str, ...]   # what RankSim rows add
    metrics: Tuple[str, str]  # (error metric, second metric) of the tables: ("mae", "gmean") | ("mse", "pearson")
    default_args: Dict[str, object] = field(default_factory=dict)  # published train.py defaults that rows rely on
    # Files train.py finds relative to ITS folder by default; reproduce.py runs from the repository root.
    path_flags: Tuple[str, ...] = ()


AGE_RANKSIM = ("--regularization_weight", "100", "--interpolation_lambda", "2",
               "--batch_size", "64", "--lr", "2.5e-4")

BENCHMARKS: Dict[str, Benchmark] = {
    "agedb": Benchmark(
        name="agedb", title="AgeDB-DIR", folder="agedb-dir", data_dir="agedb-dir/data",
        reweight="sqrt_inv", reweight_title="SQINV", focal_loss="focal_l1", ranksim_flags=AGE_RANKSIM,
        metrics=("mae", "gmean"),
        default_args={"model": "resnet50", "img_size": 224, "batch_size": 256, "lr": 1e-3, "loss": "l1",
                      "optimizer": "adam", "epoch": 120},
    ),
    "imdb_wiki": Benchmark(
        name="imdb_wiki", title="IMDB-WIKI-DIR", folder="imdb-wiki-dir", data_dir="imdb-wiki-dir/data",
        reweight="sqrt_inv", reweight_title="SQINV", focal_loss="focal_l1", ranksim_flags=AGE_RANKSIM,
        metrics=("mae", "gmean"),
        default_args={"model": "resnet50", "img_size": 224, "batch_size": 256, "lr": 1e-3, "loss": "l1",
                      "optimizer": "adam", "epoch": 90},
    ),
    "sts-b": Benchmark(
        name="sts-b", title="STS-B-DIR", folder="sts-b-dir", data_dir="sts-b-dir/glue_data/STS-B",
        reweight="inverse", reweight_title="INV", focal_loss="focal_mse",
        ranksim_flags=("--regularization_weight", "3e-4", "--interpolation_lambda", "2"),
        metrics=("mse", "pearson"),
        default_args={"batch_size": 16, "lr": 2.5e-4, "loss": "mse", "optimizer": "adam"},
        path_flags=("--word_embs_file", "sts-b-dir/glove/glove.840B.300d.txt"),
    ),
}

# Accepted spellings of --dataset (the paper's and the folders' names).
DATASET_ALIASES = {"agedb": "agedb", "agedb-dir": "agedb", "imdb_wiki": "imdb_wiki", "imdb-wiki": "imdb_wiki",
                   "imdb-wiki-dir": "imdb_wiki", "sts-b": "sts-b", "stsb": "sts-b", "sts-b-dir": "sts-b"}


@dataclass(frozen=True)
class Row:
    """One row of a paper table.

    key: short id used on the command line (``sqinv-lds-ranksim``); name: as printed in the table
    (``SQINV+LDS+RankSim``); group: the table block it belongs to; flags: train.py flags of the row
    (for RRT: of stage 2, without --pretrained); stage1: key of the row whose best checkpoint RRT's
    stage 2 starts from (None for one-stage rows); ranksim: whether RankSim is on; identity: the
    settings that identify a run of this row in its results.json args (see :func:`run_identity`).
    """

    key: str
    name: str
    group: str
    flags: Tuple[str, ...]
    stage1: Optional[str]
    ranksim: bool
    identity: Tuple[Tuple[str, object], ...]


def run_identity(args: Dict[str, object], benchmark: Benchmark) -> Tuple[Tuple[str, object], ...]:
    """The settings that say which row a run belongs to, from its results.json ``args`` (dict).

    Returns a tuple of (name, value) pairs: reweight, lds, fds, loss (relative to the benchmark's
    default loss / Focal-R loss), retrain_fc, ranksim (regularization_weight > 0). Missing keys take
    the published defaults, so hand-written or older results.json files still match.
    """
    loss = str(args.get("loss", benchmark.default_args.get("loss")))
    return (
        ("reweight", str(args.get("reweight", "none"))),
        ("lds", bool(args.get("lds", False))),
        ("fds", bool(args.get("fds", False))),
        ("loss", loss),
        ("retrain_fc", bool(args.get("retrain_fc", False))),
        ("ranksim", float(args.get("regularization_weight", 0.0) or 0.0) > 0.0),
        # the later DIR methods (ranksim/comparators.py); absent keys: off
        ("bmse", str(args.get("bmse", "none"))),
        ("conr", bool(args.get("conr", False))),
        ("rnc", str(args.get("rnc", "none"))),
    )


def _flags_to_args(flags: Tuple[str, ...], benchmark: Benchmark) -> Dict[str, object]:
    """Parse a row's flag tuple into the args dict train.py would record (only the flags we use)."""
    args: Dict[str, object] = {}
    i = 0
    while i < len(flags):
        name = flags[i].lstrip("-")
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if takes_value:
            value: object = flags[i + 1]
            i += 2
        else:
            value = True
            i += 1
        args[name] = value
    args.setdefault("loss", benchmark.default_args.get("loss"))
    return args


def build_rows(benchmark: Benchmark) -> List[Row]:
    """All rows of ``benchmark``'s table, in the paper's order (each baseline then its +RankSim)."""
    rw = ("--reweight", benchmark.reweight)
    lds = rw + ("--lds",)
    fds = ("--fds",)
    focal = ("--loss", benchmark.focal_loss)
    t = benchmark.reweight_title
    # (group, key, name, flags, stage-1 key or None)
    bases = [
        ("Vanilla", "vanilla", "Vanilla", (), None),
        ("Vanilla", "fds", "FDS", fds, None),
        ("Cost-sensitive re-weighting", t.lower(), t, rw, None),
        ("Cost-sensitive re-weighting", f"{t.lower()}-lds", f"{t}+LDS", lds, None),
        ("Cost-sensitive re-weighting", f"{t.lower()}-fds", f"{t}+FDS", rw + fds, None),
        ("Cost-sensitive re-weighting", f"{t.lower()}-lds-fds", f"{t}+LDS+FDS", lds + fds, None),
        ("Focal-R", "focal", "Focal-R", focal, None),
        ("Focal-R", "focal-lds", "Focal-R+LDS", focal + lds, None),
        ("Focal-R", "focal-fds", "Focal-R+FDS", focal + fds, None),
        ("Focal-R", "focal-lds-fds", "Focal-R+LDS+FDS", focal + lds + fds, None),
        ("RRT (two stages)", "rrt", "RRT", ("--retrain_fc",) + rw, "vanilla"),
        ("RRT (two stages)", "rrt-lds", "RRT+LDS", ("--retrain_fc",) + lds, "vanilla"),
        ("RRT (two stages)", "rrt-fds", "RRT+FDS", ("--retrain_fc",) + rw + fds, "fds"),
        ("RRT (two stages)", "rrt-lds-fds", "RRT+LDS+FDS", ("--retrain_fc",) + lds + fds, "fds"),
    ]
    rows = []
    for group, key, name, flags, stage1 in bases:
        for with_ranksim in (False, True):
            row_flags = flags + (benchmark.ranksim_flags if with_ranksim else ())
            rows.append(Row(
                key=f"{key}-ranksim" if with_ranksim else key,
                name=f"{name}+RankSim" if with_ranksim else name,
                group=group,
                flags=row_flags,
                stage1=None if stage1 is None else (f"{stage1}-ranksim" if with_ranksim else stage1),
                ranksim=with_ranksim,
                identity=run_identity(_flags_to_args(row_flags, benchmark), benchmark),
            ))
    return rows


ROWS: Dict[str, List[Row]] = {name: build_rows(b) for name, b in BENCHMARKS.items()}

# Published test-split numbers (SPEC §9). PUBLISHED[dataset][row name][metric][group] = value.
# Metrics: "mae", "gmean" (age data), "mse", "pearson" (STS-B; Pearson x100 as printed in the paper).
# BELIEVED marks rows whose attribution is "believed", not confirmed (see the module docstring).


def _groups(values: Tuple[float, float, float, float]) -> Dict[str, float]:
    return dict(zip(ALL_GROUPS, values))


PUBLISHED: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {
    "agedb": {
        # Yang et al. (2021) baselines as reprinted by later papers.
        "Vanilla": {"mae": _groups((7.77, 6.62, 9.55, 13.67)), "gmean": _groups((5.05, 4.23, 7.01, 10.75))},
        "SQINV": {"mae": _groups((7.81, 7.16, 8.80, 11.20))},
        "SQINV+LDS": {"mae": _groups((7.67, 6.98, 8.86, 10.89))},
        "SQINV+LDS+FDS": {"mae": _groups((7.55, 7.01, 8.24, 10.79))},
        "Focal-R": {"mae": _groups((7.64, 6.68, 9.22, 13.00))},
        "RRT": {"mae": _groups((7.74, 6.98, 8.79, 11.99))},
        # RankSim README.
        "SQINV+RankSim": {"mae": {"all": 6.91}},
        "Focal-R+LDS+FDS+RankSim": {"mae": {"many": 6.17}},
        "Focal-R+FDS+RankSim": {"gmean": {"medium": 4.84}},
        "RRT+LDS+RankSim": {"mae": {"medium": 7.54}},
        # Reprinted RankSim row (believed SQINV+FDS+RankSim; its few 9.68 equals the README's).
        "SQINV+FDS+RankSim": {"mae": _groups((7.02, 6.49, 7.84, 9.68)), "gmean": _groups((4.53, 4.13, 5.37, 6.89))},
    },
    "imdb_wiki": {
        "Vanilla": {"mae": _groups((8.06, 7.23, 15.12, 26.33)), "gmean": _groups((4.57, 4.17, 10.59, 20.46))},
        "SQINV+LDS": {"mae": _groups((7.83, 7.31, 12.43, 22.51))},
        "RRT+FDS+RankSim": {"mae": {"all": 7.35}},
        "SQINV+RankSim": {"mae": {"all": 7.42}},
        "Focal-R+LDS+FDS+RankSim": {"mae": {"all": 7.67}},
        "SQINV+LDS+FDS+RankSim": {"mae": {"all": 7.69, "few": 21.43}},
        "SQINV+FDS+RankSim": {"mae": _groups((7.50, 6.93, 12.09, 21.68)), "gmean": _groups((4.19, 3.97, 6.65, 13.28))},
    },
    "sts-b": {
        "Vanilla": {"mse": _groups((0.974, 0.851, 1.520, 0.984)), "pearson": _groups((74.2, 72.0, 62.7, 75.2))},
        "INV": {"mse": _groups((1.005, 0.894, 1.482, 1.046))},
        "INV+LDS": {"mse": _groups((0.914, 0.819, 1.319, 0.955))},
        "INV+LDS+FDS": {"mse": _groups((0.907, 0.802, 1.363, 0.942))},
        "RRT": {"mse": _groups((0.964, 0.842, 1.503, 0.978))},
        "Vanilla+RankSim": {"mse": {"medium": 0.767}, "pearson": {"medium": 72.9}},
        "RRT+RankSim": {"mse": {"all": 0.865, "few": 0.670}, "pearson": {"all": 77.1, "few": 86.1}},
        "FDS+RankSim": {"mse": {"medium": 0.767}},
        "INV+LDS+RankSim": {"mse": {"all": 0.889}, "pearson": {"all": 76.2}},
        "INV+FDS+RankSim": {"mse": _groups((0.903, 0.908, 0.911, 0.804)),
                            "pearson": _groups((75.8, 70.6, 69.0, 82.7))},
    },
}

BELIEVED = {("agedb", "SQINV+FDS+RankSim"), ("imdb_wiki", "SQINV+FDS+RankSim"), ("sts-b", "INV+FDS+RankSim")}


def published(dataset: str, row_name: str, metric: str, group: str) -> Optional[float]:
    """The published value of ``metric`` for ``group`` of row ``row_name``, or None when not published."""
    return PUBLISHED.get(dataset, {}).get(row_name, {}).get(metric, {}).get(group)


# ------------------------------------------------------------------------------------------------
# Later DIR methods: Balanced MSE (Ren et al., CVPR 2022), ConR (Keramati et al., ICLR 2024),
# Rank-N-Contrast (Zha et al., NeurIPS 2023). Appended rows; the rows above are unchanged.
#
# Decisions:
# - Balanced MSE: end-to-end rows (--bmse replaces --loss) and the reference protocol's two-stage rows
#   ("(RRT)": head retrained with Balanced MSE, lr 1e-4, 10 epochs, from the Vanilla row's checkpoint).
#   The reference's stage 1 uses MSE, ours the benchmark's Vanilla row (L1 on the age data): a
#   difference in the first stage, stated here. Its published IMDB-WIKI-DIR numbers are of the
#   *balanced* MAE (mean over test labels of each label's MAE), shown in their own column
#   ("balanced_mae"), never as MAE; they are attached to the two-stage rows and to Vanilla.
# - ConR: alone, with RankSim, and added to the two RankSim rows its paper reports (AgeDB-DIR few-shot
#   MAE); "LDS+FDS+RankSim" of its paper is read as SQINV+LDS+FDS+RankSim.
# - Rank-N-Contrast: stage 1 (encoder; its head is untrained, so its numbers mean nothing) and stage 2
#   (linear head on the frozen encoder), with the reference schedules (train.py's --rnc defaults) on
#   ResNet-50 like the other rows (the reference uses ResNet-18); age benchmarks only. No published number in Yang et al.'s protocol is known here.
# ------------------------------------------------------------------------------------------------

COMPARATOR_GROUPS = ("Balanced MSE", "ConR", "Rank-N-Contrast (two stages)")
BMSE_STAGE2 = ("--retrain_fc", "--lr", "1e-4", "--epoch", "10")
# The reference schedules spelled out (they are also train.py's --rnc defaults) so that the table's
# settings check sees them; ResNet-50 as every other row of the tables (the reference code uses ResNet-18).
RNC_ENCODER = ("--rnc", "encoder", "--model", "resnet50", "--lr", "0.5", "--batch_size", "256", "--epoch", "400")
RNC_LINEAR = ("--rnc", "linear", "--retrain_fc", "--model", "resnet50", "--lr", "0.05", "--batch_size", "64", "--epoch", "100")


def build_comparator_rows(benchmark: Benchmark) -> List[Row]:
    """The comparator rows of ``benchmark`` (appended after the paper's rows)."""
    age = benchmark.name != "sts-b"
    rw, rs = ("--reweight", benchmark.reweight), benchmark.ranksim_flags
    t = benchmark.reweight_title
    # (group, key, name, flags, stage-1 key or None, ranksim)
    specs = []
    for variant in ("bmc", "bni", "gai"):
        name = variant.upper()
        specs.append(("Balanced MSE", variant, name, ("--bmse", variant), None, False))
        specs.append(("Balanced MSE", f"{variant}-rrt", f"{name} (RRT)", ("--bmse", variant) + BMSE_STAGE2,
                      "vanilla", False))
    specs += [
        ("ConR", "conr", "ConR", ("--conr",), None, False),
        ("ConR", "conr-ranksim", "ConR+RankSim", ("--conr",) + rs, None, True),
    ]
    if age:
        specs += [
            ("ConR", f"{t.lower()}-fds-ranksim-conr", f"{t}+FDS+RankSim+ConR", rw + ("--fds",) + rs + ("--conr",),
             None, True),
            ("ConR", f"{t.lower()}-lds-fds-ranksim-conr", f"{t}+LDS+FDS+RankSim+ConR",
             rw + ("--lds", "--fds") + rs + ("--conr",), None, True),
            ("Rank-N-Contrast (two stages)", "rnc-encoder", "RnC stage 1 (encoder)", RNC_ENCODER, None, False),
            ("Rank-N-Contrast (two stages)", "rnc", "RnC", RNC_LINEAR, "rnc-encoder", False),
        ]
    return [Row(key=key, name=name, group=group, flags=flags, stage1=stage1, ranksim=ranksim,
                identity=run_identity(_flags_to_args(flags, benchmark), benchmark))
            for group, key, name, flags, stage1, ranksim in specs]


for _name, _benchmark in BENCHMARKS.items():
    ROWS[_name].extend(build_comparator_rows(_benchmark))

# Balanced MSE's IMDB-WIKI-DIR table reports the balanced MAE: its own column on that benchmark.
BENCHMARKS["imdb_wiki"] = replace(BENCHMARKS["imdb_wiki"], metrics=("mae", "gmean", "balanced_mae"))
PUBLISHED["imdb_wiki"]["Vanilla"]["balanced_mae"] = _groups((13.923, 7.323, 15.925, 32.778))
PUBLISHED["imdb_wiki"]["GAI (RRT)"] = {"balanced_mae": _groups((12.690, 7.589, 12.880, 28.307))}
PUBLISHED["imdb_wiki"]["BMC (RRT)"] = {"balanced_mae": _groups((12.654, 7.649, 12.689, 28.097))}
PUBLISHED["imdb_wiki"]["BNI (RRT)"] = {"balanced_mae": _groups((12.650, 7.647, 12.696, 28.077))}
# ConR's AgeDB-DIR few-shot MAE (its baselines 9.68 / 9.92 are the RankSim rows above / its own run).
PUBLISHED["agedb"]["SQINV+FDS+RankSim+ConR"] = {"mae": {"few": 9.43}}
PUBLISHED["agedb"]["SQINV+LDS+FDS+RankSim+ConR"] = {"mae": {"few": 9.21}}
