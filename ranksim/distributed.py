"""Gathering a global batch across processes for RankSim, with the gradient scaling DDP needs.

Public: :func:`all_gather_with_grad` and :class:`GatheredRankSim` (``from ranksim import ...``), for any
DistributedDataParallel loop; without a process group both are identities / plain RankSim. The harness
(ranksim/harness/distributed.py) builds the training programs' multi-process plumbing on them.

Gradient scaling of the gathered regularizer (why nothing needs rescaling)
--------------------------------------------------------------------------
N ranks, rank r holds the local features F_r = f(x_r; theta) (b = B / N rows); F = [F_0; ...; F_{N-1}]
is the global batch and R(F) the regularizer. The single-process objective on that batch is
    L = mean_B(base) + gamma * R(F),   dL/dtheta = grad mean_B(base) + gamma * sum_r J_r^T G_r,
with J_r = dF_r/dtheta and G = dR/dF (G_r its rows of rank r).
Under DDP rank r back-propagates L_r = mean_b(base on shard r) + gamma * R(all_gather(F)) and DDP
AVERAGES the parameter gradients over ranks: g = (1/N) sum_r dL_r/dtheta. Hence
  * base term: (1/N) sum_r grad mean_b(shard r) = grad mean_B(base) when the shards are equal-sized
    (the DistributedSampler pads them so), exactly the single-process term;
  * regularizer: every rank computes the same R on the same gathered F, so every rank holds the same
    upstream gradient G. The all-gather's backward SUMS the upstream gradients of all ranks
    (all_reduce) and returns rank r's slice: N * G_r. Rank r's parameter gradient is then
    gamma * J_r^T (N * G_r), and DDP's average gives (1/N) sum_r gamma * N * J_r^T G_r =
    gamma * sum_r J_r^T G_r, exactly the single-process term.
So each rank adds gamma * R unscaled (its logged value is the single-process value too). The summing
backward is the true adjoint of all_gather (the objective DDP optimises is (1/N) sum_r L_r, and every
L_r depends on every F_s); a backward that only took the local slice without summing would need the
loss multiplied by N instead, and would be wrong as soon as the ranks' losses differ.
tests/test_distributed.py checks the resulting parameters against a single-process step.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ranksim.regularizer import weighted_regularizer


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather of [b_r, ...] tensors (sizes given per rank) into [sum b_r, ...], differentiable.

    Backward: the upstream gradients of ALL ranks are summed (all_reduce) and each rank keeps the
    rows of its own input (see the module docstring for why this is the right scaling under DDP).
    An all_reduce of the whole [B, ...] gradient, not a reduce-scatter: gloo has no reduce-scatter,
    and the tensor is small (B x feature_dim).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: Tuple[int, ...], rank: int):
        ctx.sizes, ctx.rank = sizes, rank
        largest = max(sizes)
        padded = local
        if local.shape[0] < largest:  # all_gather needs equal shapes: pad, then trim
            padded = torch.cat([local, local.new_zeros((largest - local.shape[0],) + local.shape[1:])])
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(local: torch.Tensor, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Concatenate every rank's ``local`` [b_r, ...] in rank order -> [sum b_r, ...], with gradients
    flowing back to each rank's own rows. ``sizes``: b_r of every rank (None: all equal to this
    rank's). Returns ``local`` itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    sizes = tuple(int(s) for s in sizes) if sizes is not None else (local.shape[0],) * world
    if len(sizes) != world or sizes[dist.get_rank()] != local.shape[0]:
        raise ValueError(f"sizes {sizes}: need one size per rank ({world}) matching this rank's "
                         f"{local.shape[0]} rows")
    return _AllGatherWithGrad.apply(local, sizes, dist.get_rank())


def all_gather_tensor(local: torch.Tensor, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """all_gather without gradient (labels, predictions, indices): [sum b_r, ...] in rank order."""
    with torch.no_grad():
        return all_gather_with_grad(local.detach(), sizes)


def gather_global_batch(features: torch.Tensor, targets: torch.Tensor, sizes: Optional[Sequence[int]] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``features`` [b, ...] and ``targets`` [b] / [b, d] -> every rank's, in rank order:
    features [B, D] with gradients flowing back to each rank's own rows (see the module docstring),
    targets [B, d] without. ``sizes``: b_r of every rank (None: all equal to this rank's). Both are
    returned unchanged without a process group (or with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, targets
    all_features = all_gather_with_grad(features.reshape(features.shape[0], -1), sizes)
    all_targets = all_gather_tensor(targets.reshape(targets.shape[0], -1).to(features.device), sizes)
    return all_features, all_targets


class GatheredRankSim:
    """gamma * RankSim on the GLOBAL batch: ``regularizer(local_features [b, D], local_targets [b, d])``.

    Public, for your own DistributedDataParallel loops (``from ranksim import GatheredRankSim``).
    Every rank gathers all features (with gradient, see the module docstring) and targets, and
    draws the tie-reduction random numbers from its own generator, seeded identically on every
    rank (``seed``; re-seeded by :meth:`set_epoch` so that a resumed run draws what it would have),
    so every rank keeps the same samples and computes the same value: the one a single process
    computes on the whole batch. Each rank must call it once per step with the same local batch
    size (``sizes`` overrides that for unequal shards). Add its value to each rank's loss
    unscaled: DDP's gradient averaging then gives the single-process gradient (module docstring).
    Without a process group (or with one process) it is RankSim on the local batch.
    label_distance: 'l1' | 'l2', as in ``batchwise_ranking_regularizer``.

        # torchrun --nproc_per_node N my_train.py; dist.init_process_group(...) done, model in DDP
        ranksim_loss = GatheredRankSim(gamma=1.0, interp_strength_lambda=2.0, device=device, seed=0)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            ranksim_loss.set_epoch(epoch)
            for x, y in loader:                      # y: [b] or [b, d] on this rank
                features = backbone(x.to(device))    # the DDP-wrapped model's feature output
                loss = F.l1_loss(head(features), y.to(device)) + ranksim_loss(features, y.to(device))
                optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    def __init__(self, gamma: float, interp_strength_lambda: float, device: torch.device, seed: int = 0,
                 label_distance: str = "l1"):
        self.gamma, self.interp_strength_lambda = gamma, interp_strength_lambda
        self.label_distance = label_distance
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.set_epoch(0)

    @staticmethod
    def epoch_seed(seed: int, epoch: int) -> int:
        """The generator's seed in ``epoch``: a function of the run's seed and the epoch only, so the
        same on every rank."""
        return (seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.epoch_seed(self.seed, epoch))

    def __call__(self, features: torch.Tensor, targets: torch.Tensor,
                 sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
        all_features, all_targets = gather_global_batch(features, targets, sizes)
        # float32 also under autocast: the regularizer computes in float32 itself. gamma * R with gamma=
        # passed, so its gradient does not change with a factor on the loss (as RankSim's).
        return weighted_regularizer(self.gamma, all_features, all_targets, self.interp_strength_lambda,
                                    generator=self.generator, label_distance=self.label_distance)
