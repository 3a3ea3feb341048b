"""Smoothing windows shared by LDS (label smoothing) and FDS (feature smoothing).

Both methods smooth along the label axis with the same three window shapes; they differ only
in the normalisation: LDS scales the window so its maximum is 1, FDS so it sums to 1.
"""
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal.windows import triang

KERNELS = ("gaussian", "triang", "laplace")


def kernel_window(kernel: str, ks: int, sigma: float, normalise: str = "max") -> np.ndarray:
    """Return a 1-D smoothing window of length ``ks`` (float64 array).

    kernel: 'gaussian' | 'triang' | 'laplace'; ks: odd window size; sigma: width (unused by
    'triang'); normalise: 'max' (LDS: peak is 1) or 'sum' (FDS: weights sum to 1).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
    if not isinstance(ks, (int, np.integer)) or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks={ks!r}: the kernel size must be a positive odd integer (e.g. 5 or 9)")
    if kernel != "triang" and not sigma > 0:
        raise ValueError(f"sigma={sigma!r}: the kernel width must be > 0")
    if normalise not in ("max", "sum"):
        raise ValueError(f"normalise={normalise!r} must be 'max' (LDS) or 'sum' (FDS)")

    half = (ks - 1) // 2
    if kernel == "gaussian":
        impulse = np.zeros(ks)
        impulse[half] = 1.0
        window = gaussian_filter1d(impulse, sigma=sigma)
    elif kernel == "triang":
        window = triang(ks)
    else:
        x = np.arange(-half, half + 1, dtype=np.float64)
        window = np.exp(-np.abs(x) / sigma) / (2.0 * sigma)

    scale = window.max() if normalise == "max" else window.sum()
    return window / scale
