"""DataLoaders of the age programs: shuffled train, in-order val/test, torchrun samplers, ConR/RnC views.

    loaders = age_loaders(datasets, args, ctx)   # {"train", "val", "test"} (+ "fds": the plain train split)
"""
import argparse
from typing import Dict, Mapping, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ranksim.harness.data.age import SPLITS, AgeCSVDataset
from ranksim.harness.data.views import AugmentedViews, strong_view_transform
from ranksim.harness.distributed import DistContext, per_rank_batch
from ranksim.harness.run import cap_workers


def age_loaders(datasets: Mapping[str, AgeCSVDataset], args: argparse.Namespace,
                ctx: DistContext) -> Dict[str, DataLoader]:
    """The loaders of a run: "train", "val", "test" and "fds" (the train split for the FDS statistics
    pass); batches of --batch_size / processes, --workers (capped at the CPUs), torchrun samplers. With --conr the train split also yields two views drawn with its own augmentation, with
    --rnc encoder two strong views (ranksim/harness/data/views.py); the FDS statistics pass ("fds")
    then reads the plain train images."""
    local_batch = per_rank_batch(args.batch_size, ctx.world_size)
    workers = cap_workers(args.workers)
    plain_train = datasets["train"]
    datasets = dict(datasets)
    if args.conr and not args.evaluate:
        datasets["train"] = AugmentedViews(plain_train, plain_train.transform, keep_image=True)
    if args.rnc == "encoder" and not args.evaluate:
        datasets["train"] = AugmentedViews(plain_train, strong_view_transform(args.img_size), keep_image=False)
    samplers = distributed_samplers(datasets, ctx, args.seed, args.fds)
    loaders = build_loaders(datasets, local_batch, workers, ctx.device, samplers)
    if datasets["train"] is not plain_train and args.fds:
        loaders["fds"] = build_loaders({**datasets, "train": plain_train}, local_batch, workers, ctx.device)["train"]
    loaders.setdefault("fds", loaders["train"])  # the FDS statistics pass: the train loader itself unless set above
    return loaders


def build_loaders(datasets: Mapping[str, AgeCSVDataset], batch_size: int, workers: int, device: torch.device,
                  samplers: Optional[Mapping] = None) -> Dict[str, DataLoader]:
    """Train loader (shuffled unless a sampler is given) and val/test loaders (in order).

    samplers: optional {name: Sampler}, e.g. distributed samplers (then batch_size is per process);
    a sampler under the name 'fds' adds an 'fds' loader over the train split (the FDS statistics pass).
    A last train batch of ONE sample is dropped: BatchNorm cannot normalise a single sample whose
    feature map is 1x1 (small --img_size), and RankSim needs two labels.
    """
    samplers = samplers or {}
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    loaders = {}
    for split in SPLITS + (("fds",) if "fds" in samplers else ()):
        ds, sampler = datasets["train" if split == "fds" else split], samplers.get(split)
        train = split == "train"
        n = len(sampler) if sampler is not None else len(ds)  # samples this process loads
        loaders[split] = DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=train and sampler is None,
                                    drop_last=train and n % batch_size == 1, **common)
    return loaders


def distributed_samplers(datasets: Mapping[str, AgeCSVDataset], ctx: DistContext, seed: int,
                         fds: bool) -> Optional[Dict[str, DistributedSampler]]:
    """Samplers of a torchrun job (None for one process): train reshuffled per epoch (set_epoch),
    val/test (and the FDS pass over train) in order. A DistributedSampler pads the shards to equal
    length by repeating a few samples; predictions and FDS features are gathered with their indices
    and de-duplicated (ranksim.harness.distributed.gather_in_dataset_order), so metrics and statistics see
    every sample exactly once."""
    if not ctx.distributed:
        return None
    kw = dict(num_replicas=ctx.world_size, rank=ctx.rank)
    samplers = {"train": DistributedSampler(datasets["train"], shuffle=True, seed=seed, **kw),
                "val": DistributedSampler(datasets["val"], shuffle=False, **kw),
                "test": DistributedSampler(datasets["test"], shuffle=False, **kw)}
    if fds:
        samplers["fds"] = DistributedSampler(datasets["train"], shuffle=False, **kw)
    return samplers


