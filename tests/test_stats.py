"""ranksim.stats against numbers computed here by hand and with scipy."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ranksim.stats import differs_from, paired_difference, summarize


def test_summary_mean_and_sample_std():
    values = [4.0, 5.0, 7.0]
    s = summarize(values)
    assert s.n == 3
    assert s.mean == pytest.approx(16.0 / 3.0)
    # sample variance by hand: sum of squared deviations / (n - 1)
    m = 16.0 / 3.0
    assert s.std == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in values) / 2.0))
    assert s.standard_error == pytest.approx(s.std / math.sqrt(3))
    assert s.format(2) == f"5.33 ± {s.std:.2f} (n=3)"


def test_single_run_has_no_error_bar():
    s = summarize([4.38])
    assert s.n == 1 and math.isnan(s.std)
    assert s.format(2) == "4.38 (n=1)"
    assert not differs_from(s, 100.0)  # one run never "differs" from a published number


def test_differs_from_uses_two_standard_errors():
    s = summarize([1.0, 2.0, 3.0])  # mean 2, std 1, se 1/sqrt(3) ~ 0.577
    se = 1.0 / math.sqrt(3)
    assert not differs_from(s, 2.0 + 1.99 * se)
    assert differs_from(s, 2.0 + 2.01 * se)
    assert differs_from(s, 2.0 - 2.01 * se)
    constant = summarize([3.0, 3.0])
    assert not differs_from(constant, 3.0) and differs_from(constant, 3.01)


def test_paired_difference_matches_scipy_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 0.5, size=5)
    b = a + rng.normal(0.3, 0.1, size=5)
    d = paired_difference(a, b)
    diff = a - b
    low, high = scipy_stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=scipy_stats.sem(diff))
    assert d.mean == pytest.approx(diff.mean())
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert d.excludes_zero  # b is consistently ~0.3 larger
    # the paired t statistic agrees with scipy's paired test: the interval excludes 0 iff p < 0.05
    assert (scipy_stats.ttest_rel(a, b).pvalue < 0.05) == d.excludes_zero


def test_paired_difference_within_noise_and_single_pair():
    d = paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])  # differences -1, 1, 0
    assert d.mean == pytest.approx(0.0) and d.low < 0.0 < d.high and not d.excludes_zero
    one = paired_difference([1.0], [0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and not one.excludes_zero
    assert one.format(2) == "+0.50 (n=1, no interval)"


@pytest.mark.parametrize("call, message", [
    (lambda: summarize([]), "non-empty"),
    (lambda: summarize([1.0, float("nan")]), "finite"),
    (lambda: paired_difference([1.0, 2.0], [1.0]), "as many values"),
    (lambda: paired_difference([1.0, 2.0], [1.0, 2.0], confidence=95), "confidence"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
