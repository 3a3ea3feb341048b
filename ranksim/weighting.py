"""Per-sample loss weights for imbalanced regression: inverse-frequency re-weighting and LDS.

Labels are first mapped to bins:
  * age datasets (AgeDB-DIR, IMDB-WIKI-DIR): bin = int(label), clipped to [0, 120] -> 121 bins;
  * STS-B-DIR: 50 equal bins on [0, 5] with ``np.histogram`` edges; a label of exactly 5 is bin 49.

``label_weights`` then counts the train labels per bin, optionally transforms the counts (sqrt for
``sqrt_inv``, clip to [5, 1000] for ``inverse`` on age labels), optionally smooths the count vector
along the bin axis with an LDS window (label distribution smoothing, Yang et al. 2021), and gives each
sample the weight 1 / (value of its bin), rescaled so that the weights have mean 1.

``integer_smoothing=True`` reproduces a quirk of the published code (``--published_quirks``): it
smooths the ``inverse`` counts as an INTEGER array, and ``scipy.ndimage.convolve1d`` returns the
input's dtype, so every smoothed count is truncated towards zero (with the paper's kernel, gaussian
ks 5 sigma 2, the AgeDB-DIR INV+LDS weights move by up to 3.8 %, STS-B-DIR's by up to 0.4 %). ``sqrt_inv`` values are floats there too, so only ``inverse`` is affected.

The weights are computed once on the train split and stored with each sample.
"""
import numpy as np
from scipy.ndimage import convolve1d

from ranksim.kernels import kernel_window

AGE_NUM_BINS = 121
STSB_NUM_BINS = 50
STSB_RANGE = (0.0, 5.0)

REWEIGHTS = ("none", "inverse", "sqrt_inv")
LABEL_KINDS = ("age", "stsb")

# `inverse` re-weighting on age labels clips each bin count to this range before inverting, so that
# nearly empty ages do not get enormous weights (and empty ages still contribute to LDS smoothing).
INVERSE_CLIP = (5, 1000)


def _as_flat_array(labels, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D numpy array; accepts lists, numpy arrays and torch tensors of shape [N] or [N, 1]."""
    if hasattr(labels, "detach"):  # torch.Tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape [N] or [N, 1], got {tuple(arr.shape)}")
    return arr


def age_bin_of(labels) -> np.ndarray:
    """Age bin of each label: int(label) (truncation, like Python's int) clipped to [0, 120].

    labels: [N] or [N, 1] ages in years (int or float). Returns int64 [N].
    """
    arr = _as_flat_array(labels).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("labels: age labels must be finite numbers (found NaN or inf)")
    return np.clip(np.trunc(arr), 0, AGE_NUM_BINS - 1).astype(np.int64)


def stsb_bin_edges(num_bins: int = STSB_NUM_BINS) -> np.ndarray:
    """The num_bins + 1 float32 edges of the STS-B bins (50 by default), exactly as ``np.histogram``
    builds them for float32 data.

    The published code builds the edges from an empty float32 array, so they are float32, and compares
    float32 labels with them. The float32 comparison decides the bin of labels that lie on an edge
    (0.2, 0.4, 3.8, ...: most STS-B scores): in float64 0.3 < 0.30000000000000004 (bin 2), in float32
    0.3 == edge 3 (bin 3). Only the float32 rule reproduces the published shot-group sizes.
    """
    _, edges = np.histogram(np.empty(0, dtype=np.float32), bins=num_bins, range=STSB_RANGE)
    return edges.astype(np.float32)


def stsb_bin_of(labels, num_bins: int = STSB_NUM_BINS) -> np.ndarray:
    """STS-B bin of each similarity score: bin i holds edges[i] <= score < edges[i+1]; score 5.0 -> the
    last bin (49 with the default 50 bins).

    labels: [N] or [N, 1] scores in [0, 5] (compared in float32, see ``stsb_bin_edges``).
    Returns int64 [N] in [0, num_bins - 1]. Raises ValueError for scores outside [0, 5] or NaN.
    """
    arr = _as_flat_array(labels).astype(np.float32)
    low, high = STSB_RANGE
    if np.isnan(arr).any():
        raise ValueError("labels: STS-B scores must be numbers in [0, 5] (found NaN)")
    bad = (arr < low) | (arr > high)
    if bad.any():
        raise ValueError(f"labels: STS-B scores must lie in [{low:g}, {high:g}]; found {float(arr[bad][0])!r} "
                         f"({int(bad.sum())} value(s) out of range)")
    # index of the first edge strictly greater than the score, minus one; score 5.0 falls past the
    # last edge and is folded into the last bin (np.histogram's last bin is closed on the right).
    bins = np.searchsorted(stsb_bin_edges(num_bins), arr, side="right") - 1
    return np.minimum(bins, num_bins - 1).astype(np.int64)


def _bins_and_num_bins(labels, label_kind: str, stsb_num_bins: int = STSB_NUM_BINS):
    if label_kind == "age":
        return age_bin_of(labels), AGE_NUM_BINS
    if label_kind == "stsb":
        return stsb_bin_of(labels, stsb_num_bins), stsb_num_bins
    raise ValueError(f"label_kind={label_kind!r} is not one of {', '.join(LABEL_KINDS)}")


def bin_counts(labels, label_kind: str = "age") -> np.ndarray:
    """Number of labels in each bin. Returns int64 [121] for 'age', [50] for 'stsb'."""
    bins, num_bins = _bins_and_num_bins(labels, label_kind)
    return np.bincount(bins, minlength=num_bins).astype(np.int64)


def label_weights(labels, reweight: str = "none", lds: bool = False, lds_kernel: str = "gaussian",
                  lds_ks: int = 5, lds_sigma: float = 2, label_kind: str = "age",
                  stsb_num_bins: int = STSB_NUM_BINS, integer_smoothing: bool = False) -> np.ndarray:
    """Per-sample weights (float32 [N], mean 1) for the train labels ``labels`` ([N] or [N, 1]).

    reweight: 'none' (all ones), 'inverse' (1 / count; counts clipped to [5, 1000] for age labels,
    raw counts for STS-B) or 'sqrt_inv' (1 / sqrt(count)).
    lds: smooth the (transformed) per-bin count vector with the LDS window ``kernel_window(lds_kernel,
    lds_ks, lds_sigma, normalise='max')`` (``scipy.ndimage.convolve1d``, zero padding outside the bin
    range) and use each sample's smoothed bin value instead. Requires reweight != 'none'.
    label_kind: 'age' (121 integer bins) or 'stsb' (``stsb_num_bins`` equal score bins on [0, 5];
    sts-b-dir/train.py passes --bucket_num, 50 by default, as the published code does).
    integer_smoothing: with reweight 'inverse' and lds, smooth the integer counts and truncate each
    smoothed value towards zero, as the published code does (module docstring); off by default.

    The kernel arguments are ignored when lds is False (as in the published code).

    A bin that holds at least one sample always has a value > 0, so no weight is infinite: its count
    is >= 1 (sqrt >= 1, clipped >= 5), and the LDS window has only non-negative entries with a
    positive centre entry, so the smoothed value is at least centre * count > 0. Bins that hold no
    sample may smooth to 0 (e.g. far from every label), but no sample reads them.
    """
    if reweight not in REWEIGHTS:
        raise ValueError(f"reweight={reweight!r} is not one of {', '.join(REWEIGHTS)}")
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind={label_kind!r} is not one of {', '.join(LABEL_KINDS)}")
    if lds and reweight == "none":
        raise ValueError("lds=True needs reweight='inverse' or 'sqrt_inv' (LDS smooths the re-weighting "
                         "counts); reweight='none' gives every sample weight 1")

    if label_kind == "stsb" and not (isinstance(stsb_num_bins, (int, np.integer)) and stsb_num_bins >= 1):
        raise ValueError(f"stsb_num_bins={stsb_num_bins!r}: the number of STS-B bins must be a positive integer")
    bins, num_bins = _bins_and_num_bins(labels, label_kind, stsb_num_bins)
    num_samples = bins.shape[0]
    if reweight == "none" or num_samples == 0:
        return np.ones(num_samples, dtype=np.float32)

    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    if reweight == "sqrt_inv":
        bin_values = np.sqrt(counts)
    elif label_kind == "age":  # inverse, age labels: clip (empty bins become 5 as well)
        bin_values = np.clip(counts, *INVERSE_CLIP)
    else:  # inverse, STS-B: raw counts
        bin_values = counts

    if lds:
        try:
            window = kernel_window(lds_kernel, lds_ks, lds_sigma, normalise="max")
        except ValueError as err:
            raise ValueError(f"LDS window (lds_kernel={lds_kernel!r}, lds_ks={lds_ks!r}, "
                             f"lds_sigma={lds_sigma!r}): {err}") from err
        if integer_smoothing and reweight == "inverse":
            # the published count array is int64; convolve1d keeps that dtype (truncates towards zero)
            bin_values = convolve1d(bin_values.astype(np.int64), weights=window, mode="constant")
            bin_values = bin_values.astype(np.float64)
        else:
            bin_values = convolve1d(bin_values, weights=window, mode="constant")

    # Invert only the bins that hold samples (see the docstring: they are > 0); empty bins stay 0.
    occupied = counts > 0
    inv_bin_values = np.zeros(num_bins, dtype=np.float64)
    inv_bin_values[occupied] = 1.0 / bin_values[occupied]
    weights = inv_bin_values[bins]
    weights *= num_samples / weights.sum()
    return weights.astype(np.float32)
