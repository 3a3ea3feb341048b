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

The gathering with gradient and the global-batch RankSim are the library's (ranksim/distributed.py,
which also derives why nothing needs rescaling); tests/test_distributed.py checks the parameters
after a distributed step against a single-process step.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ranksim.distributed import GatheredRankSim, all_gather_tensor, gather_global_batch
from ranksim.harness.cli import UserError

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
    select_device: the single-process device choice (ranksim.harness.run.select_device).
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


# ------------------------------------------------------------------------------------ gathering


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
    """For loop.update_fds_statistics: this rank's FDS-pass features [n_r, D] and labels [n_r, 1]
    (in the order of ``sampler``) -> every train sample's once, in dataset order."""
    indices = sampler_indices(sampler)

    def gather(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = indices.to(features.device)
        return (gather_in_dataset_order(features, idx, num_samples),
                gather_in_dataset_order(labels.to(features.device), idx, num_samples))

    return gather


# ------------------------------------------------------------------------------------ model


class GlobalBatch:
    """What RankSim sees of a step: the GLOBAL batch under torchrun, this process's batch otherwise.

        global_batch = GlobalBatch(ctx, seed=args.seed)
        ...
        features, targets = global_batch(features, targets)    # identity on one process
        loss = loss + gamma * batchwise_ranking_regularizer(features, targets, lam, gamma=gamma,
                                                             generator=global_batch.generator)

    Under torchrun the features are gathered with their gradient and the targets without
    (ranksim/distributed.py derives why the sum of the ranks' values needs no rescaling), and the
    tie-reduction draws come from ``generator``, seeded identically on every rank (re-seeded per epoch
    by :meth:`set_epoch`), so every rank computes the single-process value. On one process
    ``generator`` is None: the draws come from torch's global RNG, whose state checkpoints save.
    ``sizes`` (per call) gives every rank's share when the shards are unequal (STS-B's last batch).
    """

    def __init__(self, ctx: DistContext, seed: int = 0):
        self.ctx = ctx
        self.seed = seed
        self.generator = torch.Generator(device=ctx.device) if ctx.distributed else None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.generator is not None:
            self.generator.manual_seed(GatheredRankSim.epoch_seed(self.seed, epoch))

    def __call__(self, features: torch.Tensor, targets: torch.Tensor,
                 sizes: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return gather_global_batch(features, targets, sizes)


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
