"""DenseWeight (Steininger, Kobs, Davidson, Krause and Hotho, Machine Learning 110, 2021, "Density-based
weighting for imbalanced regression"): per-sample loss weights from a kernel density estimate of the
train labels. DenseLoss is the regression loss weighted by them; here they are one more kind of
per-sample weight next to SQINV/INV/LDS (``ranksim.weighting``), mean 1 over the train set.

Written from the method's formulas; no code is taken from the authors' packages (GPL-3.0). Fit once on
the N train labels y (1-D):

* bandwidth h = 1.06 * std(y) * N^(-1/5) (Silverman's rule; population std, ddof 0) unless given;
* grid: ``grid_points`` (4,096) equally spaced points over [min y - b, max y + b] with
  b = max(0.05 * (max y - min y), s), s the Gaussian kernel's practical support: the distance at which
  the kernel density (1/h) phi(x/h) falls to 1e-4 (0 if it never reaches 1e-4);
* density p(g) of a Gaussian KDE at each grid point g; the labels are first binned linearly onto the
  grid (each label's mass split between its two neighbouring grid points), as the reference's FFT-based
  KDE does, then convolved with the kernel: O(N + G log G), and within ~1e-4 of the exact sum for the
  AgeDB ages (tests/test_denseweight.py);
* min-max scaling over the GRID: p'(g) = (p(g) - min p) / (max p - min p);
* a label's p' is that of the largest grid point <= y (no interpolation; labels outside the grid take
  the end point);
* weight r(y) = max(1 - alpha * p'(y), eps), and w(y) = r(y) / mean_train r(y_i): mean 1 over the train
  set; any other label (e.g. a test label) is divided by the same stored train mean.

alpha = 0 gives all weights 1; a larger alpha weights rare labels more (for alpha > 1, every label with
p' >= 1 / alpha sits at the eps floor). The unit of the labels matters a little: the support s is
where the density reaches the absolute level 1e-4, so rescaling the labels moves the grid's margin.
"""
import math
from typing import Optional

import numpy as np
from scipy.signal import fftconvolve

__all__ = ["DenseWeight", "dense_weights", "silverman_bandwidth"]

KERNEL_SUPPORT_LEVEL = 1e-4  # the kernel density value that bounds its practical support
EDGE_FRACTION = 0.05  # the grid reaches at least this fraction of the label range past each end


def _as_labels(labels, name: str = "labels") -> np.ndarray:
    """float64 [N] from [N] or [N, 1]; ValueError for other shapes, no labels, or NaN/inf."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name}: expected [N] or [N, 1] scalar labels, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name}: NaN or inf among the labels")
    return y


def silverman_bandwidth(labels) -> float:
    """1.06 * std(labels) * N^(-1/5) (population std). ValueError when it is 0 (fewer than 2 distinct labels)."""
    y = _as_labels(labels)
    bandwidth = 1.06 * float(y.std()) * len(y) ** -0.2 if len(y) else 0.0
    if not bandwidth > 0:
        raise ValueError(f"Silverman's bandwidth is 0: the {len(y)} labels have no spread; pass bandwidth= "
                         "explicitly")
    return bandwidth


def gaussian_support(bandwidth: float) -> float:
    """Distance at which the Gaussian kernel density of width ``bandwidth`` falls to 1e-4 (0 if never)."""
    peak_ratio = 1.0 / (KERNEL_SUPPORT_LEVEL * bandwidth * math.sqrt(2 * math.pi))  # peak density / 1e-4
    return bandwidth * math.sqrt(2 * math.log(peak_ratio)) if peak_ratio > 1 else 0.0


def binned_gaussian_kde(labels: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian KDE [G] of ``labels`` [N] (all inside ``grid``, equally spaced [G]) at the grid points,
    after linear binning of the labels onto the grid; integrates to ~1 (density per label unit)."""
    step = grid[1] - grid[0]
    position = np.clip((labels - grid[0]) / step, 0, len(grid) - 1)
    left = np.minimum(np.floor(position).astype(np.int64), len(grid) - 2)
    right_share = position - left
    mass = (np.bincount(left, weights=1 - right_share, minlength=len(grid))
            + np.bincount(left + 1, weights=right_share, minlength=len(grid)))
    offsets = np.arange(-(len(grid) - 1), len(grid)) * step  # every grid distance: no truncation
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (bandwidth * math.sqrt(2 * math.pi))
    density = fftconvolve(mass, kernel, mode="valid") / len(labels)
    return np.maximum(density, 0.0)  # FFT round-off can leave -1e-20 far from the data


class DenseWeight:
    """DenseWeight fitted on train labels (module docstring)::

        dw = DenseWeight(alpha=1.0).fit(train_labels)     # train_labels [N] or [N, 1]
        train_weights = dw(train_labels)                   # float32 [N], mean 1
        batch_weights = dw(batch_labels)                   # same lookup and train mean

    alpha >= 0: strength; bandwidth: the KDE's h in label units (None: Silverman); eps > 0: floor of the
    raw weight; grid_points >= 2. After fit: ``bandwidth_``, ``grid_`` [G], ``scaled_density_`` [G]
    (p'), ``train_mean_`` (mean raw weight of the train labels).
    """

    def __init__(self, alpha: float = 1.0, bandwidth: Optional[float] = None, eps: float = 1e-6,
                 grid_points: int = 4096):
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha={alpha!r}: must be a finite number >= 0 (0: all weights 1)")
        if bandwidth is not None and not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise ValueError(f"bandwidth={bandwidth!r}: must be > 0 (None: Silverman's rule)")
        if not eps > 0:
            raise ValueError(f"eps={eps!r}: must be > 0")
        if int(grid_points) != grid_points or grid_points < 2:
            raise ValueError(f"grid_points={grid_points!r}: must be an integer >= 2")
        self.alpha, self.bandwidth, self.eps, self.grid_points = alpha, bandwidth, eps, int(grid_points)

    def fit(self, train_labels) -> "DenseWeight":
        """Bandwidth, grid, scaled grid densities and the train mean of the raw weights; returns self."""
        y = _as_labels(train_labels, "train_labels")
        if len(y) == 0:
            raise ValueError("train_labels: empty; DenseWeight fits a density to the train labels")
        self.bandwidth_ = silverman_bandwidth(y) if self.bandwidth is None else float(self.bandwidth)
        low, high = float(y.min()), float(y.max())
        margin = max(EDGE_FRACTION * (high - low), gaussian_support(self.bandwidth_))
        if not margin > 0:
            raise ValueError(f"bandwidth {self.bandwidth_:g} is so wide that its kernel density never reaches "
                             f"{KERNEL_SUPPORT_LEVEL:g}, and all labels are equal: no grid; pass a smaller bandwidth")
        self.grid_ = np.linspace(low - margin, high + margin, self.grid_points)
        density = binned_gaussian_kde(y, self.grid_, self.bandwidth_)
        spread = density.max() - density.min()
        self.scaled_density_ = (density - density.min()) / spread if spread > 0 else np.zeros_like(density)
        self.train_mean_ = float(self._raw_weights(y).mean())
        return self

    def scaled_density(self, labels) -> np.ndarray:
        """p' [N] of ``labels``: that of the largest grid point <= each label (end points outside)."""
        self._check_fitted()
        y = _as_labels(labels)
        index = np.clip(np.searchsorted(self.grid_, y, side="right") - 1, 0, self.grid_points - 1)
        return self.scaled_density_[index]

    def _raw_weights(self, y: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - self.alpha * self.scaled_density(y), self.eps)

    def __call__(self, labels) -> np.ndarray:
        """Weights float32 [N] of ``labels`` ([N] or [N, 1]); mean 1 over the train labels."""
        self._check_fitted()
        return (self._raw_weights(_as_labels(labels)) / self.train_mean_).astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "grid_"):
            raise RuntimeError("DenseWeight: call fit(train_labels) first")


def dense_weights(train_labels, alpha: float = 1.0, bandwidth: Optional[float] = None,
                  eps: float = 1e-6) -> np.ndarray:
    """DenseWeight's weights (float32 [N], mean 1) of the train labels it is fitted on ([N] or [N, 1])."""
    return DenseWeight(alpha=alpha, bandwidth=bandwidth, eps=eps).fit(train_labels)(train_labels)
