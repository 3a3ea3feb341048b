"""Balanced MSE (Ren et al., CVPR 2022, "Balanced MSE for Imbalanced Visual Regression").

The regression loss is replaced by the negative log-likelihood of a prediction under a *balanced*
(uniform-label) posterior: the plain Gaussian likelihood of the target minus the log of the marginal
over the train label distribution. Three estimates of that marginal:

  BMC (batch-based Monte-Carlo): the labels of the batch, ``bmc_loss``;
  BNI (bin-based numerical integration): a histogram of the train labels, ``bni_loss``;
  GAI (GMM-based analytical integration): a 1-D Gaussian mixture fitted to the train labels,
      ``gai_loss`` (fit with :func:`fit_gaussian_mixture`, once, before training).

noise_var = sigma^2 is the variance of the Gaussian noise, a learnable scalar (see
:class:`BalancedMSELoss`). Every variant multiplies its loss by ``2 * sigma^2`` with sigma^2 detached,
so the loss keeps the scale of an MSE while sigma is learned through the likelihood. BNI and GAI can
be negative: they are log-likelihood ratios, not squared errors.

Per-sample weights (SQINV/INV/LDS) are not part of the method (it balances through the marginal) and
are not taken.
"""
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import convolve1d
from scipy.special import logsumexp

from ranksim.kernels import kernel_window

__all__ = [
    "BALANCED_MSE_VARIANTS", "BalancedMSELoss", "GaussianMixture1D", "balanced_mae", "bmc_loss", "bni_loss",
    "fit_gaussian_mixture", "gai_loss", "label_histogram",
]

BALANCED_MSE_VARIANTS = ("bmc", "bni", "gai")


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: expected the same shape "
                         "[B, d] (d = 1 for scalar labels)")


def _scalar_noise_var(noise_var: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(noise_var) or noise_var.dim() != 0:
        raise ValueError("noise_var: expected a 0-d tensor (sigma^2)")
    return noise_var


def bmc_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """Batch-based Monte-Carlo Balanced MSE.

    pred, target: [B, d]; noise_var: 0-d tensor. logits_ij = -||p_i - y_j||^2 / (2 noise_var), and the
    loss is the cross-entropy of row i against class i (mean over rows) times 2 * noise_var (detached).
    Raises ValueError for B < 2: with one sample the loss is identically 0 and nothing is learned.
    Cost: O(B^2 d).
    """
    _check_pair(pred, target)
    noise_var = _scalar_noise_var(noise_var)
    if pred.shape[0] < 2:
        raise ValueError("bmc_loss: needs a batch of at least 2 samples (with one the loss is identically 0)")
    squared = (pred.unsqueeze(1) - target.unsqueeze(0)).pow(2).sum(-1)  # [B, B]
    logits = -squared / (2 * noise_var)
    labels = torch.arange(pred.shape[0], device=pred.device)
    return F.cross_entropy(logits, labels) * (2 * noise_var.detach())


def bni_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor, bin_centers: torch.Tensor,
             bin_weights: torch.Tensor) -> torch.Tensor:
    """Bin-based numerical-integration Balanced MSE (scalar labels).

    pred, target: [B, 1]; noise_var: 0-d tensor; bin_centers [K]: label bin centres c_k; bin_weights
    [K]: non-negative bin masses (counts or probabilities; normalised here to q_k). Per sample:
    (p - y)^2 / (2 s) + logsumexp_k(-(p - c_k)^2 / (2 s) + log q_k), s = noise_var; the loss is the
    batch mean times 2 s (detached). No 0.5 log s term, so it can be negative.
    """
    _check_pair(pred, target)
    noise_var = _scalar_noise_var(noise_var)
    log_prior = torch.log(bin_weights) - torch.log(bin_weights.sum())
    fit = (pred - target).pow(2) / (2 * noise_var)  # [B, 1]
    balance = torch.logsumexp(-(pred - bin_centers.unsqueeze(0)).pow(2) / (2 * noise_var) + log_prior, dim=1)
    return (fit.squeeze(1) + balance).mean() * (2 * noise_var.detach())


def gai_loss(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor, gmm_weights: torch.Tensor,
             gmm_means: torch.Tensor, gmm_vars: torch.Tensor) -> torch.Tensor:
    """GMM-based analytical-integration Balanced MSE (scalar labels).

    pred, target: [B, 1]; noise_var: 0-d tensor; gmm_weights, gmm_means, gmm_vars [K]: the mixture
    pi_k, mu_k, v_k of the train labels. With s_k = v_k + noise_var, per sample:
    (p - y)^2 / (2 noise_var) + 0.5 log noise_var + logsumexp_k(-0.5 log s_k - (p - mu_k)^2 / (2 s_k)
    + log pi_k); the loss is the batch mean times 2 noise_var (detached).
    """
    _check_pair(pred, target)
    noise_var = _scalar_noise_var(noise_var)
    fit = (pred - target).pow(2).squeeze(1) / (2 * noise_var) + 0.5 * torch.log(noise_var)
    total_var = gmm_vars + noise_var  # [K]
    component = (-0.5 * torch.log(total_var) - (pred - gmm_means).pow(2) / (2 * total_var)
                 + torch.log(gmm_weights))  # [B, K]
    return (fit + torch.logsumexp(component, dim=1)).mean() * (2 * noise_var.detach())


def balanced_mae(preds, labels, groups: Mapping[str, np.ndarray]) -> dict:
    """The Balanced MSE paper's *balanced* MAE: the mean over the distinct integer labels of each
    label's MAE, for all samples and for each shot group (``groups``: {name: bool mask [N]}); None for
    an empty group. Not comparable with the plain (per-sample) MAE of Yang et al.'s tables.
    """
    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    keys = np.trunc(labels).astype(np.int64)  # int(label), as the shot groups
    errors = np.abs(preds - labels)
    out = {}
    for name, mask in {"all": np.ones(len(labels), dtype=bool), **groups}.items():
        if not mask.any():
            out[name] = None
            continue
        values, inverse = np.unique(keys[mask], return_inverse=True)
        per_label = np.bincount(inverse, weights=errors[mask]) / np.bincount(inverse)
        out[name] = float(per_label.mean())
    return out


def label_histogram(labels, bin_width: float = 1.0, lds: bool = False, lds_kernel: str = "gaussian",
                    lds_ks: int = 5, lds_sigma: float = 2.0) -> Tuple[np.ndarray, np.ndarray]:
    """BNI's prior: (bin centres [K], bin masses [K] summing to 1) of the train ``labels``.

    Bin k holds the labels that round to k * bin_width (integer ages with the default width 1). With
    ``lds`` the dense count vector is smoothed by the LDS window (as ranksim.weighting does), then the
    bins that hold no train label are dropped.
    """
    values = np.asarray(labels, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("labels: BNI needs at least one finite train label")
    index = np.rint(values / bin_width).astype(np.int64)
    low = index.min()
    counts = np.bincount(index - low).astype(np.float64)
    masses = counts
    if lds:
        masses = convolve1d(counts, weights=kernel_window(lds_kernel, lds_ks, lds_sigma, normalise="max"),
                            mode="constant")
    occupied = counts > 0
    centres = (np.arange(counts.size) + low)[occupied] * bin_width
    masses = masses[occupied]
    return centres, masses / masses.sum()


@dataclass
class GaussianMixture1D:
    """A 1-D Gaussian mixture: weights pi_k (sum 1), means mu_k, variances v_k (float64 [K] each)."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "variances": self.variances.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GaussianMixture1D":
        return cls(*(np.asarray(d[key], dtype=np.float64) for key in ("weights", "means", "variances")))

    def log_likelihood(self, x: np.ndarray) -> float:
        """Mean log density of the points ``x``."""
        return float(np.mean(logsumexp(self._component_log_density(x), axis=1)))

    def _component_log_density(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
        return (np.log(self.weights) - 0.5 * np.log(2 * math.pi * self.variances)
                - (x - self.means) ** 2 / (2 * self.variances))


def fit_gaussian_mixture(labels, n_components: int = 8, max_iter: int = 500, tol: float = 1e-6,
                         reg_var: float = 1e-6) -> GaussianMixture1D:
    """Maximum-likelihood K-component 1-D Gaussian mixture of ``labels`` (EM), deterministic.

    Initialisation: k-means (Lloyd) from centres at evenly spaced quantiles, then EM until the mean
    log-likelihood improves by less than ``tol``. ``reg_var`` is added to every variance (as sklearn's
    reg_covar) so that a component on a single label value stays proper. K is capped at the number of
    distinct labels. The reference code uses sklearn's GaussianMixture (K = 8, random_state 0), whose
    random k-means initialisation can reach another local optimum; the fitted mixtures are close on
    the age label distributions, not identical.
    """
    x = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("labels: the GMM needs at least one finite train label")
    k = max(1, min(int(n_components), np.unique(x).size))
    means = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(100):  # k-means on the sorted 1-D points
        assign = np.abs(x[:, None] - means[None, :]).argmin(axis=1)
        new = np.array([x[assign == c].mean() if np.any(assign == c) else means[c] for c in range(k)])
        if np.allclose(new, means):
            break
        means = new
    assign = np.abs(x[:, None] - means[None, :]).argmin(axis=1)
    resp = np.eye(k)[assign]
    gmm = _m_step(x, resp, reg_var)
    previous = -np.inf
    for _ in range(max_iter):
        log_density = gmm._component_log_density(x)
        resp = np.exp(log_density - logsumexp(log_density, axis=1, keepdims=True))
        gmm = _m_step(x, resp, reg_var)
        current = gmm.log_likelihood(x)
        if current - previous < tol:
            break
        previous = current
    return gmm


def _m_step(x: np.ndarray, resp: np.ndarray, reg_var: float) -> GaussianMixture1D:
    mass = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # an emptied component keeps a finite mean
    means = (resp * x[:, None]).sum(axis=0) / mass
    variances = (resp * (x[:, None] - means) ** 2).sum(axis=0) / mass + reg_var
    return GaussianMixture1D(mass / mass.sum(), means, variances)


class BalancedMSELoss(nn.Module):
    """Balanced MSE with a learnable noise scale sigma (``self.noise_sigma``, a 0-d Parameter).

    variant: 'bmc' | 'bni' | 'gai'. BNI needs ``bin_centers``/``bin_weights`` (:func:`label_histogram`),
    GAI a ``gmm`` (:func:`fit_gaussian_mixture`); they are stored as buffers, so the prior travels with
    the module's state_dict (the checkpoint). init_sigma: initial sigma (the reference default 1.0;
    its README runs use 10.0); freeze_sigma: keep sigma fixed (requires_grad False). Put
    ``noise_sigma`` in its own optimizer group (the reference learning rate is 1e-2).

    Called as the harness's losses: ``loss(pred [B, 1], target [B, 1], weights=None)``; weights are
    ignored (see the module docstring). BMC on a batch of one sample returns 0 (its value) instead of
    raising as ``bmc_loss`` does, so that a last batch of one does not stop a run.
    """

    def __init__(self, variant: str, init_sigma: float = 1.0, freeze_sigma: bool = False,
                 bin_centers=None, bin_weights=None, gmm: Optional[GaussianMixture1D] = None):
        super().__init__()
        if variant not in BALANCED_MSE_VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {', '.join(BALANCED_MSE_VARIANTS)}")
        if not init_sigma > 0:
            raise ValueError(f"init_sigma={init_sigma!r}: the noise scale must be > 0")
        self.variant = variant
        self.noise_sigma = nn.Parameter(torch.tensor(float(init_sigma)), requires_grad=not freeze_sigma)
        if variant == "bni":
            if bin_centers is None or bin_weights is None:
                raise ValueError("variant 'bni' needs bin_centers and bin_weights (see label_histogram)")
            self.register_buffer("bin_centers", torch.as_tensor(bin_centers, dtype=torch.float32))
            self.register_buffer("bin_weights", torch.as_tensor(bin_weights, dtype=torch.float32))
        if variant == "gai":
            if gmm is None:
                raise ValueError("variant 'gai' needs gmm (see fit_gaussian_mixture)")
            for name, values in (("gmm_weights", gmm.weights), ("gmm_means", gmm.means),
                                 ("gmm_vars", gmm.variances)):
                self.register_buffer(name, torch.as_tensor(values, dtype=torch.float32))

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        noise_var = self.noise_sigma.pow(2)
        if self.variant == "bmc":
            if pred.shape[0] < 2:  # e.g. a last batch of one: BMC is identically 0 there, so it adds nothing
                return pred.sum() * 0
            return bmc_loss(pred, target, noise_var)
        if self.variant == "bni":
            return bni_loss(pred, target, noise_var, self.bin_centers, self.bin_weights)
        return gai_loss(pred, target, noise_var, self.gmm_weights, self.gmm_means, self.gmm_vars)
