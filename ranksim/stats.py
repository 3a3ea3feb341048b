"""Statistics over repeated runs (seeds): mean ± sample std, standard errors, paired differences.

A single training run of a DIR method is one draw from a noisy process: few-shot errors in
particular move by more than most method differences when only the seed changes. Every number
that `reproduce.py table` and the demo print is therefore a summary over seeds, built here.

All functions take plain sequences of floats (one value per seed) and return plain Python floats
(JSON-ready). Undefined quantities (the std of one value, an interval from one pair) are NaN.
"""
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1) and count of one metric over n runs."""

    mean: float
    std: float  # NaN when n == 1
    n: int

    @property
    def standard_error(self) -> float:
        """std / sqrt(n): the standard error of the mean (NaN when n == 1)."""
        return self.std / math.sqrt(self.n)

    def format(self, decimals: int = 2) -> str:
        """'4.38 ± 0.12 (n=3)', or '4.38 (n=1)' for a single run (no ± from one value)."""
        if self.n < 2:
            return f"{self.mean:.{decimals}f} (n=1)"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f} (n={self.n})"


def _values(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"{name}: expected a non-empty list of numbers, got {list(values)!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: values must be finite numbers, got {arr.tolist()}")
    return arr


def summarize(values: Sequence[float]) -> Summary:
    """Summary of one metric over runs (e.g. the MAE of one row, one value per seed)."""
    arr = _values(values, "values")
    std = float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan
    return Summary(mean=float(np.mean(arr)), std=std, n=len(arr))


def differs_from(summary: Summary, reference: float, standard_errors: float = 2.0) -> bool:
    """True when ``reference`` (e.g. a published number) lies more than ``standard_errors``
    standard errors from the mean. Never True for n == 1: one run has no error bar."""
    if summary.n < 2:
        return False
    if summary.std == 0.0:
        return reference != summary.mean
    return abs(summary.mean - reference) > standard_errors * summary.standard_error


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a - b over paired runs (same seeds) with a Student-t confidence interval."""

    mean: float
    low: float  # NaN when n == 1
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0 (a difference the seeds support)."""
        return self.n > 1 and (self.low > 0.0 or self.high < 0.0)

    def format(self, decimals: int = 2) -> str:
        """'-0.31 [-0.52, -0.10] (95 % CI, n=3)', or '-0.31 (n=1, no interval)'."""
        if self.n < 2:
            return f"{self.mean:+.{decimals}f} (n=1, no interval)"
        return (f"{self.mean:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}] "
                f"({self.confidence:.0%} CI, n={self.n})")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Mean difference a_i - b_i over n paired runs (run i of method A and of method B share seed i)
    and its two-sided Student-t interval: mean ± t_{(1+confidence)/2, n-1} * std(d, ddof=1) / sqrt(n).

    Pairing removes the part of the seed noise the two methods share (the same data order and
    initialisation), so it resolves smaller differences than comparing two unpaired means.
    """
    a_arr, b_arr = _values(a, "a"), _values(b, "b")
    if len(a_arr) != len(b_arr):
        raise ValueError(f"paired runs need as many values of a as of b, got {len(a_arr)} and {len(b_arr)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = a_arr - b_arr
    mean, n = float(np.mean(diff)), len(diff)
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, confidence)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1) * np.std(diff, ddof=1) / math.sqrt(n))
    return PairedDifference(mean, mean - half, mean + half, n, confidence)
