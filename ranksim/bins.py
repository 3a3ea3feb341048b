"""Label bins for imbalanced regression: one object for LDS / re-weighting, FDS buckets and shot groups.

A ``Binning`` maps real labels to bins 0 .. num_bins - 1 through sorted edges: bin i holds
edges[i] <= label < edges[i + 1], the last bin also holds labels equal to the last edge (the
``np.histogram`` rule). Labels outside [edges[0], edges[-1]] raise a ValueError naming the value
(``out_of_range='error'``, the default) or join the first / last bin (``'clip'``).

    Binning.uniform(-2, 16, bin_width=0.5)        # 36 bins for labels in [-2, 16]
    Binning.uniform(0, 1e6, num_bins=100)         # dollars
    Binning([0, 18, 30, 50, 120])                 # any edges
    Binning.age()                                 # the age datasets' rule: int(label) in [0, 120]
    Binning.stsb()                                # STS-B-DIR: 50 float32 bins on [0, 5]

``dtype`` is the precision in which labels and edges are compared. The STS-B preset compares in
float32 as the published code does: most STS-B scores lie on an edge (0.2, 0.4, 3.8, ...), and
only the float32 comparison (0.3 == edge 3 in float32, 0.3 < edge 3 in float64) gives the
published shot-group sizes.
"""
from typing import Optional, Sequence

import numpy as np
import torch

OUT_OF_RANGE = ("error", "clip")
AGE_NUM_BINS = 121  # ages 0 .. 120, one bin per year
STSB_NUM_BINS = 50
STSB_RANGE = (0.0, 5.0)


def as_label_array(labels, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D numpy array; accepts lists, numpy arrays and torch tensors of shape [N] or [N, 1]."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape [N] or [N, 1], got {tuple(arr.shape)}")
    return arr


class Binning:
    """Bins of real labels from sorted edges (see the module docstring).

    edges: at least 2 strictly increasing finite numbers (num_bins = len(edges) - 1);
    out_of_range: 'error' (default) or 'clip'; dtype: 'float64' (default) or 'float32', the
    precision of the comparisons. Constructors: ``uniform``, ``age``, ``stsb``.
    """

    def __init__(self, edges: Sequence[float], out_of_range: str = "error", dtype: str = "float64"):
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype={dtype!r} is not one of float64, float32")
        if out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"out_of_range={out_of_range!r} is not one of {', '.join(OUT_OF_RANGE)}")
        edges = np.asarray(edges, dtype=dtype)
        if edges.ndim != 1 or len(edges) < 2:
            raise ValueError(f"edges: expected at least 2 bin edges, got {edges.tolist()!r}")
        if not np.all(np.isfinite(edges)):
            raise ValueError(f"edges: must be finite numbers, got {edges.tolist()!r}")
        steps = np.diff(edges)
        if not np.all(steps > 0):
            i = int(np.argmax(steps <= 0))
            raise ValueError(f"edges: must increase strictly; edge {i + 1} ({edges[i + 1].item()!r}) is not above "
                             f"edge {i} ({edges[i].item()!r}) (an empty bin range)")
        self.edges = edges
        self.out_of_range = out_of_range
        self.dtype = dtype
        self._edges_on = {}  # device -> edges tensor, so a training step copies them only once

    @classmethod
    def uniform(cls, low: float, high: float, num_bins: Optional[int] = None, bin_width: Optional[float] = None,
                out_of_range: str = "error", dtype: str = "float64") -> "Binning":
        """Equal bins on [low, high]: give num_bins, or bin_width (the last bin is cut at ``high``)."""
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"range [{low!r}, {high!r}]: needs finite low < high (an empty range has no bins)")
        if (num_bins is None) == (bin_width is None):
            raise ValueError("Binning.uniform: give exactly one of num_bins and bin_width")
        if num_bins is not None:
            if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
                raise ValueError(f"num_bins={num_bins!r}: must be an integer >= 1")
            # np.histogram's own edges (linspace in the comparison dtype), so that the bins are its bins.
            edges = np.linspace(low, high, int(num_bins) + 1, dtype=dtype)
        else:
            if not (np.isfinite(bin_width) and bin_width > 0):
                raise ValueError(f"bin_width={bin_width!r}: must be a finite number > 0")
            count = int(np.ceil((high - low) / bin_width - 1e-9))
            edges = np.minimum(low + bin_width * np.arange(count + 1, dtype=np.float64), high)
            edges[-1] = high
        return cls(edges, out_of_range=out_of_range, dtype=dtype)

    @classmethod
    def age(cls) -> "Binning":
        """The age datasets' bins (AgeDB-DIR, IMDB-WIKI-DIR): int(label) clipped to [0, 120], 121 bins."""
        return cls(np.arange(AGE_NUM_BINS + 1), out_of_range="clip")

    @classmethod
    def stsb(cls, num_bins: int = STSB_NUM_BINS) -> "Binning":
        """STS-B-DIR's bins: ``num_bins`` (50) equal bins on [0, 5] with float32 edges and comparisons;
        5.0 is in the last bin (49)."""
        return cls.uniform(*STSB_RANGE, num_bins=num_bins, dtype="float32")

    @property
    def num_bins(self) -> int:
        return len(self.edges) - 1

    def __repr__(self) -> str:
        low, high = self.edges[0].item(), self.edges[-1].item()
        return f"Binning({self.num_bins} bins on [{low:g}, {high:g}], out_of_range={self.out_of_range!r})"

    def bin_of(self, labels, name: str = "labels") -> np.ndarray:
        """Bin of each label: int64 [N]. labels: [N] or [N, 1] (list, numpy or torch).

        ValueError naming the value for NaN / inf, and for labels outside the edges unless
        out_of_range='clip'.
        """
        arr = as_label_array(labels, name).astype(self.dtype)
        if not np.all(np.isfinite(arr)):
            bad = arr[~np.isfinite(arr)]
            raise ValueError(f"{name}: labels must be finite numbers; found {bad[0].item()!r} "
                             f"({len(bad)} non-finite value(s))")
        low, high = self.edges[0], self.edges[-1]
        if self.out_of_range == "error":
            outside = (arr < low) | (arr > high)
            if outside.any():
                raise ValueError(f"{name}: labels must lie in [{low.item():g}, {high.item():g}] (the bins' range); "
                                 f"found {arr[outside][0].item()!r} ({int(outside.sum())} value(s) out of range); "
                                 "widen the bins or pass out_of_range='clip'")
        # index of the first edge strictly above the label, minus one; the last edge itself folds
        # into the last bin (np.histogram's last bin is closed on the right).
        bins = np.searchsorted(self.edges, arr, side="right") - 1
        return np.clip(bins, 0, self.num_bins - 1).astype(np.int64)

    def counts(self, labels, name: str = "labels") -> np.ndarray:
        """Number of labels in each bin: int64 [num_bins]."""
        return np.bincount(self.bin_of(labels, name), minlength=self.num_bins).astype(np.int64)

    def bin_of_tensor(self, labels: torch.Tensor) -> torch.Tensor:
        """``bin_of`` for a tensor [N] or [N, 1] on any device, without a host-device sync: int64 [N]
        on the labels' device. Labels that ``bin_of`` would refuse (NaN, and outside the range unless
        out_of_range='clip') get -1 instead of an error."""
        x = labels.reshape(-1).to(getattr(torch, self.dtype))
        if x.device not in self._edges_on:
            self._edges_on[x.device] = torch.from_numpy(self.edges).to(x.device)
        edges = self._edges_on[x.device]
        bins = (torch.bucketize(x, edges, right=True) - 1).clamp(0, self.num_bins - 1)
        valid = ~torch.isnan(x)
        if self.out_of_range == "error":
            valid = (x >= edges[0]) & (x <= edges[-1])  # False for NaN too
        return torch.where(valid, bins, torch.full_like(bins, -1))
