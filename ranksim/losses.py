"""Weighted regression losses (mse, l1, focal_mse, focal_l1, huber).

Every loss takes ``(inputs, targets, weights=None, **options)``: ``inputs`` (predictions) and
``targets`` of the same shape ([B] or [B, 1]), optional per-sample ``weights`` ([B] or the same shape
as the loss). The element-wise loss is multiplied by the weight and averaged over ALL elements, so
with targets [B, 1] the result is the batch mean. Returns a 0-d tensor.

Focal-R (Yang et al. 2021) scales the error by a factor in [0, 1) that grows with |d|:
``(2 * sigmoid(beta * |d|) - 1) ** gamma`` (activate='sigmoid', the default) or
``tanh(beta * |d|) ** gamma`` (activate='tanh'), so well-fitted samples contribute less.
beta is 0.2 for the age datasets (the default here) and 20 for STS-B-DIR (sts-b-dir/train.py passes
it), gamma 1, sigmoid: the published values.

``published_age_loss`` reproduces how the published age train.py calls these losses
(``--published_quirks``): see its docstring.
"""
from typing import Callable, Dict, Optional

import torch

__all__ = [
    "LOSSES", "get_loss", "published_age_loss", "weighted_focal_l1_loss", "weighted_focal_mse_loss", "weighted_huber_loss",
    "weighted_l1_loss", "weighted_mse_loss",
]

ACTIVATIONS = ("sigmoid", "tanh")


def _check_shapes(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    # A [B, 1] vs [B] mix would silently broadcast to [B, B]; refuse it.
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the "
                         "same shape (reshape targets to match the predictions)")


def _weighted_mean(loss: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """mean(loss * weights); ``weights`` is per sample ([B]) or shaped like ``loss``."""
    if weights is not None:
        if weights.shape != loss.shape:
            if loss.dim() == 0 or weights.numel() != loss.shape[0]:
                raise ValueError(f"weights {tuple(weights.shape)} must hold one weight per sample "
                                 f"(loss shape {tuple(loss.shape)})")
            # per-sample weights [B] against a loss [B, ...]: align on the batch axis
            weights = weights.reshape((loss.shape[0],) + (1,) * (loss.dim() - 1))
        loss = loss * weights.expand_as(loss)
    return loss.mean()


def _focal_factor(abs_diff: torch.Tensor, activate: str, beta: float, gamma: float) -> torch.Tensor:
    if activate == "sigmoid":
        return (2 * torch.sigmoid(beta * abs_diff) - 1) ** gamma
    if activate == "tanh":
        return torch.tanh(beta * abs_diff) ** gamma
    raise ValueError(f"activate={activate!r} is not one of {', '.join(ACTIVATIONS)}")


def weighted_mse_loss(inputs: torch.Tensor, targets: torch.Tensor,
                      weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean(w * d^2), d = inputs - targets."""
    _check_shapes(inputs, targets)
    return _weighted_mean((inputs - targets) ** 2, weights)


def weighted_l1_loss(inputs: torch.Tensor, targets: torch.Tensor,
                     weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean(w * |d|)."""
    _check_shapes(inputs, targets)
    return _weighted_mean(torch.abs(inputs - targets), weights)


def weighted_focal_mse_loss(inputs: torch.Tensor, targets: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, activate: str = "sigmoid",
                            beta: float = 0.2, gamma: float = 1.0) -> torch.Tensor:
    """mean(w * d^2 * focal(|d|)), focal as in the module docstring."""
    _check_shapes(inputs, targets)
    diff = inputs - targets
    return _weighted_mean(diff ** 2 * _focal_factor(torch.abs(diff), activate, beta, gamma), weights)


def weighted_focal_l1_loss(inputs: torch.Tensor, targets: torch.Tensor,
                           weights: Optional[torch.Tensor] = None, activate: str = "sigmoid",
                           beta: float = 0.2, gamma: float = 1.0) -> torch.Tensor:
    """mean(w * |d| * focal(|d|)), focal as in the module docstring."""
    _check_shapes(inputs, targets)
    abs_diff = torch.abs(inputs - targets)
    return _weighted_mean(abs_diff * _focal_factor(abs_diff, activate, beta, gamma), weights)


def weighted_huber_loss(inputs: torch.Tensor, targets: torch.Tensor,
                        weights: Optional[torch.Tensor] = None,
                        beta: "float | torch.Tensor" = 1.0) -> torch.Tensor:
    """mean(w * h(|d|)), h(a) = 0.5 a^2 / beta if a < beta else a - 0.5 beta (smooth L1 with ``beta``).

    beta: 1.0 for the age datasets, ``--huber_beta`` (0.3) for STS-B; a tensor of the inputs' shape
    gives every element its own threshold (used by ``published_age_loss``).
    """
    if not bool(torch.all(torch.as_tensor(beta) > 0)):
        raise ValueError(f"beta={beta!r}: the Huber threshold must be > 0")
    _check_shapes(inputs, targets)
    abs_diff = torch.abs(inputs - targets)
    loss = torch.where(abs_diff < beta, 0.5 * abs_diff ** 2 / beta, abs_diff - 0.5 * beta)
    return _weighted_mean(loss, weights)


LOSSES: Dict[str, Callable[..., torch.Tensor]] = {
    "mse": weighted_mse_loss,
    "l1": weighted_l1_loss,
    "focal_mse": weighted_focal_mse_loss,
    "focal_l1": weighted_focal_l1_loss,
    "huber": weighted_huber_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function for a ``--loss`` value (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"--loss {name!r}: unknown loss; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


def published_age_loss(name: str) -> Callable[..., torch.Tensor]:
    """``loss(inputs, targets, weights)`` as the published age train.py computes it (--published_quirks).

    The published train.py passes the sample weights as the THIRD POSITIONAL argument, and in its
    loss.py only mse and l1 have ``weights`` there; the focal losses' third parameter is ``activate``
    and Huber's is ``beta`` (``weights`` comes later, as a keyword). So the published focal_l1 /
    focal_mse ignore the sample weights (a tensor is never equal to 'tanh', so the sigmoid factor is
    used, beta 0.2, gamma 1), and Huber takes each sample's weight as its own threshold and averages
    unweighted. mse and l1 are unaffected. With --reweight none every weight is 1, so only runs
    that re-weight (SQINV, LDS) change.
    """
    loss = get_loss(name)
    if name in ("focal_l1", "focal_mse"):
        def focal_without_weights(inputs, targets, weights=None):
            return loss(inputs, targets)
        return focal_without_weights
    if name == "huber":
        def huber_with_weights_as_beta(inputs, targets, weights=None):
            beta = 1.0 if weights is None else weights.reshape(inputs.shape)
            return weighted_huber_loss(inputs, targets, beta=beta)
        return huber_with_weights_as_beta
    return loss
