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
ks 5 sigma 2, the AgeDB-DIR INV+LDS weights move by up to 3.8 %, STS-B-DIR's by up to 0.4 %).
``sqrt_inv`` values are floats there too, so only ``inverse`` is affected.

Any other labels: pass ``binning=`` a ``ranksim.bins.Binning`` (e.g. ``Binning.uniform(-2, 16,
bin_width=0.5)``); the two rules above are its presets ``Binning.age()`` and ``Binning.stsb()``.

The weights are computed once on the train split and stored with each sample.
"""
import numpy as np
from scipy.ndimage import convolve1d

from ranksim.bins import AGE_NUM_BINS, STSB_NUM_BINS, STSB_RANGE, Binning  # noqa: F401 (AGE_NUM_BINS: public here too)
from ranksim.kernels import kernel_window

REWEIGHTS = ("none", "inverse", "sqrt_inv")
LABEL_KINDS = ("age", "stsb")

# `inverse` re-weighting on age labels clips each bin count to this range before inverting, so that
# nearly empty ages do not get enormous weights (and empty ages still contribute to LDS smoothing).
INVERSE_CLIP = (5, 1000)


def age_bin_of(labels) -> np.ndarray:
    """Age bin of each label: int(label) (truncation, like Python's int) clipped to [0, 120].

    labels: [N] or [N, 1] ages in years (int or float). Returns int64 [N].
    """
    return Binning.age().bin_of(labels)


def stsb_bin_edges() -> np.ndarray:
    """The 51 float32 edges of the 50 STS-B bins, exactly as ``np.histogram`` builds them for float32 data.

    The published code builds the edges from an empty float32 array, so they are float32, and compares
    float32 labels with them. The float32 comparison decides the bin of labels that lie on an edge
    (0.2, 0.4, 3.8, ...: most STS-B scores): in float64 0.3 < 0.30000000000000004 (bin 2), in float32
    0.3 == edge 3 (bin 3). Only the float32 rule reproduces the published shot-group sizes.
    """
    _, edges = np.histogram(np.empty(0, dtype=np.float32), bins=STSB_NUM_BINS, range=STSB_RANGE)
    return edges.astype(np.float32)


def stsb_bin_of(labels) -> np.ndarray:
    """STS-B bin of each similarity score: bin i holds edges[i] <= score < edges[i+1]; score 5.0 -> 49.

    labels: [N] or [N, 1] scores in [0, 5] (compared in float32, see ``stsb_bin_edges``).
    Returns int64 [N] in [0, 49]. Raises ValueError for scores outside [0, 5] or NaN.
    """
    return Binning.stsb().bin_of(labels)


def binning_of(label_kind: str) -> Binning:
    """The preset Binning of a label kind: 'age' -> Binning.age(), 'stsb' -> Binning.stsb()."""
    if label_kind == "age":
        return Binning.age()
    if label_kind == "stsb":
        return Binning.stsb()
    raise ValueError(f"label_kind={label_kind!r} is not one of {', '.join(LABEL_KINDS)}")


def _bins_and_num_bins(labels, label_kind: str, binning=None):
    binning = binning_of(label_kind) if binning is None else binning
    return binning.bin_of(labels), binning.num_bins


def bin_counts(labels, label_kind: str = "age", binning=None) -> np.ndarray:
    """Number of labels in each bin. Returns int64 [121] for 'age', [50] for 'stsb', or
    [binning.num_bins] for a ``Binning`` (which then decides the bins instead of label_kind)."""
    bins, num_bins = _bins_and_num_bins(labels, label_kind, binning)
    return np.bincount(bins, minlength=num_bins).astype(np.int64)


def label_weights(labels, reweight: str = "none", lds: bool = False, lds_kernel: str = "gaussian",
                  lds_ks: int = 5, lds_sigma: float = 2, label_kind: str = "age", binning=None,
                  integer_smoothing: bool = False) -> np.ndarray:
    """Per-sample weights (float32 [N], mean 1) for the train labels ``labels`` ([N] or [N, 1]).

    reweight: 'none' (all ones), 'inverse' (1 / count; counts clipped to [5, 1000] for age labels,
    raw counts for STS-B) or 'sqrt_inv' (1 / sqrt(count)).
    lds: smooth the (transformed) per-bin count vector with the LDS window ``kernel_window(lds_kernel,
    lds_ks, lds_sigma, normalise='max')`` (``scipy.ndimage.convolve1d``, zero padding outside the bin
    range) and use each sample's smoothed bin value instead. Requires reweight != 'none'.
    label_kind: 'age' (121 integer bins) or 'stsb' (50 score bins on [0, 5]).
    binning: a ``ranksim.bins.Binning`` for any other labels; it replaces label_kind's bins, while
    label_kind still picks the 'inverse' rule (age: clipped counts; stsb: raw counts).
    sts-b-dir/train.py passes ``Binning.stsb(--bucket_num)``, as the published code bins with it.
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

    bins, num_bins = _bins_and_num_bins(labels, label_kind, binning)
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
