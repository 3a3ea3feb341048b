"""Test metrics as reported in the DIR / RankSim tables: MSE, MAE and GM, overall and per shot group.

Shot groups split the test samples by how well their label is represented in TRAINING:
  * age datasets: the number of train samples with the same integer label: many > 100,
    few < 20, medium otherwise (a label absent from train has count 0 -> few);
  * STS-B-DIR: FIXED lists of label bins used by the published code (not re-derived from the data);
  * any other labels (``shot_groups``): the age rule's thresholds on the train count of each
    test label's bin, bins from a ``ranksim.bins.Binning``.

GM is the geometric mean of the absolute errors, ``exp(mean(log(|err| (+ eps))))``; the published
programs differ only in how they guard against log(0) (see ``regression_metrics``).

All numbers are computed in float64 and returned as plain Python floats / ints (JSON-ready). A number
that is undefined (empty group; correlation of < 2 samples or of constant values) is None.
"""
from typing import Callable, Dict, Mapping, Optional

import numpy as np
from scipy import stats

from ranksim.bins import Binning
from ranksim.weighting import stsb_bin_of

GROUPS = ("many", "medium", "few")
ROWS = ("all",) + GROUPS
AGE_MANY_SHOT_THRESHOLD = 100  # a label with MORE train samples than this is many-shot
AGE_FEW_SHOT_THRESHOLD = 20  # a label with FEWER train samples than this is few-shot

# STS-B-DIR shot groups as fixed bin lists (bins of stsb_bin_of); every other bin is few-shot.
STSB_MANY_BINS = (0, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 49)
STSB_MEDIUM_BINS = (2, 4, 6, 8, 27, 35, 37)

GM_EPS_MODES = ("all", "zeros", "overall")


def _flat(values, name: str) -> np.ndarray:
    """numpy float64 [N] from a numpy array / tensor / list of shape [N] or [N, 1]."""
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape [N] or [N, 1], got {tuple(arr.shape)}")
    return arr


def _preds_and_labels(preds, labels):
    preds, labels = _flat(preds, "preds"), _flat(labels, "labels")
    if preds.shape != labels.shape:
        raise ValueError(f"preds ({preds.shape[0]}) and labels ({labels.shape[0]}) must have the same length")
    return preds, labels


def _integer_labels(labels, name: str) -> np.ndarray:
    arr = _flat(labels, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: labels must be finite numbers (found NaN or inf)")
    return np.trunc(arr).astype(np.int64)  # int(label), like the published astype(int)


def age_shot_groups(train_labels, labels, many_threshold: int = AGE_MANY_SHOT_THRESHOLD,
                    few_threshold: int = AGE_FEW_SHOT_THRESHOLD) -> Dict[str, np.ndarray]:
    """Shot-group masks of ``labels`` ([N]) from the train-label counts of their integer label.

    Returns {"many", "medium", "few"}: bool [N] masks that partition the N samples.
    """
    return _groups_by_train_count(_integer_labels(train_labels, "train_labels"), _integer_labels(labels, "labels"),
                                  many_threshold, few_threshold)


def shot_groups(train_labels, labels, binning: Binning, many_threshold: int = AGE_MANY_SHOT_THRESHOLD,
                few_threshold: int = AGE_FEW_SHOT_THRESHOLD) -> Dict[str, np.ndarray]:
    """Shot-group masks of ``labels`` ([N]) for any labels: a sample is many-shot when its bin holds
    more than ``many_threshold`` train labels, few-shot when it holds fewer than ``few_threshold``.

    binning: a ``ranksim.bins.Binning`` (ValueError naming a label outside its range). Returns
    {"many", "medium", "few"}: bool [N] masks that partition the N samples.
    """
    return _groups_by_train_count(binning.bin_of(train_labels, "train_labels"), binning.bin_of(labels, "labels"),
                                  many_threshold, few_threshold)


def _groups_by_train_count(train_keys: np.ndarray, keys: np.ndarray, many_threshold: int,
                           few_threshold: int) -> Dict[str, np.ndarray]:
    """Masks from the number of train keys equal to each key (integer arrays)."""
    values, counts = np.unique(train_keys, return_counts=True)  # sorted distinct train keys
    # train count of each key, 0 when the key never occurs in train
    train_count = np.zeros(len(keys), dtype=np.int64)
    if len(values):
        pos = np.minimum(np.searchsorted(values, keys), len(values) - 1)
        found = values[pos] == keys
        train_count[found] = counts[pos[found]]
    many = train_count > many_threshold
    few = train_count < few_threshold
    return {"many": many, "medium": ~many & ~few, "few": few}


def stsb_shot_groups(labels) -> Dict[str, np.ndarray]:
    """Shot-group masks of STS-B scores ([N], in [0, 5]) from the fixed bin lists.

    Returns {"many", "medium", "few"}: bool [N] masks that partition the N samples.
    """
    bins = stsb_bin_of(labels)
    many = np.isin(bins, STSB_MANY_BINS)
    medium = np.isin(bins, STSB_MEDIUM_BINS)
    return {"many": many, "medium": medium, "few": ~many & ~medium}


def _gmean(abs_err: np.ndarray, eps: float, zeros_only: bool) -> float:
    if zeros_only:
        abs_err = np.where(abs_err == 0, eps, abs_err)
    else:
        abs_err = abs_err + eps
    with np.errstate(divide="ignore"):  # log(0) = -inf -> GM 0, as scipy.stats.gmean gives
        return float(np.exp(np.mean(np.log(abs_err))))


def _correlation(fn, preds: np.ndarray, labels: np.ndarray) -> Optional[float]:
    # undefined for < 2 samples or constant values: report None instead of NaN plus a warning
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0:
        return None
    return float(fn(preds, labels)[0])


def regression_metrics(preds, labels, groups: Mapping[str, np.ndarray], gm_eps: float = 0.0,
                       gm_eps_mode: str = "all", correlations: bool = False) -> Dict[str, dict]:
    """MSE, MAE, GM (and optionally Pearson / Spearman) overall and per shot group.

    preds, labels: [N] or [N, 1] (numpy or torch), in label units (STS-B: scores, not score/5).
    groups: {"many", "medium", "few"} bool masks [N], e.g. from ``age_shot_groups``.
    gm_eps, gm_eps_mode: what the GM adds to the absolute errors before the log:
      'all'     add gm_eps to every error in every row (gm_eps=0: plain GM, the AgeDB-DIR rule);
      'zeros'   replace errors equal to 0 by gm_eps in every row (STS-B-DIR: gm_eps=1e-10);
      'overall' add gm_eps to every error of the "all" row only, group rows use the plain errors
                (IMDB-WIKI-DIR: gm_eps=1e-10).
      With no guard an error of exactly 0 makes that row's GM 0.0.
    correlations: also report "pearson" and "spearman" (raw coefficients in [-1, 1]; the paper's
      tables show them x100).

    Returns {"all" | "many" | "medium" | "few": {"count", "mse", "mae", "gmean"[, "pearson",
    "spearman"]}}. An empty row has count 0 and None for every number.
    """
    if gm_eps_mode not in GM_EPS_MODES:
        raise ValueError(f"gm_eps_mode={gm_eps_mode!r} is not one of {', '.join(GM_EPS_MODES)}")
    if not gm_eps >= 0:
        raise ValueError(f"gm_eps={gm_eps!r} must be >= 0")
    preds, labels = _preds_and_labels(preds, labels)
    missing = [g for g in GROUPS if g not in groups]
    if missing:
        raise ValueError(f"groups: missing mask(s) {', '.join(missing)}; expected keys {', '.join(GROUPS)}")

    masks = {"all": np.ones(len(labels), dtype=bool)}
    for name in GROUPS:
        mask = np.asarray(groups[name]).reshape(-1)
        if mask.dtype != bool or mask.shape[0] != len(labels):
            raise ValueError(f"groups[{name!r}]: expected a bool mask of length {len(labels)}, "
                             f"got dtype {mask.dtype} and length {mask.shape[0]}")
        masks[name] = mask

    results = {}
    for row, mask in masks.items():
        p, y = preds[mask], labels[mask]
        count = int(mask.sum())
        entry = {"count": count, "mse": None, "mae": None, "gmean": None}
        if correlations:
            entry.update(pearson=None, spearman=None)
        if count > 0:
            err = p - y
            abs_err = np.abs(err)
            eps = gm_eps if (gm_eps_mode != "overall" or row == "all") else 0.0
            entry.update(mse=float(np.mean(err ** 2)), mae=float(np.mean(abs_err)),
                         gmean=_gmean(abs_err, eps, zeros_only=gm_eps_mode == "zeros"))
            if correlations:
                entry.update(pearson=_correlation(stats.pearsonr, p, y),
                             spearman=_correlation(stats.spearmanr, p, y))
        results[row] = entry
    return results


def per_label_mae(preds, labels, label_of: Optional[Callable[[np.ndarray], np.ndarray]] = None
                  ) -> Dict[str, dict]:
    """MAE per label: {"<label>": {"count": int, "mae": float}}, keys in ascending label order.

    label_of maps the label array ([N], float64) to integer keys ([N]), e.g. ``age_bin_of`` or
    ``stsb_bin_of`` (then the keys are bins); None uses int(label).
    """
    preds, labels = _preds_and_labels(preds, labels)
    keys = _integer_labels(labels, "labels") if label_of is None else np.asarray(label_of(labels))
    if keys.shape != labels.shape:
        raise ValueError(f"label_of: returned shape {keys.shape}, expected one key per label {labels.shape}")
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    abs_err_sum = np.bincount(inverse.reshape(-1), weights=np.abs(preds - labels), minlength=len(uniq))
    return {str(k.item()): {"count": int(c), "mae": float(s / c)} for k, c, s in zip(uniq, counts, abs_err_sum)}


def format_metrics_table(metrics: Mapping[str, Mapping]) -> str:
    """Printable table: rows all/many/medium/few, columns count, MSE, MAE, GM[, Pearson, Spearman].

    ``metrics`` is the output of ``regression_metrics``; undefined numbers print as '-'.
    """
    columns = [("count", "Count"), ("mse", "MSE"), ("mae", "MAE"), ("gmean", "GM")]
    if "pearson" in metrics.get("all", {}):
        columns += [("pearson", "Pearson"), ("spearman", "Spearman")]

    def cell(key, value):
        if value is None:
            return "-"
        return str(value) if key == "count" else f"{value:.4f}"

    header = f"{'Shot':<8}" + "".join(f"{title:>10}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for row in ROWS:
        if row in metrics:
            lines.append(f"{row:<8}" + "".join(f"{cell(k, metrics[row].get(k)):>10}" for k, _ in columns))
    return "\n".join(lines)
