"""Ordinal Entropy (Zhang, Yang, Mi, Zheng and Yao, ICLR 2023, "Improving Deep Regression with Ordinal
Entropy"): a feature regularizer added to the regression loss, like RankSim.

Written from the formulas of the authors' AgeDB form (needylove/OrdinalEntropy at 75fc9d5,
AgeEstimation/OrdinalEntropy.py); no code is taken from that repository, which carries no licence.
For one batch of features z_i (the backbone output the head sees) and scalar labels y_i:

* class centres: for each distinct batch label u_1 < ... < u_M, c_m = mean of the raw z_i with label
  u_m, normalised to e_m = c_m / ||c_m||_2;
* diversity: for the pairs m < n, d_mn = ||e_m - e_n||_2 and a_mn = |u_m - u_n|, weighted by
  w_mn = (a_mn - min a) / max a (min and max over this batch's pairs; divided by max a, not by
  max a - min a, so the closest pairs weigh 0 and the largest weight is 1 - min a / max a);
  L_d = -mean_{m<n} w_mn d_mn pushes apart the centres of far-apart labels;
* tightness: t_i = || z_i / ||z_i||_2 - e_(label of i) ||_2; L_t = mean of the t_i that are not 0 (the
  reference drops samples with t_i = 0, in practice the labels seen once in the batch; here those are
  also dropped by their count, so that rounding cannot keep them with a tiny t_i; and dropping the
  exact zeros keeps the gradient finite, e.g. for identical features of one label);
* OE = lambda_t * L_t + lambda_d * L_d, both weights 1 by default (the reference adds OE to the task
  loss at weight 1).

L_t is the Euclidean distance, as in 75fc9d5 (Sep 2023); the first published version (4a4dd5f) averaged
SQUARED distances. An empty term is 0: M = 1 (no pair), M = 2 (its one pair weighs 0) and a batch of
distinct labels (no sample kept by L_t).

The computation is sync-free (no ``torch.unique``): samples are compared with each other through a
[B, B] label-equality matrix, so the cost is O(B^2 D) time and O(B^2) memory rather than the
reference's O(B D + M^2 D); for the paper's batch sizes this is small next to the backbone.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from ranksim.regularizer import autocast_off

__all__ = ["OrdinalEntropy", "ordinal_entropy", "ordinal_entropy_terms"]

_MIN_SQUARED_DISTANCE = 1e-12  # floor before the sqrt, as in the reference: keeps the gradient finite at 0


def _check_inputs(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """labels as [B] (from [B] or [B, 1]); ValueError naming the shapes otherwise."""
    if features.dim() != 2:
        raise ValueError(f"features: expected [B, D], got {tuple(features.shape)}")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels: expected [B] or [B, 1] scalar labels with B = {features.shape[0]} "
                         f"(as features), got {tuple(labels.shape)}")
    return labels


def ordinal_entropy_terms(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L_d, L_t) of one batch, each a 0-dim float32 tensor (see the module docstring).

    features: [B, D] raw features (any float dtype; computed in float32, also under autocast).
    labels: [B] or [B, 1] scalar labels, in any unit (the weights w_mn are scale-free).
    Empty terms are 0 (with zero gradient).
    """
    labels = _check_inputs(features, labels)
    with autocast_off(features.device):
        return _terms(features.float(), labels.float())


def _terms(z: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L_d, L_t) of float32 features z [B, D] and labels y [B]."""
    same = y.unsqueeze(0) == y.unsqueeze(1)                      # [B, B]: same label
    count = same.sum(dim=1)                                      # [B]: samples sharing i's label
    centre = (same.to(z.dtype) @ z) / count.unsqueeze(1).to(z.dtype)  # [B, D]: c of i's label
    unit_centre = F.normalize(centre, dim=1)                     # e of i's label

    # Diversity over the pairs of distinct labels: sample i stands for its label when it is the label's
    # first occurrence in the batch; the pair (i, j) counts once, as u_i < u_j.
    earlier = torch.ones_like(same).tril(diagonal=-1)            # [i, j]: j < i
    first = ~(same & earlier).any(dim=1)                         # [B]
    pair = first.unsqueeze(1) & first.unsqueeze(0) & (y.unsqueeze(1) < y.unsqueeze(0))
    label_gap = (y.unsqueeze(1) - y.unsqueeze(0)).abs()
    num_pairs = pair.sum()
    min_gap = torch.where(pair, label_gap, torch.full_like(label_gap, float("inf"))).amin()
    max_gap = torch.where(pair, label_gap, torch.zeros_like(label_gap)).amax()
    weight = torch.where(pair, (label_gap - min_gap) / max_gap.clamp_min(torch.finfo(y.dtype).tiny),
                         torch.zeros_like(label_gap))
    squared = unit_centre.pow(2).sum(1)
    gram = unit_centre @ unit_centre.t()
    distance = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * gram).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    diversity = -(weight * distance).sum() / num_pairs.clamp_min(1)

    # Tightness: the distance of each unit feature to its unit centre, over labels seen more than once.
    gap = F.normalize(z, dim=1) - unit_centre
    squared_gap = gap.pow(2).sum(1)
    kept = (count > 1) & (squared_gap > 0)
    # where() before the sqrt: a dropped sample's t may be exactly 0, whose sqrt has an infinite gradient
    tight = torch.where(kept, squared_gap, torch.ones_like(squared_gap)).sqrt() * kept
    tightness = tight.sum() / kept.sum().clamp_min(1)
    return diversity, tightness


def ordinal_entropy(features: torch.Tensor, labels: torch.Tensor, lambda_d: float = 1.0,
                    lambda_t: float = 1.0) -> torch.Tensor:
    """OE = lambda_d * L_d + lambda_t * L_t, a 0-dim float32 tensor to add to the regression loss.

    features: [B, D] backbone features; labels: [B] or [B, 1] scalar labels. Any device; no host sync.
    """
    diversity, tightness = ordinal_entropy_terms(features, labels)
    return lambda_d * diversity + lambda_t * tightness


class OrdinalEntropy(torch.nn.Module):
    """``ordinal_entropy`` with its weights fixed: ``OrdinalEntropy(lambda_d, lambda_t)(features, labels)``."""

    def __init__(self, lambda_d: float = 1.0, lambda_t: float = 1.0):
        super().__init__()
        self.lambda_d = lambda_d
        self.lambda_t = lambda_t

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ordinal_entropy(features, labels, self.lambda_d, self.lambda_t)

    def extra_repr(self) -> str:
        return f"lambda_d={self.lambda_d}, lambda_t={self.lambda_t}"
