"""Multi-process (torchrun / DistributedDataParallel) helpers shared by every train.py.

A train.py started by ``torchrun --nproc_per_node N train.py ...`` (one or several nodes) finds
WORLD_SIZE, RANK and LOCAL_RANK in its environment; :func:`init_distributed` then joins the process
group (NCCL on GPUs, gloo on CPU) and pins the process to its GPU. Started as ``python train.py``
(or by torchrun with a single process) nothing is initialised and every helper here is an identity,
so the single-process program runs exactly as before.

What keeps the paper's hyperparameters meaning the same on 1 or N processes:
  * --batch_size is the GLOBAL batch: each rank loads batch_size / N samples (:func:`per_rank_batch`).
  * RankSim sees the GLOBAL batch: features and labels are all-gathered with gradients flowing back
    (:class:`GatheredRankSim`), and its random tie-reduction draws come from a generator seeded
    identically on every rank, so every rank computes the same value.
  * FDS statistics are computed from every rank's features (gathered in dataset order, duplicates of
    the sampler's padding removed) and so equal single-process statistics; each rank then applies the
    same deterministic update, so the FDS buffers stay identical without being broadcast.
  * Val/test predictions are gathered with their dataset indices (:func:`gather_in_dataset_order`):
    the metrics see every sample exactly once, in dataset order, as a single process would.

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
import datetime
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError
from .regularizer import batchwise_ranking_regularizer

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank / world_size (1 and 0 for a plain single process),
    local_rank (GPU index on its node) and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress bars and writes every file."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun with N > 1)."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def env_world_size() -> int:
    """Number of processes torchrun started (1 without torchrun), read before joining the group."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def env_rank() -> int:
    """This process's global rank from the torchrun environment (0 without torchrun)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def init_distributed(gpu: Optional[int], select_device: Callable[[Optional[int]], torch.device]) -> DistContext:
    """Join the torchrun process group, or describe the single process.

    gpu: the --gpu flag (single process only: under torchrun LOCAL_RANK picks the GPU);
    select_device: the single-process device choice (ranksim.runs.select_device).
    Backend: NCCL when CUDA is available (one GPU per process, cuda:LOCAL_RANK), else gloo on CPU.
    """
    if not launched_by_torchrun():
        return DistContext(device=select_device(gpu))
    if gpu is not None:
        raise UserError(f"--gpu {gpu}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                        "leave out --gpu (choose GPUs with CUDA_VISIBLE_DEVICES)")
    rank, world, local = (int(os.environ[v]) for v in TORCHRUN_VARIABLES)
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun --nproc_per_node: process {local} of this node has no GPU (this node has "
                            f"{torch.cuda.device_count()}); start at most that many processes per node")
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """--batch_size is global: each of ``world_size`` ranks loads batch_size / world_size samples."""
    if batch_size % world_size:
        raise UserError(f"--batch_size {batch_size}: the global batch must be divisible by the number of "
                        f"processes N = {world_size}; pass a multiple of {world_size} (each process gets "
                        f"batch_size / N samples)")
    return batch_size // world_size


def run_on_every_rank(run: Callable[[DistContext], T], check: Callable[[], None], batch_size: int,
                      gpu: Optional[int], select_device: Callable[[Optional[int]], torch.device]) -> T:
    """The frame of every train.py's main(): check the flags, join the torchrun process group (if
    any), return ``run(ctx)``, and leave the group again whatever happens.

    ``check()`` validates the parsed flags (raising UserError); ``batch_size`` is the global
    --batch_size, checked against the process count BEFORE joining, so every rank stops at once on
    a bad value instead of some waiting forever in the group. A UserError stops every rank; only
    rank 0 re-raises it (so ``run_cli`` prints the one line once), the other ranks exit with the
    same code 2 quietly.
    """
    try:
        check()
        per_rank_batch(batch_size, env_world_size())  # before joining: every rank stops at once
        ctx = init_distributed(gpu, select_device)
        try:
            return run(ctx)
        finally:
            cleanup_distributed()
    except UserError:
        if env_rank() == 0:
            raise
        raise SystemExit(2) from None  # rank 0 prints the one-line error; the other ranks exit quietly


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects, e.g. the run directory path)."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over the ranks; the tensor itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# ------------------------------------------------------------------------------------ gathering


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


def gather_in_dataset_order(values: torch.Tensor, indices: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Every rank's ``values`` [n_r, ...] for dataset rows ``indices`` [n_r] -> [num_samples, ...] in
    dataset order, on every rank.

    The ranks' shards come from a DistributedSampler, which pads them to equal length by repeating
    a few indices: each row is kept once (a repeated row was computed by identical replicas from
    the same input, so either copy is the same). UserError-free: a row no rank holds is a bug and
    raises RuntimeError.
    """
    all_values = all_gather_tensor(values)
    all_indices = all_gather_tensor(indices.to(values.device)).long()
    out = all_values.new_zeros((num_samples,) + tuple(values.shape[1:]))
    seen = torch.zeros(num_samples, dtype=torch.bool, device=values.device)
    out[all_indices] = all_values
    seen[all_indices] = True
    if not bool(seen.all()):
        raise RuntimeError(f"gather_in_dataset_order: {int((~seen).sum())} of {num_samples} rows were "
                           "held by no rank")
    return out


def sampler_indices(sampler) -> torch.Tensor:
    """The dataset indices a (non-shuffling) sampler yields, in order: int64 [n]."""
    return torch.as_tensor(list(iter(sampler)), dtype=torch.int64)


def gather_predictions(preds: np.ndarray, labels: np.ndarray, sampler, num_samples: int,
                       ctx: DistContext) -> Tuple[np.ndarray, np.ndarray]:
    """This rank's predictions/labels (float64 [n_r], in the order of its ``sampler``) -> the whole
    split's, in dataset order, on every rank. Identity for a single process."""
    if not ctx.distributed:
        return preds, labels
    indices = sampler_indices(sampler)
    stacked = torch.from_numpy(np.stack([preds, labels], axis=1)).to(ctx.device)
    full = gather_in_dataset_order(stacked, indices.to(ctx.device), num_samples).cpu().numpy()
    return full[:, 0].copy(), full[:, 1].copy()


def fds_gather(sampler, num_samples: int) -> Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """For engine.update_fds_statistics: this rank's FDS-pass features [n_r, D] and labels [n_r, 1]
    (in the order of ``sampler``) -> every train sample's once, in dataset order."""
    indices = sampler_indices(sampler)

    def gather(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = indices.to(features.device)
        return (gather_in_dataset_order(features, idx, num_samples),
                gather_in_dataset_order(labels.to(features.device), idx, num_samples))

    return gather


# ------------------------------------------------------------------------------------ RankSim


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
        ranksim_loss = GatheredRankSim(gamma=1.0, interpolation_lambda=2.0, device=device, seed=0)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            ranksim_loss.set_epoch(epoch)
            for x, y in loader:                      # y: [b] or [b, d] on this rank
                features = backbone(x.to(device))    # the DDP-wrapped model's feature output
                loss = F.l1_loss(head(features), y.to(device)) + ranksim_loss(features, y.to(device))
                optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    def __init__(self, gamma: float, interpolation_lambda: float, device: torch.device, seed: int = 0,
                 label_distance: str = "l1"):
        self.gamma, self.interpolation_lambda = gamma, interpolation_lambda
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
        all_features = all_gather_with_grad(features.reshape(features.shape[0], -1), sizes)
        all_targets = all_gather_tensor(targets.reshape(targets.shape[0], -1).to(features.device), sizes)
        with torch.autocast(features.device.type, enabled=False):  # RankSim in float32 under --amp
            return self.gamma * batchwise_ranking_regularizer(all_features.float(), all_targets,
                                                              self.interpolation_lambda, generator=self.generator,
                                                              label_distance=self.label_distance)


# ------------------------------------------------------------------------------------ model


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ctx.device); the model itself for one process.

    sync_bn: BatchNorm -> SyncBatchNorm (batch statistics over the global batch; CUDA only).
    broadcast_buffers=False: DDP's default broadcasts rank 0's buffers before every forward. FDS
    buffers do not need it (every rank applies the same update to the same gathered statistics,
    so they stay identical; broadcasting them would also send ~5 MB per step for ResNet-50), and
    BatchNorm running statistics are used only in evaluation: :func:`sync_buffers` copies rank 0's
    to every rank before each evaluation/checkpoint, which gives the same model DDP's default would.
    """
    if not ctx.distributed:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


@torch.no_grad()
def sync_buffers(model: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics; FDS buffers, already equal) to every
    rank, so that all replicas evaluate the model rank 0 saves."""
    if not ctx.distributed:
        return
    for buffer in model.buffers():  # deduplicated: FDS's aliased buffers are visited once
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            dist.broadcast(buffer, src=src)


def check_sync_bn(sync_bn: bool, ctx: DistContext) -> None:
    """--sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel)."""
    if sync_bn and ctx.distributed and ctx.device.type != "cuda":
        raise UserError("--sync_bn: SyncBatchNorm runs on GPUs only (this torchrun job runs on CPUs with gloo); "
                        "leave out --sync_bn on CPU")


def split_sizes(total: int, world_size: int) -> List[int]:
    """Sizes of ``total`` rows split over ``world_size`` ranks in contiguous slices (first ranks get
    the remainder): e.g. 5 over 2 -> [3, 2]."""
    base, extra = divmod(total, world_size)
    return [base + (r < extra) for r in range(world_size)]


@torch.no_grad()
def sync_state(model: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (e.g. after rank 0 loaded a checkpoint)."""
    if not ctx.distributed:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=src)
