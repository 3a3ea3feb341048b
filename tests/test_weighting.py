"""Label binning, LDS kernel windows and per-sample re-weighting against independent references.

References: plain-loop implementations of docs/published_behaviour.md §2 written here, hand-computed cases, SciPy, and the
published AgeDB-DIR / STS-B-DIR train labels (counts in tests/fixtures, see make_fixtures.py).
"""
import math

import numpy as np
import pytest
import torch
from published_labels import agedb_labels, stsb_labels
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang

from ranksim.kernels import kernel_window
from ranksim.weighting import (
    AGE_NUM_BINS,
    STSB_NUM_BINS,
    age_bin_of,
    bin_counts,
    label_weights,
    stsb_bin_edges,
    stsb_bin_of,
)

# ---------------------------------------------------------------- kernel windows (ranksim.kernels)

def reflect_gaussian_by_hand(ks, sigma, truncate=4.0):
    """Gaussian smoothing of a unit impulse, written out: truncated normalised Gaussian taps, the
    impulse padded by mirror reflection (d c b a | a b c d | d c b a), plain loops."""
    radius = int(truncate * sigma + 0.5)
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)
    taps = [t / total for t in taps]
    impulse = [0.0] * ks
    impulse[(ks - 1) // 2] = 1.0

    def at(i):  # reflected index into the impulse
        period = 2 * ks
        i %= period
        return impulse[i] if i < ks else impulse[period - 1 - i]

    return np.array([sum(taps[k + radius] * at(i + k) for k in range(-radius, radius + 1)) for i in range(ks)])


@pytest.mark.parametrize("ks,sigma", [(5, 2), (9, 1), (5, 1), (3, 2), (7, 0.5), (1, 1)])
def test_gaussian_window_matches_hand_computation_and_scipy(ks, sigma):
    window = kernel_window("gaussian", ks, sigma)
    hand = reflect_gaussian_by_hand(ks, sigma)
    np.testing.assert_allclose(window, hand / hand.max(), rtol=1e-12, atol=1e-15)
    impulse = np.zeros(ks)
    impulse[ks // 2] = 1
    scipy_ref = gaussian_filter1d(impulse, sigma)
    np.testing.assert_allclose(window, scipy_ref / scipy_ref.max(), rtol=1e-12)


def test_gaussian_window_without_boundary_effects_is_the_plain_gaussian():
    # ks 9, sigma 1: the reflected images of the impulse lie beyond the 4-sigma truncation
    x = np.arange(-4, 5)
    np.testing.assert_allclose(kernel_window("gaussian", 9, 1), np.exp(-x ** 2 / 2), rtol=1e-12)


@pytest.mark.parametrize("ks", [1, 3, 5, 9])
def test_triang_window(ks):
    half = (ks - 1) / 2
    hand = np.array([1 - abs(n - half) / ((ks + 1) / 2) for n in range(ks)])
    np.testing.assert_allclose(kernel_window("triang", ks, sigma=2), hand, rtol=1e-12)
    np.testing.assert_allclose(kernel_window("triang", ks, sigma=2), triang(ks), rtol=1e-12)
    if ks == 5:
        np.testing.assert_allclose(kernel_window("triang", 5, 1), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])


@pytest.mark.parametrize("ks,sigma", [(5, 2), (9, 1), (3, 0.5)])
def test_laplace_window(ks, sigma):
    half = (ks - 1) // 2
    raw = [math.exp(-abs(x) / sigma) / (2 * sigma) for x in range(-half, half + 1)]
    np.testing.assert_allclose(kernel_window("laplace", ks, sigma), np.array(raw) / max(raw), rtol=1e-12)
    np.testing.assert_allclose(kernel_window("laplace", ks, sigma, normalise="sum"),
                               np.array(raw) / sum(raw), rtol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_window_normalisation(kernel):
    peak = kernel_window(kernel, 7, 1.5, normalise="max")
    unit_sum = kernel_window(kernel, 7, 1.5, normalise="sum")
    assert peak.max() == pytest.approx(1.0) and unit_sum.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(unit_sum, peak / peak.sum(), rtol=1e-12)
    np.testing.assert_allclose(peak, peak[::-1], rtol=1e-12)  # symmetric
    assert (peak >= 0).all() and peak[3] > 0


@pytest.mark.parametrize("ks", [4, 0, -3, 2.0])
def test_window_rejects_bad_size(ks):
    with pytest.raises(ValueError, match="ks="):
        kernel_window("gaussian", ks, 1)


def test_window_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel='box'"):
        kernel_window("box", 5, 1)


# ---------------------------------------------------------------- binning

def test_age_bin_of():
    labels = [-3, 0, 0.9, 5.99, 31, 120, 120.5, 121.5, 300]
    np.testing.assert_array_equal(age_bin_of(labels), [0, 0, 0, 5, 31, 120, 120, 120, 120])
    assert age_bin_of(np.array(labels)).dtype == np.int64
    np.testing.assert_array_equal(age_bin_of(torch.tensor([[3.5], [77.0]])), [3, 77])
    with pytest.raises(ValueError, match="labels"):
        age_bin_of([1.0, float("nan")])


def test_stsb_bin_of_by_hand():
    # edges are multiples of 0.1; a score on an edge opens the next bin; 5.0 closes the last bin
    scores = [0.0, 0.05, 0.1, 0.2, 0.3, 0.7, 2.5, 3.8, 4.6, 4.9, 4.95, 5.0]
    np.testing.assert_array_equal(stsb_bin_of(scores), [0, 0, 1, 2, 3, 7, 25, 38, 46, 49, 49, 49])
    np.testing.assert_array_equal(stsb_bin_of(torch.tensor([[0.3], [5.0]])), [3, 49])


def test_stsb_bins_compare_in_float32_like_the_published_code():
    # in float64 0.3 < 0.30000000000000004 = linspace(0, 5, 51)[3] would give bin 2; the published
    # float32 edges give bin 3 (and only this rule reproduces the published shot groups)
    assert np.linspace(0, 5, 51)[3] > 0.3
    assert stsb_bin_edges().dtype == np.float32 and len(stsb_bin_edges()) == STSB_NUM_BINS + 1
    assert stsb_bin_of([0.3])[0] == 3


def test_stsb_bin_of_matches_np_histogram_and_published_rule():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 5, 500), np.round(rng.uniform(0, 5, 500), 1), [0.0, 5.0],
                             stsb_labels("train")]).astype(np.float32)
    bins = stsb_bin_of(scores)
    hist, edges = np.histogram(scores, bins=50, range=(0.0, 5.0))
    np.testing.assert_array_equal(np.bincount(bins, minlength=50), hist)
    # the published per-label rule: index of the first edge greater than the label, minus 1; 5 -> 49
    edges32 = np.histogram(np.array([], dtype=np.float32), bins=50, range=(0.0, 5.0))[1]
    loop = [49 if s == 5.0 else int(np.where(edges32 > s)[0][0]) - 1 for s in scores]
    np.testing.assert_array_equal(bins, loop)


@pytest.mark.parametrize("bad", [-0.1, 5.1, float("nan")])
def test_stsb_bin_of_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="labels"):
        stsb_bin_of([1.0, bad])


def test_bin_counts():
    np.testing.assert_array_equal(bin_counts([0, 2, 2, 130], "age")[:3], [1, 0, 2])
    assert bin_counts([0, 2, 2, 130], "age")[120] == 1 and len(bin_counts([1], "age")) == AGE_NUM_BINS
    counts = bin_counts([0.0, 0.05, 5.0, 4.95], "stsb")
    assert len(counts) == STSB_NUM_BINS and counts[0] == 2 and counts[49] == 2
    with pytest.raises(ValueError, match="label_kind='imdb'"):
        bin_counts([1], "imdb")


# ---------------------------------------------------------------- re-weighting and LDS

def reference_weights(labels, reweight, lds, kernel, ks, sigma, label_kind):
    """docs/published_behaviour.md §2 written with plain Python loops (the LDS convolution too, zero padding)."""
    if label_kind == "age":
        num_bins = 121
        bin_of = [min(120, max(0, int(float(x)))) for x in labels]
    else:
        num_bins = 50
        edges = np.histogram(np.array([], dtype=np.float32), bins=50, range=(0.0, 5.0))[1]
        bin_of = [49 if np.float32(x) == 5 else int(np.where(edges > np.float32(x))[0][0]) - 1 for x in labels]
    value = {b: 0 for b in range(num_bins)}
    for b in bin_of:
        value[b] += 1
    if reweight == "none":
        return np.ones(len(labels))
    if reweight == "sqrt_inv":
        value = {b: math.sqrt(v) for b, v in value.items()}
    elif label_kind == "age":
        value = {b: min(max(v, 5), 1000) for b, v in value.items()}
    if lds:
        window = kernel_window(kernel, ks, sigma, normalise="max")
        half = ks // 2
        smoothed = {}
        for b in range(num_bins):
            total = 0.0
            for k in range(-half, half + 1):
                if 0 <= b + k < num_bins:  # zero outside the bin range
                    total += window[half + k] * value[b + k]
            smoothed[b] = total
        value = smoothed
    raw = [1.0 / value[b] for b in bin_of]
    scale = len(raw) / sum(raw)
    return np.array([scale * w for w in raw])


def synthetic_age_labels():
    rng = np.random.default_rng(1)
    return np.concatenate([rng.normal(35, 10, 300).clip(0, 130), [0, 0.5, 119.9, 121, 140]])


CASES = [("none", False)] + [(rw, lds) for rw in ("inverse", "sqrt_inv") for lds in (False, True)]


@pytest.mark.parametrize("reweight,lds", CASES)
@pytest.mark.parametrize("kernel,ks,sigma", [("gaussian", 5, 2), ("gaussian", 9, 1), ("triang", 7, 1),
                                             ("laplace", 5, 2)])
def test_age_weights_match_plain_loop_reference(reweight, lds, kernel, ks, sigma):
    for labels in (synthetic_age_labels(), agedb_labels("train")):
        weights = label_weights(labels, reweight, lds, kernel, ks, sigma, label_kind="age")
        assert weights.dtype == np.float32 and weights.shape == (len(labels),)
        ref = reference_weights(labels, reweight, lds, kernel, ks, sigma, "age")
        np.testing.assert_allclose(weights, ref, rtol=2e-6)


@pytest.mark.parametrize("reweight,lds", CASES)
def test_stsb_weights_match_plain_loop_reference(reweight, lds):
    labels = stsb_labels("train")
    weights = label_weights(labels, reweight, lds, "gaussian", 5, 2, label_kind="stsb")
    ref = reference_weights(labels, reweight, lds, "gaussian", 5, 2, "stsb")
    np.testing.assert_allclose(weights, ref, rtol=2e-6)


@pytest.mark.parametrize("reweight", ["inverse", "sqrt_inv"])
@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_lds_matches_scipy_convolution(reweight, kernel):
    labels = agedb_labels("train")
    counts = np.bincount(labels.astype(int), minlength=121).astype(float)
    values = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
    smoothed = convolve1d(values, kernel_window(kernel, 9, 1), mode="constant")
    raw = 1 / smoothed[labels.astype(int)]
    np.testing.assert_allclose(label_weights(labels, reweight, True, kernel, 9, 1),
                               raw * len(raw) / raw.sum(), rtol=2e-6)


def test_weights_by_hand():
    # counts: bin 0 -> 2, bin 1 -> 1
    s = 3 / (2 / math.sqrt(2) + 1)
    np.testing.assert_allclose(label_weights([0, 0, 1], "sqrt_inv"), [s / math.sqrt(2)] * 2 + [s], rtol=1e-6)
    # inverse clips both counts to 5 (age): equal weights
    np.testing.assert_allclose(label_weights([0, 0, 1], "inverse"), [1, 1, 1], rtol=1e-6)
    # + LDS triang ks 3 = [0.5, 1, 0.5]; every bin is clipped to 5 (empty ones too); zero padding
    # below bin 0: smoothed bin 0 = 5 + 2.5 = 7.5, bin 1 = 2.5 + 5 + 2.5 = 10
    raw = np.array([1 / 7.5, 1 / 7.5, 1 / 10])
    np.testing.assert_allclose(label_weights([0, 0, 1], "inverse", True, "triang", 3, 1), raw * 3 / raw.sum(),
                               rtol=1e-6)
    # STS-B inverse uses the raw counts (no clip): bin 0 has 3, bin 10 has 1 -> weight ratio 3
    w = label_weights([0.0, 0.0, 0.05, 1.0], "inverse", label_kind="stsb")
    assert w[3] / w[0] == pytest.approx(3.0) and w.sum() == pytest.approx(4.0)


@pytest.mark.parametrize("reweight,lds", CASES)
@pytest.mark.parametrize("kernel", ["gaussian", "triang", "laplace"])
def test_agedb_train_weights_have_mean_one(reweight, lds, kernel):
    labels = agedb_labels("train")
    assert len(labels) == 12208
    weights = label_weights(labels, reweight, lds, kernel, lds_ks=9, lds_sigma=1)
    assert np.isfinite(weights).all() and (weights > 0).all()
    assert weights.mean(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)
    if reweight == "none":
        np.testing.assert_array_equal(weights, np.ones(len(labels), dtype=np.float32))
    else:  # rarer ages weigh more: age 1 (rare) vs age 30 (common)
        assert weights[labels == 1][0] > weights[labels == 30][0]


def test_empty_bins_that_smooth_to_zero_are_harmless():
    # labels only at the two ends: the middle bins smooth to exactly 0, but no sample reads them
    with np.errstate(all="raise"):
        weights = label_weights([0, 0, 120], "sqrt_inv", lds=True, lds_kernel="gaussian", lds_ks=5, lds_sigma=2)
    assert np.isfinite(weights).all() and weights.sum() == pytest.approx(3.0)
    assert label_weights([], "inverse", lds=True).shape == (0,)


def test_weights_accept_tensors_of_shape_n_by_1():
    labels = synthetic_age_labels()
    np.testing.assert_array_equal(label_weights(torch.tensor(labels).reshape(-1, 1), "sqrt_inv", True),
                                  label_weights(labels, "sqrt_inv", True))


def test_weights_errors_name_the_argument():
    with pytest.raises(ValueError, match="lds=True needs reweight"):
        label_weights([1, 2], "none", lds=True)
    with pytest.raises(ValueError, match="reweight='inv'"):
        label_weights([1, 2], "inv")
    with pytest.raises(ValueError, match="label_kind='sts'"):
        label_weights([1, 2], "inverse", label_kind="sts")
    with pytest.raises(ValueError, match="lds_ks=4"):
        label_weights([1, 2], "inverse", lds=True, lds_ks=4)
    with pytest.raises(ValueError, match="lds_kernel='box'"):
        label_weights([1, 2], "inverse", lds=True, lds_kernel="box")
    with pytest.raises(ValueError, match="labels"):
        label_weights([0.5, 7.0], "inverse", label_kind="stsb")
