"""Row-wise ranking and the blackbox-differentiable ranker used by RankSim (docs/published_behaviour.md §1.4-1.5).

Every function ranks all rows of an ``[n, m]`` tensor at once (one sort per call, no Python
loop over rows) and works on any device.

Rank convention: the rank of an element is its position in its row sorted in DEScending order,
0-based; among equal values the element with the LARGER column index comes first (a STABLE sort,
flipped). ``rank_normalised`` maps ranks to ``(rank + 1) / m`` in (0, 1].

Ties cannot be matched exactly: the published ``rank_normalised`` (agedb-dir/ranking.py) sorts
with the default, NON-stable ``torch.argsort``, so equal values (in RankSim: samples at equal label
distances, e.g. y_i - d and y_i + d) get an implementation-defined order. On CPU that order equals
the stable one for rows of up to 16 elements and differs from row length 17 on (on a GPU it is
implementation-defined as well); here the order is always the stable one, on every device.
"""
from typing import Optional

import torch


def _ascending_order(x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Column indices of each row of ``x`` [n, m] in ascending order, ties by ascending index.

    Reversed, this is the rank order: descending values, the larger index first among ties.
    So an element at ascending position p has rank m - 1 - p, and no flip is ever materialised.
    ``keep`` (bool, broadcastable to ``x``) marks the columns that take part: the others are
    set to -inf so that they sort first (= rank last) and never change the ranks of the kept
    columns, which then hold ranks 0 .. n_kept - 1 (kept values must be finite, as cosines and
    label distances are).
    """
    if keep is not None:
        x = x.masked_fill(~keep, float("-inf"))
    return torch.argsort(x, dim=-1, stable=True)


def masked_rank_normalised(
    x: torch.Tensor, keep: Optional[torch.Tensor] = None, n_kept: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``rank_normalised`` of every row of ``x`` [n, m] among the kept columns only: float32 [n, m].

    keep: bool, broadcastable to ``x`` (e.g. [n, m] or [1, m]), True at the columns that take part;
    None keeps every column (then this is ``rank_normalised``). n_kept: 0-d integer tensor, the number
    of kept columns of each row (the same for every row; required with ``keep``). It is a tensor, not
    an int, so that the caller never has to read the count on the host (no device sync).
    Kept columns get ``(rank among the kept + 1) / n_kept``, exactly ``rank_normalised`` of the row
    with the dropped columns removed; the values in dropped columns are meaningless (mask them).
    Kept values must be finite (dropped ones are replaced by -inf and rank last).
    """
    if keep is not None and n_kept is None:
        raise ValueError("masked_rank_normalised: n_kept (a 0-d tensor) is required with keep")
    m = x.shape[-1]
    denominator = m if keep is None else n_kept.to(torch.float32)
    return ranks_from_order(_ascending_order(x, keep), rank_values(m, denominator, x.device))


def rank_values(m: int, n, device: torch.device) -> torch.Tensor:
    """float32 [m]: ``(m - p) / n`` for ascending positions p = 0 .. m - 1, the normalised rank that
    the element at ascending position p of a row of m gets (its rank is m - 1 - p). ``n`` (int or
    0-d tensor, e.g. the count of kept columns) is the normaliser; m - p is exact in float32."""
    return torch.arange(m, 0, -1, device=device, dtype=torch.float32) / n


def ranks_from_order(ascending: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Normalised ranks [n, m] from each row's ascending order (int64 [n, m], as from a stable sort)
    and :func:`rank_values` [m]: element ``ascending[i, p]`` of row i gets ``values[p]``. One scatter."""
    out = torch.empty(ascending.shape, dtype=torch.float32, device=ascending.device)
    return out.scatter_(-1, ascending, values.expand_as(ascending))


def _check_2d(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [n, m] (rank every row), got shape {tuple(x.shape)}")


def rank(x: torch.Tensor) -> torch.Tensor:
    """0-based descending rank of every element within its row.

    x: [n, m] tensor. Returns int64 [n, m]; ties: the larger column index ranks first.
    Example: ``rank([[1., 3., 3., 2.]]) == [[3, 1, 0, 2]]``.
    """
    _check_2d(x)
    ascending = _ascending_order(x)
    m = x.shape[-1]
    ranks_by_position = torch.arange(m - 1, -1, -1, device=x.device).expand_as(ascending)
    return torch.empty_like(ascending).scatter_(-1, ascending, ranks_by_position)


def rank_normalised(x: torch.Tensor) -> torch.Tensor:
    """``(rank(x) + 1) / m`` as float32 [n, m]: 1/m for the largest value of a row, 1 for the smallest."""
    _check_2d(x)
    return masked_rank_normalised(x)


class _MaskedTrueRanker(torch.autograd.Function):
    """TrueRanker among the kept columns of each row (implementation of ``masked_true_rank``)."""

    @staticmethod
    def forward(ctx, scores, interp_strength_lambda, keep, n_kept):
        ranks = masked_rank_normalised(scores, keep, n_kept)
        ctx.interp_strength_lambda = interp_strength_lambda
        ctx.save_for_backward(scores, ranks, keep, n_kept)
        return ranks

    @staticmethod
    def backward(ctx, grad_output):
        scores, ranks, keep, n_kept = ctx.saved_tensors
        lam = ctx.interp_strength_lambda
        perturbed = scores.to(torch.float32) + lam * grad_output.to(torch.float32)
        grad = -(ranks - masked_rank_normalised(perturbed, keep, n_kept)) / (lam + 1e-8)
        grad = grad * keep  # dropped entries take no part in the loss: exactly zero gradient
        return grad.to(scores.dtype), None, None, None


class TrueRanker(torch.autograd.Function):
    """Differentiable row ranking: ``TrueRanker.apply(scores [n, m], interp_strength_lambda: float)``.

    Forward: ``rank_normalised(scores)`` (float32 [n, m]). Backward with incoming gradient g and
    lambda = interp_strength_lambda (the interpolation strength, > 0; the published TrueRanker calls
    it ``lambda_val``): ``-(r - rank_normalised(scores + lambda * g)) / (lambda + 1e-8)``; no
    gradient for lambda.
    """

    @staticmethod
    def forward(ctx, scores, interp_strength_lambda):
        _check_2d(scores)
        ranks = rank_normalised(scores)
        ctx.interp_strength_lambda = interp_strength_lambda
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad_output):
        scores, ranks = ctx.saved_tensors
        lam = ctx.interp_strength_lambda
        perturbed = scores.to(torch.float32) + lam * grad_output.to(torch.float32)
        # Blackbox combinatorial-solver gradient (Vlastelica et al., ICLR 2020): rank the scores
        # nudged along the incoming gradient; the finite difference of the two rankings is the gradient.
        grad = -(ranks - rank_normalised(perturbed)) / (lam + 1e-8)
        return grad.to(scores.dtype), None


def masked_true_rank(
    scores: torch.Tensor, interp_strength_lambda: float, keep: torch.Tensor, n_kept: torch.Tensor
) -> torch.Tensor:
    """TrueRanker restricted to the columns marked in ``keep``, for every row at once.

    scores: [n, m]; keep: bool [n, m] (or broadcastable, e.g. [1, m]) marking the kept columns of
    each row; n_kept: 0-d integer tensor, the number of kept columns per row (the same for
    every kept row). Kept entries equal TrueRanker applied to the row with the dropped columns
    removed (order of kept columns preserved); the gradient is exactly zero on dropped entries.
    Used by the regularizer to reduce label ties without a host sync.
    """
    return _MaskedTrueRanker.apply(scores, interp_strength_lambda, keep, n_kept)
