"""The RankSim batch-wise ranking-similarity regularizer (SPEC §1), computed for all rows at once.

Definition (the per-row form of the paper):
  1. if the batch repeats a target value, keep one sample per distinct value, chosen uniformly
     at random, ordered by ascending value; otherwise keep the batch as is;
  2. S = normalize(x) @ normalize(x).T over the n kept samples;
  3. loss = sum over rows i of mean_j (TrueRanker(S_i)_j - rank_normalised(-|y_i - y|)_j)^2.

How the vectorised form avoids host-device syncs (no ``.item()``, ``.nonzero()``,
``torch.unique`` or boolean indexing, whose output sizes depend on the data):
  * Tie reduction never shrinks the batch. One uniform draw per sample (``torch.rand`` on the
    features' device) and two stable sorts order the batch by (label, draw); the first sample of
    each label group (the one with the smallest draw, hence uniform among its duplicates) is
    kept. The batch is permuted into that order only when it has ties (``torch.where`` on a 0-d
    tensor), so kept samples are ordered exactly as the reference orders them.
  * The loss is computed over the full B x B matrix. Dropped samples are masked: their columns are
    ranked last (so kept ranks are ranks among kept columns), ranks are normalised by the kept
    count n (a 0-d tensor), and their rows and columns contribute nothing to the loss or the
    gradient (exactly zero gradient for dropped samples).
  * Why the order matters at all: the loss sums over all (i, j) pairs, so it is invariant to a
    permutation of the samples EXCEPT through tie-breaking inside a row, which goes by column
    index (e.g. labels y_i - d and y_i + d are equally far from y_i). Using the reference's order
    (batch order without ties, label order with ties) reproduces its tie-breaks exactly, given the
    stable sort of ranksim.ranking (the published code's non-stable argsort orders such ties
    arbitrarily in rows of 17 or more samples; see the ranking module's docstring).
On CPU there is no device to wait for, so the regularizer gathers the kept samples instead of
masking them: same random draws, same order, same numbers, but n x n work instead of B x B (with
AgeDB-like labels a batch of 256 keeps ~70 samples, and the B x B similarity matmul would
dominate the cost). Tests run both forms on CPU; any other device (CUDA, meta) takes the masked one.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .ranking import TrueRanker, _masked_rank_normalised, masked_true_rank, rank_normalised


def _flatten_inputs(features: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return features as [B, D] and targets as [B] (float, features' device)."""
    for name, value in (("features", features), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            kind = f"{type(value).__module__}.{type(value).__name__}".replace("builtins.", "")
            raise TypeError(f"{name}: expected a torch.Tensor, got {kind}; convert it with torch.as_tensor")
    if features.dim() == 0 or features.shape[0] == 0:
        raise ValueError(f"features: expected a non-empty batch [B, ...], got shape {tuple(features.shape)}")
    batch = features.shape[0]
    if targets.dim() == 0 or targets.shape[0] != batch:
        raise ValueError(
            f"features and targets: batch sizes differ (features {tuple(features.shape)}, "
            f"targets {tuple(targets.shape)}); pass one target per sample"
        )
    if targets.numel() != batch:
        raise ValueError(f"targets: expected shape [B] or [B, 1], got {tuple(targets.shape)}")
    targets = targets.reshape(batch).to(features.device)
    if not targets.is_floating_point():
        targets = targets.to(torch.float32)
    return features.reshape(batch, -1), targets


def _tie_reduction_order(
    targets: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Order the batch by (label, uniform random key) and mark the first sample of each label.

    targets: [B]. Returns ``order`` (int64 [B]: batch indices sorted by ascending label, random
    order within a label) and ``first`` (bool [B], True at positions of ``order`` that start a
    new label: the kept samples). Draws B uniforms from torch's RNG on the targets' device, or from
    ``generator`` (a generator of that device) when given.
    """
    batch = targets.shape[0]
    random_key = torch.rand(batch, device=targets.device, generator=generator)
    by_key = torch.argsort(random_key)
    order = by_key[torch.argsort(targets[by_key], stable=True)]
    sorted_targets = targets[order]
    first = torch.ones(batch, dtype=torch.bool, device=targets.device)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    return order, first


def reduce_ties(
    features: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SPEC §1.1 tie reduction, materialised: the samples the regularizer keeps.

    features: [B, ...]; targets: [B] or [B, 1]. Returns (features [n, ...], targets in their
    input layout [n] or [n, 1]): one sample per distinct target, chosen uniformly at random,
    sorted by ascending target; the batch unchanged (same order) when no target repeats.
    It draws the same random numbers as ``batchwise_ranking_regularizer``, so under the same RNG
    state both keep the same samples. Meant for readers and tests: it syncs with the host
    (boolean indexing), unlike the regularizer.
    """
    _, flat_targets = _flatten_inputs(features, targets)
    order, first = _tie_reduction_order(flat_targets, generator)
    if bool(first.all()):
        return features, targets
    kept = order[first].to(features.device)
    return features[kept], targets.to(features.device)[kept]


def batchwise_ranking_regularizer(
    features: torch.Tensor,
    targets: torch.Tensor,
    interp_strength_lambda: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """RankSim loss: how far the similarity ranking of features is from that of labels.

    features: [B, ...] (flattened to [B, D]; float16/bfloat16/float32, computed in float32);
    targets: [B] or [B, 1] labels, ideally on the features' device (else they are copied there);
    interp_strength_lambda: TrueRanker's interpolation strength lambda (> 0); generator: optional
    torch.Generator on the features' device for the tie-reduction draws (default: torch's global RNG;
    distributed runs pass one seeded identically on every rank). Returns a float32
    scalar tensor; 0 (with zero gradient) when fewer than two distinct labels remain.
    On accelerators nothing waits for the device (see the module docstring); on CPU, where there is
    no device to wait for, the dropped samples are removed instead of masked, which saves the
    B x B work on them (the same numbers either way; tests check both paths).
    TypeError when features or targets is not a torch.Tensor (e.g. a NumPy array).
    NaN features are not checked for: their similarities get arbitrary ranks, the returned loss stays
    finite, but the gradient is NaN, so the model's weights become NaN after the step (a NaN
    feature usually makes the prediction and so the main loss NaN too, which the train programs stop on).
    """
    if not interp_strength_lambda > 0:
        raise ValueError(
            f"interp_strength_lambda={interp_strength_lambda!r}: the interpolation strength must be > 0 "
            "(the paper uses 2)"
        )
    features, targets = _flatten_inputs(features, targets)
    return _ranking_loss(features, targets, interp_strength_lambda, compact=features.device.type == "cpu",
                         generator=generator)


def _ranking_loss(features: torch.Tensor, targets: torch.Tensor, lam: float, compact: bool,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The regularizer on validated features [B, D] and targets [B].

    compact=False: sync-free masked form over the full B x B matrix. compact=True: the kept samples
    are gathered first (boolean indexing: a host sync on accelerators, free on CPU), so all work
    is n x n. Both consume the same random numbers and return the same value and gradient.
    """
    batch = features.shape[0]
    # 1. Tie reduction (see the module docstring): kept samples in the reference's order.
    order, keep = _tie_reduction_order(targets, generator)
    has_ties = ~keep.all()
    reference_order = torch.where(has_ties, order, torch.arange(batch, device=features.device))
    if compact:
        kept = reference_order[keep]  # boolean indexing: fine on CPU, where nothing waits for a device
        if kept.shape[0] < batch:  # without ties the batch stays as it is
            features, targets = features[kept], targets[kept]
    else:
        features, targets = features[reference_order], targets[reference_order]

    # 2. Cosine similarities.
    x = F.normalize(features.to(torch.float32), dim=1)
    similarities = x @ x.T
    label_distances = -(targets[:, None] - targets[None, :]).abs()

    # 3. Label ranks (constants) and feature ranks (blackbox gradient), all rows at once.
    if compact:
        diff = TrueRanker.apply(similarities, lam) - rank_normalised(label_distances)
        n_kept = x.shape[0]
    else:
        n_kept = keep.sum()  # a tensor: the count never leaves the device
        pair_keep = keep[:, None] & keep[None, :]
        label_ranks = _masked_rank_normalised(label_distances, pair_keep, n_kept)
        feature_ranks = masked_true_rank(similarities, lam, pair_keep, n_kept)
        # Dropped entries already match (both rankings put them last, in the same order); the mask
        # states the intent and keeps it true whatever the ranking helpers do with them.
        diff = (feature_ranks - label_ranks) * pair_keep
        n_kept = n_kept.to(torch.float32)
    # Sum over kept rows of the mean over n kept columns = (sum of all kept squares) / n.
    return (diff * diff).sum() / n_kept
