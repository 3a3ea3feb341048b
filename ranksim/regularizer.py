"""The RankSim batch-wise ranking-similarity regularizer (the paper's Eq. 2-3), computed for all rows at once.

Definition (the per-row form of the paper, extended to label vectors y_i in R^d):
  1. if the batch repeats a target (a label vector for d > 1), keep one sample per distinct
     target, chosen uniformly at random, ordered by ascending target (lexicographic for d > 1);
     otherwise keep the batch as is;
  2. S = normalize(x) @ normalize(x).T over the n kept samples;
  3. loss = sum over rows i of mean_j (TrueRanker(S_i)_j - rank_normalised(-dist(y_i, y))_j)^2,
     dist the L1 or L2 distance ('l1' | 'l2'; for d = 1 both are the paper's |y_i - y_j|).

How the vectorised form avoids host-device syncs (no ``.item()``, ``.nonzero()``,
``torch.unique`` or boolean indexing, whose output sizes depend on the data):
  * Tie reduction never shrinks the batch. One uniform draw per sample (``torch.rand`` on the
    features' device) and 1 + d stable sorts order the batch by (label, draw); the first sample of
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
masking them (the "compact" form): same random draws, same order, same numbers, but n x n work
instead of B x B (with AgeDB-like labels a batch of 256 keeps ~70 samples, and the B x B similarity
matmul would dominate the cost). Any other device (CUDA, meta) takes the "masked" form. The
``form`` keyword of ``batchwise_ranking_regularizer`` picks one explicitly, so that tests and
bench/ run both on CPU.
"""
import contextlib
import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ranksim.ranking import TrueRanker, masked_rank_normalised, masked_true_rank, rank_normalised

LABEL_DISTANCES = ("l1", "l2")
# How the regularizer computes (module docstring): "auto" = "compact" on CPU, "masked" elsewhere.
FORMS = ("auto", "masked", "compact")


def _eager_under_compile(function: Callable) -> Callable:
    """``torch.compiler.disable(function)``, made on the first call instead of at import: the decorator
    imports torch._dynamo, which costs about 1.3 s per process (every train.py, test subprocess and
    DataLoader worker) that never compiles anything. Under torch.compile the call runs eagerly."""
    disabled = None

    @functools.wraps(function)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(function)
        return disabled(*args, **kwargs)

    return call


def _flatten_inputs(features: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return features as [B, D] and targets as [B, d] (float, features' device)."""
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
    if targets.dim() > 2 or targets.numel() == 0:
        raise ValueError(f"targets: expected shape [B], [B, 1] or [B, d], got {tuple(targets.shape)}")
    targets = targets.reshape(batch, -1).to(features.device)
    if not targets.is_floating_point():
        targets = targets.to(torch.float32)
    return features.reshape(batch, -1), targets


@_eager_under_compile  # a data-dependent check: run it eagerly rather than break the graph there
def _check_finite_targets(targets: torch.Tensor) -> None:
    """ValueError naming the first non-finite target (targets: as passed in, shape already validated).

    It reads the targets on the host: free on the CPU, a device sync elsewhere, so the regularizer
    calls it only where that costs nothing or the computation syncs anyway (compact form, reduce_ties).
    """
    finite = torch.isfinite(targets.reshape(targets.shape[0], -1))
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"targets: {int((~finite).sum())} non-finite value(s), the first "
                         f"{targets[row].tolist()!r} at batch index {row}; labels must be finite numbers")


def _autocast_off(device: torch.device):
    """A context that disables autocast on ``device`` when it is on (meta tensors have no autocast)."""
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))  # torch < 2.4
    if available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _label_similarities(targets: torch.Tensor, label_distance: str) -> torch.Tensor:
    """-dist(y_i, y_j) for targets [n, d]: [n, n]. Accumulated one label column at a time, so
    memory stays n x n whatever d is. For d = 1 both distances are -|y_i - y_j|, computed as such."""
    squared = targets.shape[1] > 1 and label_distance == "l2"
    distances = None
    for column in targets.unbind(1):
        difference = column[:, None] - column[None, :]
        term = difference.square() if squared else difference.abs()
        distances = term if distances is None else distances + term
    return -(distances.sqrt() if squared else distances)


@_eager_under_compile
def _uniform_keys(batch: int, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """B uniforms from torch's RNG (or ``generator``). Kept out of torch.compile graphs: compiled
    code would draw from the compiler's own random stream, so the tie draw (and the loss) would
    differ from eager under the same seed."""
    return torch.rand(batch, device=device, generator=generator)


def _tie_reduction_order(
    targets: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Order the batch by (label, uniform random key) and mark the first sample of each label.

    targets: [B, d]. Returns ``order`` (int64 [B]: batch indices sorted by ascending label,
    lexicographically for d > 1, random order within a label) and ``first`` (bool [B], True at
    positions of ``order`` that start a new label: the kept samples). Draws B uniforms from torch's
    RNG on the targets' device, or from ``generator`` (a generator of that device) when given.
    """
    batch = targets.shape[0]
    order = torch.argsort(_uniform_keys(batch, targets.device, generator))
    # Stable sorts from the last label column to the first: a lexicographic sort (radix style)
    # that keeps the random order within equal labels. For d = 1 this is one sort, as in the paper.
    for column in reversed(targets.unbind(1)):
        order = order[torch.argsort(column[order], stable=True)]
    sorted_targets = targets[order]
    first = torch.ones(batch, dtype=torch.bool, device=targets.device)
    first[1:] = (sorted_targets[1:] != sorted_targets[:-1]).any(dim=1)
    return order, first


def reduce_ties(
    features: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tie reduction, materialised: the samples the regularizer keeps.

    features: [B, ...]; targets: [B], [B, 1] or [B, d]. Returns (features [n, ...], targets in
    their input layout): one sample per distinct target (label vector), chosen uniformly at random,
    sorted by ascending target (lexicographic); the batch unchanged (same order) when no target repeats.
    It draws the same random numbers as ``batchwise_ranking_regularizer``, so under the same RNG
    state both keep the same samples. Meant for readers and tests: it syncs with the host
    (boolean indexing), unlike the regularizer.
    """
    _, flat_targets = _flatten_inputs(features, targets)
    _check_finite_targets(targets)
    order, first = _tie_reduction_order(flat_targets, generator)
    if bool(first.all()):
        return features, targets
    kept = order[first].to(features.device)
    return features[kept], targets.to(features.device)[kept]


def _check_label_distance(label_distance: str) -> None:
    if label_distance not in LABEL_DISTANCES:
        raise ValueError(f"label_distance={label_distance!r} is not one of {', '.join(LABEL_DISTANCES)}")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not one of {', '.join(FORMS)}")


def _check_lambda(interp_strength_lambda: float) -> None:
    if not interp_strength_lambda > 0:
        raise ValueError(
            f"interp_strength_lambda={interp_strength_lambda!r}: the interpolation strength must be > 0 "
            "(the paper uses 2)"
        )


def batchwise_ranking_regularizer(
    features: torch.Tensor,
    targets: torch.Tensor,
    interp_strength_lambda: float,
    generator: Optional[torch.Generator] = None,
    label_distance: str = "l1",
    *,
    form: str = "auto",
) -> torch.Tensor:
    """RankSim loss: how far the similarity ranking of features is from that of labels.

    features: [B, ...] (flattened to [B, D]; float16/bfloat16/float32, computed in float32, also
    under autocast); targets: [B], [B, 1] or [B, d] labels in any units, ideally on the features'
    device (else they are copied there); interp_strength_lambda: TrueRanker's interpolation strength
    lambda (> 0); generator: optional torch.Generator on the features' device for the tie-reduction
    draws (default: torch's global RNG; distributed runs pass one seeded identically on every rank);
    label_distance: 'l1' (default) or 'l2', the distance between label vectors whose negative is
    the label similarity (for d = 1 both are |y_i - y_j| and give the same result);
    form (keyword only): 'auto' (default: 'compact' on CPU, 'masked' on any other device),
    'masked' (dropped samples masked over the full B x B matrix: nothing waits for the device, see
    the module docstring) or 'compact' (dropped samples removed first: n x n work, but boolean
    indexing, which syncs on accelerators). Both forms give the same numbers under the same draws.
    Returns a float32 scalar tensor; 0 (with zero gradient) when fewer than two distinct labels remain.
    TypeError when features or targets is not a torch.Tensor (e.g. a NumPy array).
    Non-finite targets (NaN, inf): ValueError naming them when the targets are on the CPU (as a
    DataLoader yields them) or form='compact'. Targets already on an accelerator, and any targets
    under form='masked' (which never reads a value on the host), are not checked, since that would
    make the host wait for the device: the returned loss is NaN instead.
    NaN features are not checked for: their similarities get arbitrary ranks, the returned loss stays
    finite, but the gradient is NaN, so the model's weights become NaN after the step (a NaN
    feature usually makes the prediction and so the main loss NaN too, which the train programs stop on).
    """
    _check_lambda(interp_strength_lambda)
    _check_label_distance(label_distance)
    _check_form(form)
    flat_features, flat_targets = _flatten_inputs(features, targets)
    compact = form == "compact" or (form == "auto" and flat_features.device.type == "cpu")
    # The check reads the targets on the host: free while they are on the CPU, and the compact form syncs anyway.
    checked = compact or (form == "auto" and targets.device.type == "cpu")
    if checked:
        _check_finite_targets(targets)
    loss = _ranking_loss(flat_features, flat_targets, interp_strength_lambda, compact=compact,
                         generator=generator, label_distance=label_distance)
    if not checked:  # NaN or inf in the targets makes the loss NaN, without a host sync
        loss = loss + flat_targets.sum() * 0
    return loss


class RankSim(nn.Module):
    """gamma * batchwise_ranking_regularizer, as a module to add to any regression loss.

    ``RankSim(gamma, interp_strength_lambda, label_distance='l1')(features, targets)`` returns
    gamma times the regularizer (float32 scalar), with the same random draws as the function under
    the same RNG state; ``generator`` (optional) is passed through. gamma >= 0 (the paper uses
    0.5 to 2 and lambda = 2). No parameters or buffers: adding it to a model changes no state_dict.

        ranksim = RankSim(gamma=1.0, interp_strength_lambda=2.0)
        loss = F.l1_loss(model.head(features), targets) + ranksim(features, targets)
    """

    def __init__(self, gamma: float, interp_strength_lambda: float, label_distance: str = "l1"):
        super().__init__()
        if not (isinstance(gamma, (int, float)) and 0 <= gamma < float("inf")):
            raise ValueError(f"gamma={gamma!r}: the regularizer's weight must be a finite number >= 0")
        _check_lambda(interp_strength_lambda)
        _check_label_distance(label_distance)
        self.gamma = float(gamma)
        self.interp_strength_lambda = float(interp_strength_lambda)
        self.label_distance = label_distance

    def forward(self, features: torch.Tensor, targets: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.gamma * batchwise_ranking_regularizer(features, targets, self.interp_strength_lambda,
                                                          generator=generator, label_distance=self.label_distance)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma:g}, interp_strength_lambda={self.interp_strength_lambda:g}, "
                f"label_distance={self.label_distance!r}")


def _ranking_loss(features: torch.Tensor, targets: torch.Tensor, interp_strength_lambda: float, compact: bool,
                  generator: Optional[torch.Generator] = None, label_distance: str = "l1") -> torch.Tensor:
    """The regularizer on validated features [B, D] and targets [B, d].

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

    # 2. Cosine similarities, in float32 also under autocast (which would run the matmul in 16 bits).
    with _autocast_off(features.device):
        x = F.normalize(features.to(torch.float32), dim=1)
        similarities = x @ x.T
    label_distances = _label_similarities(targets, label_distance)

    # 3. Label ranks (constants) and feature ranks (blackbox gradient), all rows at once.
    if compact:
        diff = TrueRanker.apply(similarities, interp_strength_lambda) - rank_normalised(label_distances)
        n_kept = x.shape[0]
    else:
        n_kept = keep.sum()  # a tensor: the count never leaves the device
        pair_keep = keep[:, None] & keep[None, :]
        label_ranks = masked_rank_normalised(label_distances, pair_keep, n_kept)
        feature_ranks = masked_true_rank(similarities, interp_strength_lambda, pair_keep, n_kept)
        # Dropped entries already match (both rankings put them last, in the same order); the mask
        # states the intent and keeps it true whatever the ranking helpers do with them.
        diff = (feature_ranks - label_ranks) * pair_keep
        n_kept = n_kept.to(torch.float32)
    # Sum over kept rows of the mean over n kept columns = (sum of all kept squares) / n.
    return (diff * diff).sum() / n_kept
