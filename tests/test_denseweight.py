"""DenseWeight (ranksim.denseweight) against a loop Gaussian KDE and the reference code's AgeDB-DIR values.

The check values were produced by the method's reference code (v0.1.2 with KDEpy's FFTKDE) on the
12,208 AgeDB-DIR train ages, whose per-age counts are tests/fixtures/agedb_labels.json. They are given
to 3 decimals, and the reference bins the labels onto its grid in its own way, so they are matched
within 2e-3 absolute (rounding 5e-4 plus the binning; here the values differ by at most 8e-4).
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ranksim import DenseWeight, dense_weights
from ranksim.denseweight import binned_gaussian_kde, gaussian_support, silverman_bandwidth

FIXTURE = Path(__file__).parent / "fixtures" / "agedb_labels.json"
CHECK_TOLERANCE = 2e-3


def agedb_train_ages() -> np.ndarray:
    counts = json.loads(FIXTURE.read_text())["counts"]["train"]
    return np.repeat(np.arange(len(counts)), counts).astype(np.float64)


@pytest.fixture(scope="module")
def agedb():
    ages = agedb_train_ages()
    return ages, DenseWeight(alpha=1.0).fit(ages), DenseWeight(alpha=0.5).fit(ages)


def loop_kde(labels, points, bandwidth):
    """The exact Gaussian KDE, one grid point and one label at a time."""
    norm = bandwidth * math.sqrt(2 * math.pi) * len(labels)
    return np.array([sum(math.exp(-0.5 * ((g - y) / bandwidth) ** 2) for y in labels) / norm for g in points])


def test_agedb_bandwidth_and_grid(agedb):
    ages, fitted, _ = agedb
    assert len(ages) == 12208
    assert fitted.bandwidth_ == pytest.approx(2.547, abs=5e-4)
    assert fitted.grid_[0] == pytest.approx(-8.77, abs=5e-3) and fitted.grid_[-1] == pytest.approx(110.77, abs=5e-3)
    assert len(fitted.grid_) == 4096


def test_agedb_check_values_alpha_1(agedb):
    ages, fitted, _ = agedb
    weights = fitted(ages)
    assert weights.mean() == pytest.approx(1.0, abs=1e-6)
    assert weights.max() == pytest.approx(3.52, abs=5e-3)
    assert weights.min() == pytest.approx(0.0021, abs=5e-4)  # 1 - p' near the peak: the most binning-sensitive
    by_age = fitted(np.array([1, 30, 40, 50, 70, 90]))
    np.testing.assert_allclose(by_age, [3.518, 0.303, 0.194, 0.859, 2.194, 3.446], atol=CHECK_TOLERANCE)


def test_agedb_check_values_alpha_half(agedb):
    ages, _, fitted = agedb
    weights = fitted(ages)
    assert (weights.min(), weights.max()) == pytest.approx((0.780, 1.556), abs=CHECK_TOLERANCE)
    np.testing.assert_allclose(fitted(np.array([40, 90])), [0.822, 1.540], atol=CHECK_TOLERANCE)


def test_binned_kde_is_close_to_the_exact_sum():
    labels = np.random.default_rng(0).gamma(3.0, 2.0, size=300)
    grid = np.linspace(labels.min() - 3, labels.max() + 3, 512)
    exact = loop_kde(labels, grid, 0.8)
    binned = binned_gaussian_kde(labels, grid, 0.8)
    assert np.abs(binned - exact).max() < 1e-3 * exact.max()  # binning error ~ (grid step / h)^2


def test_weights_follow_the_formula_on_the_grid():
    labels = np.array([0.0, 0.5, 1.0, 1.0, 1.2, 2.0, 2.1, 4.0])
    fitted = DenseWeight(alpha=0.7, bandwidth=0.5, grid_points=64).fit(labels)
    h = 0.5
    margin = max(0.05 * 4.0, h * math.sqrt(2 * math.log(1 / (1e-4 * h * math.sqrt(2 * math.pi)))))
    grid = np.linspace(-margin, 4.0 + margin, 64)
    np.testing.assert_allclose(fitted.grid_, grid)
    density = loop_kde(labels, grid, h)
    scaled = (density - density.min()) / (density.max() - density.min())
    # largest grid point <= label, searched by hand
    lookup = [scaled[max(k for k in range(64) if grid[k] <= y)] for y in labels]
    raw = np.maximum(1 - 0.7 * np.array(lookup), 1e-6)
    np.testing.assert_allclose(fitted(labels), raw / raw.mean(), rtol=2e-2)  # binned vs exact KDE


def test_alpha_zero_gives_ones_and_labels_outside_the_grid_take_the_end_points():
    labels = np.random.default_rng(1).normal(size=200)
    np.testing.assert_array_equal(dense_weights(labels, alpha=0.0), np.ones(200, dtype=np.float32))
    fitted = DenseWeight().fit(labels)
    assert fitted(np.array([-1e9, 1e9])).tolist() == fitted(fitted.grid_[[0, -1]]).tolist()


def test_large_alpha_floors_the_common_labels_at_eps():
    labels = np.repeat([1.0, 2.0, 3.0, 10.0], [50, 50, 50, 1])
    fitted = DenseWeight(alpha=5.0, eps=1e-6).fit(labels)
    weights = fitted(labels)
    assert weights[:150].max() == pytest.approx(1e-6 / fitted.train_mean_, rel=1e-4)
    assert weights[-1] > 1


def test_column_labels_equal_flat_labels():
    labels = np.random.default_rng(2).exponential(size=400)
    np.testing.assert_array_equal(dense_weights(labels[:, None]), dense_weights(labels))


def test_silverman_rule_and_support():
    labels = np.array([1.0, 2.0, 4.0, 8.0])
    assert silverman_bandwidth(labels) == pytest.approx(1.06 * np.std(labels) * 4 ** -0.2)
    h = 0.3
    support = gaussian_support(h)
    assert math.exp(-0.5 * (support / h) ** 2) / (h * math.sqrt(2 * math.pi)) == pytest.approx(1e-4)
    assert gaussian_support(1e5) == 0.0  # the kernel density never reaches 1e-4


@pytest.mark.parametrize("make, message", [
    (lambda: DenseWeight(alpha=-1.0), "alpha=-1.0: must be a finite number >= 0"),
    (lambda: DenseWeight(bandwidth=0.0), "bandwidth=0.0: must be > 0"),
    (lambda: DenseWeight(eps=0.0), "eps=0.0: must be > 0"),
    (lambda: DenseWeight(grid_points=1), "grid_points=1"),
    (lambda: DenseWeight().fit(np.ones(5)), "no spread; pass bandwidth="),
    (lambda: DenseWeight().fit(np.array([1.0, np.nan])), "NaN or inf"),
    (lambda: DenseWeight().fit(np.zeros((3, 2))), r"expected \[N\] or \[N, 1\]"),
    (lambda: DenseWeight()(np.ones(3)), "call fit"),
])
def test_bad_input_is_refused(make, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        make()
