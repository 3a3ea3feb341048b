"""The rows of the paper's tables as data: which flags each row trains with and what was published.

RankSim (Gong, Mori, Tung, ICML 2022) reports, for AgeDB-DIR, IMDB-WIKI-DIR and STS-B-DIR, the
baselines of Yang et al. (ICML 2021) each with and without RankSim. `reproduce.py` turns these rows
into train.py command lines and collects the resulting ``results.json`` files into tables laid out
like the paper's, with the published numbers (the paper, the RankSim README and Yang et al.'s tables
as reprinted by later papers) beside ours.

Row set (per benchmark, each with and without RankSim, 28 rows):
  Vanilla, FDS                      (no re-weighting)
  SQINV | INV, +LDS, +FDS, +LDS+FDS (cost-sensitive re-weighting; SQINV on the age data, INV on STS-B)
  Focal-R, +LDS, +FDS, +LDS+FDS     (focal version of the benchmark's default loss)
  RRT, +LDS, +FDS, +LDS+FDS         (two stages, see below)

Flags: every row carries the flags of the command the published RankSim README gives for it
(BorealisAI/ranksim-imbalanced-regression, commit 9e1c862; the commands are kept as a test fixture,
tests/fixtures/published_commands.json). Rows the README gives no command for combine the flags of
their parts, as the README does for its own combinations:
- LDS and FDS always with their kernel spelled out: gaussian, ks 5, sigma 2 (the train.py defaults of
  the age data would otherwise give ks 9, sigma 1).
- AgeDB-DIR RankSim rows: gamma=100, lambda=2, batch 64, lr 2.5e-4; IMDB-WIKI-DIR RankSim rows:
  gamma=100, lambda=2, batch 256, lr 1e-3 (the IMDB-WIKI README uses these for every RankSim row);
  rows without RankSim on the age data: batch 256, lr 1e-3. STS-B RankSim rows: gamma=3e-4, lambda=2
  (batch 16 and lr 2.5e-4 are the STS-B defaults); STS-B Vanilla spells out ``--reweight none``.
- STS-B Focal-R+RankSim re-weights: the README's command is ``--loss focal_mse --reweight inverse``
  plus RankSim, so the Focal-R+...+RankSim rows of STS-B carry ``--reweight inverse``; STS-B's
  Focal-R rows without RankSim (Yang et al.'s) do not.
- ``--published_quirks`` (PUBLISHED_QUIRKS_FLAG) is added where the published code's quirks change
  the result: rows with ``--reweight inverse --lds`` (integer-truncated smoothed counts) and age rows
  with a focal or Huber loss (weights passed into the wrong parameter), so that `reproduce.py run`
  reproduces what produced the paper's numbers.

Decisions (choices, not published facts):
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
- The "RankSim row reprinted by later papers" (combination believed SQINV+FDS+RankSim) is attached
  to SQINV+FDS+RankSim (INV+FDS+RankSim on STS-B) and marked ``believed=True``; on AgeDB-DIR its
  few-shot MAE 9.68 equals the README's SQINV+FDS+RankSim number, elsewhere it is unconfirmed.
"""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

GROUPS = ("many", "medium", "few")
ALL_GROUPS = ("all",) + GROUPS

# The train.py switch that turns on the published code's quirks (see the module docstring).
PUBLISHED_QUIRKS_FLAG = "--published_quirks"


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
    # (error metric, second metric[, extra columns]) of the tables: ("mae", "gmean") | ("mse", "pearson")
    metrics: Tuple[str, ...]
    seed_arg: str             # the args key train.py records its seed under (set with --seed)
    default_seed: int         # train.py's default seed
    baseline_flags: Tuple[str, ...] = ()        # what rows without RankSim add
    vanilla_flags: Tuple[str, ...] = ()         # what the published Vanilla command spells out
    focal_ranksim_flags: Tuple[str, ...] = ()   # what the published Focal-R+RankSim command adds
    quirk_losses: Tuple[str, ...] = ()          # losses whose published handling needs --published_quirks
    default_args: Dict[str, object] = field(default_factory=dict)  # published train.py defaults that rows rely on
    # Files train.py finds relative to ITS folder by default; reproduce.py runs from the repository root.
    path_flags: Tuple[str, ...] = ()
    # How a checkpoint is evaluated: "resume" (age: --evaluate --resume FILE), "eval_model" (STS-B).
    evaluate_style: str = "resume"
    note: str = ""            # a line printed under the table (e.g. why no published number is shown)


LDS_KERNEL = ("--lds_kernel", "gaussian", "--lds_ks", "5", "--lds_sigma", "2")
FDS_FLAGS = ("--fds", "--fds_kernel", "gaussian", "--fds_ks", "5", "--fds_sigma", "2")
AGE_BASELINE = ("--batch_size", "256", "--lr", "1e-3")
AGE_RANKSIM_LOSS = ("--regularization_weight", "100", "--interpolation_lambda", "2")
AGE_QUIRK_LOSSES = ("focal_l1", "focal_mse", "huber")

BENCHMARKS: Dict[str, Benchmark] = {
    "agedb": Benchmark(
        name="agedb", title="AgeDB-DIR", folder="agedb-dir", data_dir="agedb-dir/data",
        reweight="sqrt_inv", reweight_title="SQINV", focal_loss="focal_l1",
        ranksim_flags=AGE_RANKSIM_LOSS + ("--batch_size", "64", "--lr", "2.5e-4"),
        metrics=("mae", "gmean"), seed_arg="seed", default_seed=0, baseline_flags=AGE_BASELINE,
        quirk_losses=AGE_QUIRK_LOSSES,
        default_args={"model": "resnet50", "img_size": 224, "batch_size": 256, "lr": 1e-3, "loss": "l1",
                      "optimizer": "adam", "epoch": 120},
    ),
    "imdb_wiki": Benchmark(
        name="imdb_wiki", title="IMDB-WIKI-DIR", folder="imdb-wiki-dir", data_dir="imdb-wiki-dir/data",
        reweight="sqrt_inv", reweight_title="SQINV", focal_loss="focal_l1",
        ranksim_flags=AGE_RANKSIM_LOSS + AGE_BASELINE,
        # Balanced MSE's IMDB-WIKI-DIR table reports the balanced MAE: its own column on this benchmark.
        metrics=("mae", "gmean", "balanced_mae"), seed_arg="seed", default_seed=0, baseline_flags=AGE_BASELINE,
        quirk_losses=AGE_QUIRK_LOSSES,
        default_args={"model": "resnet50", "img_size": 224, "batch_size": 256, "lr": 1e-3, "loss": "l1",
                      "optimizer": "adam", "epoch": 90},
    ),
    "sts-b": Benchmark(
        name="sts-b", title="STS-B-DIR", folder="sts-b-dir", data_dir="sts-b-dir/glue_data/STS-B",
        reweight="inverse", reweight_title="INV", focal_loss="focal_mse",
        ranksim_flags=("--regularization_weight", "3e-4", "--interpolation_lambda", "2"),
        metrics=("mse", "pearson"), seed_arg="random_seed", default_seed=111,
        vanilla_flags=("--reweight", "none"), focal_ranksim_flags=("--reweight", "inverse"),
        default_args={"batch_size": 16, "lr": 2.5e-4, "loss": "mse", "optimizer": "adam"},
        path_flags=("--word_embs_file", "sts-b-dir/glove/glove.840B.300d.txt"),
        evaluate_style="eval_model",
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
        # the later DIR methods (ranksim/harness/comparators.py); absent keys: off
        ("bmse", str(args.get("bmse", "none"))),
        ("conr", bool(args.get("conr", False))),
        ("rnc", str(args.get("rnc", "none"))),
        ("oe", bool(args.get("oe", False))),  # Ordinal Entropy (DenseWeight is a --reweight value)
    )


def flags_to_args(flags: Sequence[str], benchmark: Optional[Benchmark] = None) -> Dict[str, object]:
    """Parse train.py flags into {name: value} as strings: ``--x v`` and ``--x=v`` give "v", a switch
    gives True, a flag followed by several values (``--schedule 60 80``) gives a list of strings.
    With ``benchmark``, a missing ``loss`` takes the benchmark's default loss."""
    args: Dict[str, object] = {}
    i = 0
    while i < len(flags):
        token = flags[i]
        if not token.startswith("--"):
            raise ValueError(f"flag expected, got {token!r} in {' '.join(flags)}")
        name, eq, inline = token[2:].partition("=")
        i += 1
        if eq:
            args[name] = inline
            continue
        values = []
        while i < len(flags) and not flags[i].startswith("--"):
            values.append(flags[i])
            i += 1
        args[name] = True if not values else values[0] if len(values) == 1 else values
    if benchmark is not None:
        args.setdefault("loss", benchmark.default_args.get("loss"))
    return args


def needs_published_quirks(flags: Sequence[str], benchmark: Benchmark) -> bool:
    """Whether a row with ``flags`` is affected by the published code's quirks (module docstring)."""
    args = flags_to_args(flags, benchmark)
    return bool((args.get("reweight") == "inverse" and args.get("lds")) or args.get("loss") in benchmark.quirk_losses)


def build_rows(benchmark: Benchmark) -> List[Row]:
    """All rows of ``benchmark``'s table, in the paper's order (each baseline then its +RankSim)."""
    rw = ("--reweight", benchmark.reweight)
    lds = rw + ("--lds",) + LDS_KERNEL
    fds = FDS_FLAGS
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
            row_flags = flags
            if key == "vanilla" and not with_ranksim:
                row_flags = benchmark.vanilla_flags
            if with_ranksim and group == "Focal-R" and "--reweight" not in flags:
                row_flags += benchmark.focal_ranksim_flags
            row_flags += benchmark.ranksim_flags if with_ranksim else benchmark.baseline_flags
            if needs_published_quirks(row_flags, benchmark):
                row_flags += (PUBLISHED_QUIRKS_FLAG,)
            rows.append(Row(
                key=f"{key}-ranksim" if with_ranksim else key,
                name=f"{name}+RankSim" if with_ranksim else name,
                group=group,
                flags=row_flags,
                stage1=None if stage1 is None else (f"{stage1}-ranksim" if with_ranksim else stage1),
                ranksim=with_ranksim,
                identity=run_identity(flags_to_args(row_flags, benchmark), benchmark),
            ))
    return rows


# Published test-split numbers of the paper's rows (the RankSim README; Yang et al.'s tables as reprinted
# by later papers): PAPER_PUBLISHED[dataset][row name][metric][group] = value. PUBLISHED (below, with
# the later methods' numbers) is what the rest of the code reads.
# Metrics: "mae", "gmean" (age data), "mse", "pearson" (STS-B; Pearson x100 as printed in the paper).
# BELIEVED marks rows whose attribution is "believed", not confirmed (see the module docstring).


def _groups(values: Tuple[float, float, float, float]) -> Dict[str, float]:
    return dict(zip(ALL_GROUPS, values))


PAPER_PUBLISHED: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {
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


# ----------------------------------------------------------------------------- released checkpoints

@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A checkpoint the RankSim authors released (Google Drive) with the figures their README states
    for it: ``figures`` are (metric, group) pairs whose values are in PUBLISHED."""

    dataset: str
    row: str                              # row name, as in ROWS
    figures: Tuple[Tuple[str, str], ...]
    drive_id: str


RELEASED: List[ReleasedCheckpoint] = [
    ReleasedCheckpoint("agedb", "SQINV+RankSim", (("mae", "all"),), "1NLCGNDA5vToe-MdOqokVYtUcJhGudIZe"),
    ReleasedCheckpoint("agedb", "SQINV+FDS+RankSim", (("mae", "few"),), "1-3S2itLDkXhaLgJ9JvhqvTV-mNvLOMT6"),
    ReleasedCheckpoint("agedb", "Focal-R+LDS+FDS+RankSim", (("mae", "many"),), "1vH_0NZE66DIiTSnsF2PGehD2AUJZ72uB"),
    ReleasedCheckpoint("agedb", "Focal-R+FDS+RankSim", (("gmean", "medium"),), "1XeU-60RRLwpkolZRG45zsaLDG2fBwlwS"),
    ReleasedCheckpoint("agedb", "RRT+LDS+RankSim", (("mae", "medium"),), "10kbUoJ7mT9KTiD_3nSnYL3Lrr6lyDNY6"),
    ReleasedCheckpoint("imdb_wiki", "Focal-R+LDS+FDS+RankSim", (("mae", "all"),), "1gEwrnsaO1A4I-e50NTW5fOnUSy3cnrx5"),
    ReleasedCheckpoint("imdb_wiki", "RRT+FDS+RankSim", (("mae", "all"),), "1bKAP64Mx64HGasBzac4lSYcda6DuYIe7"),
    ReleasedCheckpoint("imdb_wiki", "SQINV+RankSim", (("mae", "all"),), "1U1o2dXIXTLzyGAS10vtCtAW7DoXtT9FM"),
    ReleasedCheckpoint("imdb_wiki", "SQINV+LDS+FDS+RankSim", (("mae", "all"), ("mae", "few")),
                       "1R8v__UELcHO2zKP6dxF0aKxG2L266hy0"),
    ReleasedCheckpoint("sts-b", "Vanilla+RankSim", (("mse", "medium"), ("pearson", "medium")),
                       "1YfrRxSIlgQPFDtGodhcUfIjp-laSqm20"),
    ReleasedCheckpoint("sts-b", "RRT+RankSim", (("mse", "all"), ("pearson", "all"), ("mse", "few"), ("pearson", "few")),
                       "1x-M8VhwCVvFvu36f_VwGn_UDzZOEPUjF"),
    ReleasedCheckpoint("sts-b", "FDS+RankSim", (("mse", "medium"),), "1vjcIs2gXhQUidnLxgsCL0RoA59bklCTN"),
    ReleasedCheckpoint("sts-b", "INV+LDS+RankSim", (("mse", "all"), ("pearson", "all")),
                       "12kVI2Mm5hcVXeBPikN9dBJkpPPrfHLmS"),
]

# evaluate-released: PASS when |ours - published| <= tolerance. The README prints MAE/GM with two
# decimals, MSE with three and Pearson (x100) with one, so each tolerance is one unit of the last
# printed digit for MAE/GM and Pearson, and two for MSE (whose third decimal moves with GPU kernels).
RELEASED_TOLERANCE = {"mae": 0.01, "gmean": 0.01, "mse": 0.002, "pearson": 0.1}

# Flags that define the model a checkpoint holds (FDS adds buffers and layers to it); evaluating a
# released checkpoint needs them, the training-only flags (re-weighting, losses, RankSim) it does not.
MODEL_FLAG_NAMES = ("fds", "fds_kernel", "fds_ks", "fds_sigma", "bucket_num", "bucket_start", "model", "img_size")


def model_flags(flags: Sequence[str]) -> Tuple[str, ...]:
    """The part of ``flags`` (a row's train.py flags) that defines the model, in their order."""
    kept: List[str] = []
    keep = False
    for token in flags:
        if token.startswith("--"):
            keep = token[2:].partition("=")[0] in MODEL_FLAG_NAMES
        if keep:
            kept.append(token)
    return tuple(kept)

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
# - Ordinal Entropy (Zhang et al., ICLR 2023) and DenseWeight (Steininger et al., Machine Learning 2021),
#   as re-run by Puetz et al. (Artif. Intell. Rev. 2026), whose schedules set batch and lr per method
#   family: DenseWeight is a re-weighting, so it takes the rows' baseline schedule (age: batch 256,
#   lr 1e-3); OE, a feature regularizer, takes RankSim's schedule on each benchmark (AgeDB-DIR: batch
#   64, lr 2.5e-4, as Puetz et al. give RankSim and ConR; IMDB-WIKI-DIR: 256, 1e-3). OE's code has no
#   AgeDB settings, so this is our choice; lambda_d = lambda_t = 1 as in its integration. DenseWeight
#   uses alpha 1.0 (its package default). Alone and with RankSim. No number in Yang et al.'s protocol
#   has been checked for either, so no published cell is shown.
# ------------------------------------------------------------------------------------------------

COMPARATOR_GROUPS = ("Balanced MSE", "ConR", "Rank-N-Contrast (two stages)", "Ordinal Entropy", "DenseWeight")
DENSEWEIGHT_FLAGS = ("--reweight", "denseweight", "--dw_alpha", "1.0")
RANKSIM_TERM_FLAGS = ("--regularization_weight", "--interpolation_lambda")


def ranksim_schedule(benchmark: Benchmark) -> Tuple[str, ...]:
    """The batch / lr flags of ``benchmark``'s RankSim rows, without RankSim's own (flag, value) pairs."""
    pairs = zip(benchmark.ranksim_flags[::2], benchmark.ranksim_flags[1::2])
    return tuple(token for flag, value in pairs if flag not in RANKSIM_TERM_FLAGS for token in (flag, value))


def oe_denseweight_specs(benchmark: Benchmark) -> list:
    """(group, key, name, flags, stage-1 key, ranksim) of the Ordinal Entropy and DenseWeight rows."""
    rs = benchmark.ranksim_flags
    return [
        ("Ordinal Entropy", "oe", "OE", ("--oe",) + ranksim_schedule(benchmark), None, False),
        ("Ordinal Entropy", "oe-ranksim", "OE+RankSim", ("--oe",) + rs, None, True),
        ("DenseWeight", "denseweight", "DenseWeight", DENSEWEIGHT_FLAGS + benchmark.baseline_flags, None, False),
        ("DenseWeight", "denseweight-ranksim", "DenseWeight+RankSim", DENSEWEIGHT_FLAGS + rs, None, True),
    ]
# (STS-B counts iterations, not epochs: its stage 2 keeps the program's schedule and early stop.)
BMSE_STAGE2 = ("--retrain_fc", "--lr", "1e-4")
BMSE_STAGE2_EPOCHS = ("--epoch", "10")
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
        specs.append(("Balanced MSE", f"{variant}-rrt", f"{name} (RRT)", ("--bmse", variant) + BMSE_STAGE2 + (BMSE_STAGE2_EPOCHS if age else ()),
                      "vanilla", False))
    specs += [
        ("ConR", "conr", "ConR", ("--conr",), None, False),
        ("ConR", "conr-ranksim", "ConR+RankSim", ("--conr",) + rs, None, True),
    ]
    if age:
        specs += [
            # ConR's source gives no LDS/FDS window: the one every other row carries (gaussian, ks 5, sigma 2).
            ("ConR", f"{t.lower()}-fds-ranksim-conr", f"{t}+FDS+RankSim+ConR", rw + FDS_FLAGS + rs + ("--conr",),
             None, True),
            ("ConR", f"{t.lower()}-lds-fds-ranksim-conr", f"{t}+LDS+FDS+RankSim+ConR",
             rw + ("--lds",) + LDS_KERNEL + FDS_FLAGS + rs + ("--conr",), None, True),
            ("Rank-N-Contrast (two stages)", "rnc-encoder", "RnC stage 1 (encoder)", RNC_ENCODER, None, False),
            ("Rank-N-Contrast (two stages)", "rnc", "RnC", RNC_LINEAR, "rnc-encoder", False),
        ]
    specs += oe_denseweight_specs(benchmark)
    return [Row(key=key, name=name, group=group, flags=flags, stage1=stage1, ranksim=ranksim,
                identity=run_identity(flags_to_args(flags, benchmark), benchmark))
            for group, key, name, flags, stage1, ranksim in specs]


ROWS: Dict[str, List[Row]] = {name: build_rows(b) + build_comparator_rows(b) for name, b in BENCHMARKS.items()}

# Published numbers of the later methods, in PAPER_PUBLISHED's layout.
COMPARATOR_PUBLISHED: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {
    "imdb_wiki": {
        # Balanced MSE's table: the balanced MAE of its baseline and of its two-stage rows.
        "Vanilla": {"balanced_mae": _groups((13.923, 7.323, 15.925, 32.778))},
        "GAI (RRT)": {"balanced_mae": _groups((12.690, 7.589, 12.880, 28.307))},
        "BMC (RRT)": {"balanced_mae": _groups((12.654, 7.649, 12.689, 28.097))},
        "BNI (RRT)": {"balanced_mae": _groups((12.650, 7.647, 12.696, 28.077))},
    },
    "agedb": {
        # ConR's AgeDB-DIR few-shot MAE (its baselines 9.68 / 9.92 are the RankSim rows above / its own run).
        "SQINV+FDS+RankSim+ConR": {"mae": {"few": 9.43}},
        "SQINV+LDS+FDS+RankSim+ConR": {"mae": {"few": 9.21}},
    },
}


def merge_tables(base: Dict[str, object], extra: Dict[str, object]) -> Dict[str, object]:
    """A new nested dict: ``base`` with ``extra`` merged in at every level (neither is changed).

    Keys keep ``base``'s order, keys only in ``extra`` follow in theirs; where both hold a dict, the
    two are merged, otherwise ``extra``'s value wins."""
    merged = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = merge_tables(merged[key], value) if both_dicts else value
    return merged


# Every published number: PUBLISHED[dataset][row name][metric][group] = value.
PUBLISHED: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = merge_tables(PAPER_PUBLISHED, COMPARATOR_PUBLISHED)


# ------------------------------------------------------------------------------------------------
# Puetz et al.'s AgeDB stress-test protocols (Artif. Intell. Rev. 2026, doi 10.1007/s10462-026-11570-1):
# one table per protocol (reproduce.py --dataset agedb-extrapolation | agedb-interpolation |
# agedb-blindspot), each row run with `train.py --protocol P`. Kept apart from BENCHMARKS / ROWS (the
# RankSim paper's tables); reproduce.py reads TABLE_BENCHMARKS / TABLE_ROWS, which hold both.
#
# Training settings: the protocol paper's reproduction commands (its repository's
# REPRODUCTION_COMMANDS.md, commit 03fc357), other values its train.py defaults: ResNet-50, Adam, lr x0.1
# at epochs 60 and 80, 120 epochs; batch 256 at lr 1e-3 for Vanilla / SQINV / LDS / FDS; batch 64 at
# lr 2.5e-4 for RankSim, ConR and Focal-L1; LDS/FDS gaussian ks 5 sigma 2; RankSim gamma 100, lambda 2;
# ConR omega 1, beta 4, tau 0.2, e 0.01; RRT's head retrained 30 epochs at lr 1e-3.
# Decisions: "LDS" is SQINV+LDS (LDS smooths re-weighting, as in the tables above); RRT+RankSim retrains
# the head of the RankSim row's model with RRT's 30 epochs at lr 1e-3 and RankSim's batch 64; Focal-L1
# carries --published_quirks like the Focal-R rows above (its code descends from the same published code).
# Published numbers: the paper's text was not available here, so none is shown.
# ------------------------------------------------------------------------------------------------

PROTOCOL_TITLES = {"extrapolation": "Balanced Extrapolation", "interpolation": "Bimodal Interpolation",
                   "blindspot": "Blind-Spot Isolation"}
PROTOCOL_NOTE = ("Puetz et al.'s numbers are not shown: the paper's text was not available when these rows were "
                 "written, so no published value could be checked. Regions: from the protocol's train rows "
                 "(duplicates counted), many > 100, few < 20; n/a = empty region.")
_PROTO_BASE = ("--batch_size", "256", "--lr", "1e-3")
_PROTO_SMALL = ("--batch_size", "64", "--lr", "2.5e-4")
_PROTO_RANKSIM = AGE_RANKSIM_LOSS + _PROTO_SMALL
_PROTO_CONR = ("--conr", "--conr_omega", "1", "--conr_beta", "4", "--conr_tau", "0.2", "--conr_e", "0.01")
_PROTO_RRT = ("--retrain_fc", "--reweight", "sqrt_inv", "--epoch", "30")
# (key, name, flags without --protocol, stage-1 key or None, ranksim)
_PROTOCOL_SPECS = (
    ("vanilla", "Vanilla", _PROTO_BASE, None, False),
    ("sqinv", "SQINV", ("--reweight", "sqrt_inv") + _PROTO_BASE, None, False),
    ("sqinv-lds", "LDS (SQINV+LDS)", ("--reweight", "sqrt_inv", "--lds") + LDS_KERNEL + _PROTO_BASE, None, False),
    ("fds", "FDS", FDS_FLAGS + _PROTO_BASE, None, False),
    ("focal", "Focal-L1", ("--loss", "focal_l1") + _PROTO_SMALL + (PUBLISHED_QUIRKS_FLAG,), None, False),
    ("vanilla-ranksim", "RankSim", _PROTO_RANKSIM, None, True),
    ("conr", "ConR", _PROTO_CONR + _PROTO_SMALL, None, False),
    ("rrt", "RRT", _PROTO_RRT + _PROTO_BASE, "vanilla", False),
    ("rrt-ranksim", "RRT+RankSim", _PROTO_RRT + AGE_RANKSIM_LOSS + ("--batch_size", "64", "--lr", "1e-3"),
     "vanilla-ranksim", True),
)


def build_protocol_rows(benchmark: Benchmark, protocol: str) -> List[Row]:
    """The rows of ``protocol``'s table: each row's flags plus ``--protocol protocol``."""
    return [Row(key=key, name=name, group=f"{PROTOCOL_TITLES[protocol]} (Puetz et al.)",
                flags=flags + ("--protocol", protocol), stage1=stage1, ranksim=ranksim,
                identity=run_identity(flags_to_args(flags, benchmark), benchmark))
            for key, name, flags, stage1, ranksim in _PROTOCOL_SPECS]


PROTOCOL_BENCHMARKS: Dict[str, Benchmark] = {
    f"agedb-{protocol}": replace(
        BENCHMARKS["agedb"], name=f"agedb-{protocol}", title=f"AgeDB {title} (Puetz et al.)", note=PROTOCOL_NOTE,
        default_args={**BENCHMARKS["agedb"].default_args, "protocol": protocol})
    for protocol, title in PROTOCOL_TITLES.items()
}
PROTOCOL_ROWS: Dict[str, List[Row]] = {name: build_protocol_rows(b, b.default_args["protocol"])
                                       for name, b in PROTOCOL_BENCHMARKS.items()}
# What reproduce.py tabulates: the RankSim paper's benchmarks, then the protocol tables.
TABLE_BENCHMARKS: Dict[str, Benchmark] = {**BENCHMARKS, **PROTOCOL_BENCHMARKS}
TABLE_ROWS: Dict[str, List[Row]] = {**ROWS, **PROTOCOL_ROWS}
TABLE_ALIASES: Dict[str, str] = {**DATASET_ALIASES, **{name: name for name in PROTOCOL_BENCHMARKS}}


def table_of_run(results: Dict[str, object]) -> Optional[str]:
    """The table (TABLE_BENCHMARKS key) a results.json belongs to: its dataset, plus its --protocol if any."""
    dataset = TABLE_ALIASES.get(str(results.get("dataset", "")).lower())
    args = results.get("args") if isinstance(results.get("args"), dict) else {}
    protocol = results.get("protocol") or args.get("protocol")
    if dataset is None or protocol in (None, "published"):
        return dataset
    return TABLE_ALIASES.get(f"{dataset}-{protocol}")
