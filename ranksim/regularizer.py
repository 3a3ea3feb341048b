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
The loss and its backward are one autograd node (``_RankingLoss``) whose backward is written out:
a short, fixed sequence of kernels (three row sorts in all, one per ranking: labels, features,
perturbed features), no data-dependent shape, nothing read on the host, so it can be captured in a
CUDA graph and compiled with ``torch.compile(fullgraph=True)`` (pass ``tie_keys``, see the function).

Scale: the published blackbox backward perturbs the similarities by lambda times whatever gradient
arrives, so any factor on the loss (an fp16 GradScaler's 65,536, a loss share, accumulation)
changes RankSim's gradient, not only its size. Passing ``gamma=`` (the weight the caller multiplies
by; :class:`RankSim` does it itself) makes the gradient scale-correct: see the function's docstring.

On CPU there is no device to wait for, so the regularizer gathers the kept samples instead of
masking them (the "compact" form): same random draws, same order, same numbers, but n x n work
instead of B x B (with AgeDB-like labels a batch of 256 keeps ~70 samples, and the B x B similarity
matmul would dominate the cost). Any other device (CUDA, meta) takes the "masked" form. The
``form`` keyword of ``batchwise_ranking_regularizer`` picks one explicitly, so that tests and
bench/ run both on CPU.
"""
import contextlib
import functools
import numbers
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ranksim.ranking import rank_values, ranks_from_order

LABEL_DISTANCES = ("l1", "l2")
# How the regularizer computes (module docstring): "auto" = "compact" on CPU, "masked" elsewhere.
FORMS = ("auto", "masked", "compact")
NORMALIZE_EPS = 1e-12  # F.normalize's default: the similarities are computed exactly as it computes them


def _eager_under_compile(function: Callable) -> Callable:
    """``function``, run eagerly under torch.compile (through ``torch.compiler.disable``, made on the
    first call under compile): the decorator imports torch._dynamo, which costs about 1.3 s per
    process (every train.py, test subprocess and DataLoader worker) that never compiles anything."""
    disabled = None

    @functools.wraps(function)
    def call(*args, **kwargs):
        nonlocal disabled
        if not _is_compiling():  # eager callers never pay for importing torch._dynamo
            return function(*args, **kwargs)
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


def autocast_off(device: torch.device):
    """A context that disables autocast on ``device`` when it is on (meta tensors have no autocast)."""
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))  # torch < 2.4
    if available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _label_distances(targets: torch.Tensor, label_distance: str, few_kernels: bool = False) -> torch.Tensor:
    """dist(y_i, y_j) for targets [n, d]: float32 [n, n] (the label similarity is its negative).
    For d = 1 both distances are |y_i - y_j|: with ``few_kernels`` (the masked form, for accelerators)
    one cdist kernel (exactly |y_i - y_j| for one column), else a subtraction and abs (several times
    faster than cdist on a CPU). For d > 1 it is accumulated one label column at a time, so memory
    stays n x n."""
    if targets.shape[1] == 1:
        return torch.cdist(targets, targets, p=1) if few_kernels else (targets - targets.T).abs()
    squared = label_distance == "l2"
    distances = None
    for column in targets.unbind(1):
        difference = column[:, None] - column[None, :]
        term = difference.square() if squared else difference.abs()
        distances = term if distances is None else distances + term
    return distances.sqrt() if squared else distances


@_eager_under_compile
def _uniform_keys(batch: int, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """B uniforms from torch's RNG (or ``generator``): the tie draw. Kept out of torch.compile graphs:
    compiled code would draw from the compiler's own random stream, so the tie draw (and the loss)
    would differ from eager under the same seed. (A caller compiling with fullgraph=True draws them
    itself and passes them as ``tie_keys``.)"""
    return torch.rand(batch, device=device, generator=generator)


def _tie_reduction_order(targets: torch.Tensor, keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Order the batch by (label, random key) and mark the first sample of each label.

    targets: [B, d]; keys: [B] uniforms (the tie draw). Returns ``order`` (int64 [B]: batch indices
    sorted by ascending label, lexicographically for d > 1, by ascending key within a label) and
    ``first`` (bool [B], True at positions of ``order`` that start a new label: the kept samples).
    """
    order = torch.argsort(keys)
    # Stable sorts from the last label column to the first: a lexicographic sort (radix style)
    # that keeps the random order within equal labels. For d = 1 this is one sort, as in the paper.
    for column in reversed(targets.unbind(1)):
        sorted_column, position = torch.sort(column[order], stable=True)
        order = order[position]
    if targets.shape[1] == 1:
        new_label = sorted_column[1:] != sorted_column[:-1]
    else:
        sorted_targets = targets[order]
        new_label = (sorted_targets[1:] != sorted_targets[:-1]).any(dim=1)
    first = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    first[1:] = new_label
    return order, first


def _draw_or_check_keys(tie_keys: Optional[torch.Tensor], batch: int, device: torch.device,
                        generator: Optional[torch.Generator]) -> torch.Tensor:
    """The tie draw: ``tie_keys`` when given (validated: [B] floats), else B uniforms drawn here."""
    if tie_keys is None:
        return _uniform_keys(batch, device, generator)
    if not isinstance(tie_keys, torch.Tensor) or tie_keys.shape != (batch,) or not tie_keys.is_floating_point():
        shape = tuple(tie_keys.shape) if isinstance(tie_keys, torch.Tensor) else type(tie_keys).__name__
        raise ValueError(f"tie_keys: expected a float tensor of shape ({batch},) (one key per sample), got "
                         f"{shape}; draw it with torch.rand({batch}, device=features.device)")
    return tie_keys.to(device)


def reduce_ties(
    features: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None,
    *, tie_keys: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tie reduction, materialised: the samples the regularizer keeps.

    features: [B, ...]; targets: [B], [B, 1] or [B, d]. Returns (features [n, ...], targets in
    their input layout): one sample per distinct target (label vector), chosen uniformly at random,
    sorted by ascending target (lexicographic); the batch unchanged (same order) when no target repeats.
    It draws the same random numbers as ``batchwise_ranking_regularizer`` (or uses the same
    ``tie_keys``), so under the same RNG state both keep the same samples. Meant for readers and
    tests: it syncs with the host (boolean indexing), unlike the regularizer.
    """
    _, flat_targets = _flatten_inputs(features, targets)
    _check_finite_targets(targets)
    keys = _draw_or_check_keys(tie_keys, flat_targets.shape[0], flat_targets.device, generator)
    order, first = _tie_reduction_order(flat_targets, keys)
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


def _check_gamma(gamma: Optional[float]) -> None:
    if gamma is None:
        return
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 < gamma < float("inf"):
        raise ValueError(f"gamma={gamma!r}: the weight you multiply the regularizer by must be a finite "
                         "number > 0 (or None for the published, scale-dependent gradient)")


def _is_compiling() -> bool:
    """True while torch.compile traces (torch.compiler.is_compiling does not import torch._dynamo)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def batchwise_ranking_regularizer(
    features: torch.Tensor,
    targets: torch.Tensor,
    interp_strength_lambda: float,
    generator: Optional[torch.Generator] = None,
    label_distance: str = "l1",
    *,
    form: str = "auto",
    gamma: Optional[float] = None,
    tie_keys: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """RankSim loss R: how far the similarity ranking of features is from that of labels.

    Pass ``gamma=`` the weight you multiply R by (the paper's gamma), or use :class:`RankSim`;
    otherwise RankSim's gradient changes with any factor on the loss (fp16 GradScaler, loss shares,
    gradient accumulation). Why: the blackbox backward perturbs the similarities by lambda times the
    gradient arriving at R, so a loss scaled by S perturbs S times too far (docs/library.md). With
    ``gamma`` the perturbation uses the unscaled gradient gamma * dR/dr whatever arrives, and the
    gradient returned is (arriving / gamma) times the published one: the published gradient when
    nothing scales the loss, S times it under a factor S (which a GradScaler's unscale removes).

    features: [B, ...] (flattened to [B, D]; float16/bfloat16/float32, computed in float32, also
    under autocast); targets: [B], [B, 1] or [B, d] labels in any units, ideally on the features'
    device (else they are copied there); interp_strength_lambda: TrueRanker's interpolation strength
    lambda (> 0); generator: optional torch.Generator on the features' device for the tie-reduction
    draws (default: torch's global RNG; distributed runs pass one seeded identically on every rank);
    label_distance: 'l1' (default) or 'l2', the distance between label vectors whose negative is
    the label similarity (for d = 1 both are |y_i - y_j| and give the same result);
    form (keyword only): 'auto' (default: 'compact' on CPU, 'masked' on any other device and under
    torch.compile), 'masked' (dropped samples masked over the full B x B matrix: nothing waits for
    the device, see the module docstring) or 'compact' (dropped samples removed first: n x n work,
    but boolean indexing, which syncs on accelerators). Both forms give the same numbers under the
    same draws. gamma (keyword only): see above; a finite number > 0, or None (the published
    gradient, which assumes nothing scales the loss). tie_keys (keyword only): float [B], the B
    uniforms of the tie draw, used instead of drawing them here (``torch.rand(B, device=...,
    generator=generator)`` is exactly the draw made otherwise); pass them when compiling with
    ``torch.compile(fullgraph=True)``: the draw made here runs eagerly (a graph break), so that
    compiled and eager code keep the same samples under the same seed.
    Returns a float32 scalar tensor; 0 (with zero gradient) when fewer than two distinct labels remain.
    TypeError when features or targets is not a torch.Tensor (e.g. a NumPy array).
    Non-finite targets (NaN, inf): ValueError naming them when the targets are on the CPU (as a
    DataLoader yields them) or form='compact', outside torch.compile. Targets already on an
    accelerator, any targets under form='masked' (which never reads a value on the host), and
    compiled code are not checked, since that would make the host wait for the device: the returned
    loss is NaN instead.
    NaN features are not checked for: their similarities get arbitrary ranks, the returned loss stays
    finite, but the gradient is NaN, so the model's weights become NaN after the step (a NaN
    feature usually makes the prediction and so the main loss NaN too, which the train programs stop on).
    """
    _check_lambda(interp_strength_lambda)
    _check_label_distance(label_distance)
    _check_form(form)
    _check_gamma(gamma)
    flat_features, flat_targets = _flatten_inputs(features, targets)
    compiling = _is_compiling()
    compact = form == "compact" or (form == "auto" and flat_features.device.type == "cpu" and not compiling)
    # The check reads the targets on the host: free while they are on the CPU, and the compact form syncs anyway.
    checked = not compiling and (compact or (form == "auto" and targets.device.type == "cpu"))
    if checked:
        _check_finite_targets(targets)
    keys = _draw_or_check_keys(tie_keys, flat_features.shape[0], flat_features.device, generator)
    with autocast_off(flat_features.device):
        loss = _ranking_loss(flat_features, flat_targets, keys, interp_strength_lambda, compact=compact,
                             label_distance=label_distance, gamma=gamma)
    if not checked:  # NaN or inf in the targets makes the loss NaN, without a host sync (alpha 0 keeps NaN)
        loss = torch.add(loss, flat_targets.sum(), alpha=0)
    return loss


class RankSim(nn.Module):
    """gamma * batchwise_ranking_regularizer, as a module to add to any regression loss.

    ``RankSim(gamma, interp_strength_lambda, label_distance='l1')(features, targets)`` returns
    gamma times the regularizer (float32 scalar), with the same random draws as the function under
    the same RNG state; ``generator`` and ``tie_keys`` (optional) are passed through. It passes
    ``gamma=`` to the function, so its gradient does not change with a factor on the loss (an fp16
    GradScaler, loss shares, gradient accumulation): see ``batchwise_ranking_regularizer``.

    gamma >= 0 (0: the value and gradient are 0). gamma is relative to the task loss's scale: the
    published commands use gamma = 100 with lambda = 2 for age (an L1 loss in years) and gamma = 3e-4
    for STS-B (an MSE on score / 5). Choose it by comparing the gradient norms of gamma * R and of
    the task loss at the features (docs/library.md, "Choosing gamma"; ranksim.diagnostics). Too
    large a gamma collapses the features onto one direction (their mean pairwise cosine goes to 1):
    lower it. No parameters or buffers: adding it to a model changes no state_dict.

        ranksim = RankSim(gamma=100.0, interp_strength_lambda=2.0)
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

    def forward(self, features: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None,
                tie_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        return weighted_regularizer(self.gamma, features, targets, self.interp_strength_lambda, generator=generator,
                                    label_distance=self.label_distance, tie_keys=tie_keys)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma:g}, interp_strength_lambda={self.interp_strength_lambda:g}, "
                f"label_distance={self.label_distance!r}")


def weighted_regularizer(gamma: float, features: torch.Tensor, targets: torch.Tensor, interp_strength_lambda: float,
                         **kwargs) -> torch.Tensor:
    """``gamma * batchwise_ranking_regularizer(..., gamma=gamma)`` for a weight gamma >= 0 (RankSim and
    GatheredRankSim). gamma = 0 computes the regularizer without ``gamma=`` (which must be > 0), so that
    the draws are the same as for any other weight; the zero that arrives in backward then perturbs
    nothing, and the gradient is exactly 0."""
    value = batchwise_ranking_regularizer(features, targets, interp_strength_lambda, gamma=gamma or None, **kwargs)
    return gamma * value


def _ranking_loss(features: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor, interp_strength_lambda: float,
                  compact: bool, label_distance: str = "l1", gamma: Optional[float] = None) -> torch.Tensor:
    """The regularizer on validated features [B, D], targets [B, d] and tie keys [B].

    compact=False: sync-free masked form over the full B x B matrix. compact=True: the kept samples
    are gathered first (boolean indexing: a host sync on accelerators, free on CPU), so all work
    is n x n. Both consume the same random numbers and return the same value and gradient.
    """
    batch = features.shape[0]
    with torch.no_grad():  # the tie reduction and the label ranks are constants of the loss
        # 1. Tie reduction (see the module docstring): kept samples in the reference's order. In that
        #    order the kept flags are ``first`` with or without ties (all True without).
        order, keep = _tie_reduction_order(targets, keys)
        reference_order = torch.where(keep.all(), torch.arange(batch, device=features.device), order)
        n_kept = keep.sum(dtype=torch.float32)  # a tensor: the count never leaves the device
        if compact:
            reference_order = reference_order[keep]  # boolean indexing: fine on CPU, where nothing waits
            pair_keep = None
        else:
            pair_keep = keep[:, None] & keep[None, :]
        # 2. Label ranks, all rows at once: descending distance = ascending label similarity, and a
        #    stable sort keeps index order among ties, as ranking -dist ascending does.
        rank_values_ = rank_values(reference_order.shape[0], n_kept, features.device)
        distances = _label_distances(targets.index_select(0, reference_order), label_distance, few_kernels=not compact)
        if pair_keep is not None:  # dropped entries sort first (= rank last), in index order
            distances = torch.where(pair_keep, distances, float("inf"))
        label_ranks = ranks_from_order(torch.sort(distances, dim=1, descending=True, stable=True).indices,
                                       rank_values_)
    # 3. Feature ranks and the loss, with the blackbox gradient (one autograd node).
    return _RankingLoss.apply(features, reference_order, label_ranks, pair_keep, rank_values_, n_kept,
                              float(interp_strength_lambda), gamma)


class _RankingLoss(torch.autograd.Function):
    """R = sum over kept pairs (i, j) of (r_ij - l_ij)^2 / n, r = TrueRanker(S) row-wise, S the cosine
    similarities of ``features[index]`` (n kept samples; dropped entries masked by ``pair_keep``).

    Backward in closed form (why one node: a short, fixed kernel sequence, and the scale rule): with G
    the gradient arriving at R, TrueRanker's incoming gradient is G * dR/dr = G * 2 (r - l) / n. The
    published blackbox gradient perturbs S by lambda times it; with ``gamma`` the perturbation uses
    gamma * dR/dr instead and the result is multiplied by G / gamma (see batchwise_ranking_regularizer).
    Then the chain rule through S = xn xn^T and xn = x / max(|x|, eps) is written out: dS -> (dS + dS^T) xn,
    then (g - xn (g . xn)) / max(|x|, eps) per row (exact for rows of norm >= eps = 1e-12; below that,
    F.normalize's autograd gives g / eps and this formula differs: such rows carry no direction anyway).
    """

    @staticmethod
    def forward(ctx, features, index, label_ranks, pair_keep, values, n_kept, lam, gamma):
        with autocast_off(features.device):
            x = features.index_select(0, index).to(torch.float32)
            # F.normalize's arithmetic (norm, clamp at eps, divide), so the similarities are the same numbers.
            clamped_norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
            x_norm = x / clamped_norm
            similarities = x_norm @ x_norm.T
            if pair_keep is not None:  # dropped entries sort first (= rank last), in index order
                similarities = torch.where(pair_keep, similarities, float("-inf"))
            ranks = ranks_from_order(torch.sort(similarities, dim=1, stable=True).indices, values)
            loss = F.mse_loss(ranks, label_ranks, reduction="sum") / n_kept
            row_scale = clamped_norm * (lam + 1e-8)  # per-row divisor of the feature gradient
            # gamma * dR/dr = (r - l) * (2 gamma / n); as G / n * 2 would round with G = gamma.
            coefficient = torch.div(2.0 * gamma, n_kept) if gamma is not None else n_kept
        ctx.lam, ctx.gamma, ctx.dtype, ctx.batch = lam, gamma, features.dtype, features.shape[0]
        ctx.few_kernels = pair_keep is not None  # the masked form is the accelerators' one
        ctx.save_for_backward(x_norm, row_scale, similarities, ranks, label_ranks, values, coefficient, index)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x_norm, row_scale, similarities, ranks, label_ranks, values, coefficient, index = ctx.saved_tensors
        with autocast_off(x_norm.device):
            if ctx.gamma is None:  # published: the perturbation uses whatever arrives (coefficient = n)
                coefficient = (grad_loss * 2) / coefficient
            incoming = (ranks - label_ranks) * coefficient  # TrueRanker's incoming gradient
            perturbed = similarities + ctx.lam * incoming  # masked entries stay -inf
            perturbed_ranks = ranks_from_order(torch.sort(perturbed, dim=1, stable=True).indices, values)
            difference = perturbed_ranks - ranks  # = -(r - r'): the blackbox gradient times (lambda + 1e-8)
            grad_x_norm = (difference + difference.T) @ x_norm
            if ctx.few_kernels:  # row dot products [B, 1]: one batched kernel on accelerators ...
                along = torch.bmm(grad_x_norm[:, None, :], x_norm[:, :, None])[:, :, 0]
            else:  # ... while a CPU's BLAS is several times slower at B one-row products than mul + sum
                along = (grad_x_norm * x_norm).sum(dim=1, keepdim=True)
            grad_x = torch.addcmul(grad_x_norm, x_norm, along, value=-1)
            if ctx.gamma is not None:  # times G / gamma, exactly 1 when G = gamma (then bit-equal to published)
                row_scale = row_scale * torch.div(ctx.gamma, grad_loss)
            grad_x = grad_x / row_scale
            fill = torch.empty if index.shape[0] == ctx.batch else torch.zeros  # masked: index is a permutation
            grad = fill((ctx.batch, grad_x.shape[1]), dtype=ctx.dtype, device=grad_x.device)
            grad.index_copy_(0, index, grad_x.to(ctx.dtype))
        return grad, None, None, None, None, None, None, None
