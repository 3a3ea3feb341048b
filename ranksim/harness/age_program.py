"""The training program of the image benchmarks (AgeDB-DIR, IMDB-WIKI-DIR), shared by both folders.

``agedb-dir/train.py`` and ``imdb-wiki-dir/train.py`` only pass their defaults and dataset class:

    run_cli(main, sys.argv[1:], DEFAULTS, AgeDB)

What one run does (docs/published_behaviour.md §1.6, §2, §3, §7):
  1. read ``<data_dir>/<csv>``, per-sample train weights (--reweight, --lds), the three splits;
  2. build the ResNet (+FDS); --pretrained loads a backbone (RRT: --retrain_fc trains only the head);
     --resume restores model, optimizer, epoch, best score, FDS state and RNG state;
  3. per epoch: train (base loss + gamma * RankSim on the pooled features), update the FDS statistics,
     validate (MSE, MAE, GM), save ``ckpt.pth.tar`` (published layout, atomic) and
     ``ckpt.best.pth.tar`` when val MAE (MSE with --loss mse) improves;
  4. load the best checkpoint, test per shot group, print the table, write ``results.json``.
``--evaluate --resume CKPT`` does only step 4 for CKPT (e.g. a released checkpoint).
Later DIR methods (--bmse Balanced MSE, --conr ConR, --rnc Rank-N-Contrast) come from
ranksim/harness/comparators.py; results.json also holds ``balanced_mae`` (Balanced MSE's metric).

Multi-GPU: ``torchrun --nproc_per_node N train.py ...`` runs the same program on N processes
(DistributedDataParallel; --batch_size stays the global batch, RankSim and FDS see the global batch
and the whole split, only rank 0 writes; see ranksim/harness/distributed.py). --amp bf16|fp16 and
--channels_last speed up GPU training; the defaults (fp32) are the paper's.

Run directory: ``<store_root>/<run name>`` (the name encodes the settings and a timestamp unless
--store_name is given); a directory that holds anything is never reused. --resume of an unfinished
run continues in its own directory, of a finished one in ``<its name>_2``; --evaluate writes to
``eval_<checkpoint's run directory, cut to 40 characters>_<timestamp>`` (the rule of ranksim/harness/run.py).
--evaluate and --resume take the model-defining flags (--model, --img_size, the FDS flags) from the
flags the checkpoint records; a flag given on the command line with another value is refused. Resuming is exact (same numbers as an uninterrupted run) with
--workers 0; with loader workers the augmentation random streams of the workers are not restored.
"""
import argparse
import math
import os
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Type

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ranksim.balanced_mse import balanced_mae
from ranksim.distributed import GatheredRankSim
from ranksim.harness.checkpoint import (
    capture_rng_state,
    check_checkpoint_flag,
    copy_as_best,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_of,
    unwrap_model,
)
from ranksim.harness.cli import OneLineArgumentParser, UserError
from ranksim.harness.comparators import (
    Comparator,
    add_comparator_flags,
    build_comparator,
    check_comparator_flags,
    comparator_run_name,
    parse_with_stage_defaults,
)
from ranksim.harness.data.age import SPLITS, AgeCSVDataset
from ranksim.harness.data.views import AugmentedViews, strong_view_transform
from ranksim.harness.distributed import (
    DistContext,
    broadcast_object,
    check_sync_bn,
    fds_gather,
    gather_predictions,
    mean_over_ranks,
    per_rank_batch,
    run_on_every_rank,
    sync_buffers,
    sync_state,
    wrap_model,
)
from ranksim.harness.flags import adopt_recorded_flags, check_method_flags, check_positive, explicit_flags
from ranksim.harness.loop import (
    DivergenceError,
    StepOptions,
    exploding_loss_limit,
    freeze_all_but_head,
    keep_float32,
    make_step_options,
    predict,
    ranksim_regularizer,
    train_one_epoch,
    update_fds_statistics,
)
from ranksim.harness.models.resnet import MODELS, build_model
from ranksim.harness.run import (
    LOG_NAME,
    RESULTS_NAME,
    RunLogger,
    cap_workers,
    evaluation_run_name,
    make_run_dir,
    seed_everything,
    select_device,
    write_results_json,
)
from ranksim.kernels import KERNELS
from ranksim.losses import LOSSES, get_loss, published_age_loss
from ranksim.metrics import age_shot_groups, format_metrics_table, per_label_mae, regression_metrics
from ranksim.weighting import REWEIGHTS, label_weights

CKPT_NAME = "ckpt.pth.tar"
SCALER_KEY = "scaler"  # extra checkpoint key: the fp16 GradScaler state (--amp fp16)
BEST_NAME = "ckpt.best.pth.tar"

# AgeDB-DIR values of the flags whose default depends on the dataset (docs/published_behaviour.md §7); IMDB-WIKI-DIR's
# train.py overrides them (lds_ks/fds_ks 5, bucket_start 0, epoch 90).
AGEDB_DEFAULTS = {"dataset": "agedb", "lds_ks": 9, "fds_ks": 9, "bucket_start": 3, "epoch": 120}


PUBLISHED_QUIRKS_HELP = (
    "reproduce the published code's unintended behaviours the paper's numbers depend on: INV+LDS smooths "
    "integer counts (truncated), focal losses ignore the sample weights and Huber uses them as its threshold, "
    "divergence limit 1e6 (see the README's differences table)")
MAX_IMG_SIZE = 1024  # 4.6x the paper's 224 per side (~21x the memory); beyond it a run only dies of memory later


def is_head_key(key: str) -> bool:
    """Keys RRT does not load from --pretrained (docs/published_behaviour.md §7: names containing 'linear' or 'fc')."""
    return "linear" in key or "fc" in key


def build_parser(defaults: Optional[Mapping] = None) -> argparse.ArgumentParser:
    """Every flag of docs/published_behaviour.md §7 (plus --seed); ``defaults`` overrides the dataset-dependent ones."""
    d = {**AGEDB_DEFAULTS, **(defaults or {})}
    p = OneLineArgumentParser(
        description=f"Train / evaluate an age regressor on {d['dataset']} (RankSim, LDS, FDS, RRT, Focal-R).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("imbalanced-regression methods")
    g.add_argument("--reweight", default="none", choices=REWEIGHTS, help="cost-sensitive re-weighting (SQINV = sqrt_inv)")
    g.add_argument("--lds", action="store_true", help="label distribution smoothing of the weights (needs --reweight)")
    g.add_argument("--lds_kernel", default="gaussian", choices=KERNELS)
    g.add_argument("--lds_ks", type=int, default=d["lds_ks"], help="LDS kernel size (odd)")
    g.add_argument("--lds_sigma", type=float, default=1.0)
    g.add_argument("--fds", action="store_true", help="feature distribution smoothing")
    g.add_argument("--fds_kernel", default="gaussian", choices=KERNELS)
    g.add_argument("--fds_ks", type=int, default=d["fds_ks"], help="FDS kernel size (odd)")
    g.add_argument("--fds_sigma", type=float, default=1.0)
    g.add_argument("--start_update", type=int, default=0, help="first epoch whose features update FDS statistics")
    g.add_argument("--start_smooth", type=int, default=1, help="first epoch that smooths features")
    g.add_argument("--bucket_num", type=int, default=100, help="FDS label buckets")
    g.add_argument("--bucket_start", type=int, default=d["bucket_start"], help="first FDS bucket label")
    g.add_argument("--fds_mmt", type=float, default=0.9, help="momentum of the FDS running statistics")
    g.add_argument("--retrain_fc", action="store_true", help="RRT: train only the head of --pretrained")
    g.add_argument("--regularization_weight", type=float, default=0.0, help="RankSim weight gamma (0 = off)")
    g.add_argument("--interpolation_lambda", type=float, default=1.0, help="RankSim interpolation strength lambda")
    g.add_argument("--published_quirks", action="store_true", help=PUBLISHED_QUIRKS_HELP)

    g = p.add_argument_group("data, model, run")
    g.add_argument("--dataset", default=d["dataset"], choices=[d["dataset"]])
    g.add_argument("--data_dir", default="./data", help=f"folder holding {d['dataset']}'s split CSV and images")
    g.add_argument("--model", default="resnet50", choices=sorted(MODELS))
    g.add_argument("--store_root", default="checkpoint", help="root folder of the run directories")
    g.add_argument("--store_name", default="", help="run directory name (default: settings + timestamp)")
    g.add_argument("--gpu", type=int, default=None, help="CUDA device index (default: CUDA if available, else CPU)")
    g.add_argument("--workers", type=int, default=32, help="data-loader processes (capped at the CPU count)")
    g.add_argument("--seed", type=int, default=0, help="random seed (not in the published code)")
    g.add_argument("--print_freq", type=int, default=10, help="log the running loss every N iterations")
    g.add_argument("--resume", default="", help="checkpoint to continue from (or to test with --evaluate)")
    g.add_argument("--pretrained", default="", help="checkpoint whose backbone initialises the model (RRT)")
    g.add_argument("--evaluate", action="store_true", help="only test the --resume checkpoint")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    g.add_argument("--loss", default="l1", choices=sorted(LOSSES))
    g.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    g.add_argument("--epoch", type=int, default=d["epoch"], help="number of epochs")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (Adam runs without)")
    g.add_argument("--schedule", type=int, nargs="*", default=[60, 80], help="epochs at which lr is x0.1")
    g.add_argument("--batch_size", type=int, default=256)
    g.add_argument("--img_size", type=int, default=224, help="side of the square input images")

    g = p.add_argument_group("multi-GPU and speed (torchrun --nproc_per_node N train.py ...)")
    g.add_argument("--sync_bn", action="store_true", help="under torchrun: BatchNorm statistics over the global "
                   "batch (SyncBatchNorm, GPUs only) instead of each process's share")
    g.add_argument("--amp", default="", choices=["", "bf16", "fp16"], help="mixed-precision training (autocast; "
                   "fp16 with loss scaling); RankSim, the loss, the head and the metrics stay float32")
    g.add_argument("--channels_last", action="store_true", help="NHWC memory format (faster convolutions on GPUs)")
    add_comparator_flags(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """UserError (one line: flag, value, fix) for flag combinations that cannot work."""
    check_method_flags(args)  # LDS / FDS / RankSim flags, shared with sts-b-dir/train.py
    if args.retrain_fc and not args.pretrained:
        raise UserError("--retrain_fc: RRT retrains the head of a trained model; pass --pretrained <ckpt.pth.tar> "
                        "of a first-stage run")
    if args.evaluate and not args.resume:
        raise UserError("--evaluate: pass the checkpoint to test with --resume <ckpt.pth.tar>")
    check_positive(args, ("lr", "epoch", "batch_size", "img_size", "print_freq"))
    if args.img_size > MAX_IMG_SIZE:
        raise UserError(f"--img_size {args.img_size}: at most {MAX_IMG_SIZE} (activation memory grows with the "
                        f"pixel count: {(args.img_size / 224) ** 2:.0f}x that of the paper's 224); use e.g. 224")
    if args.batch_size < 2 and not args.evaluate:
        raise UserError(f"--batch_size {args.batch_size}: training needs at least 2 samples per batch (BatchNorm "
                        "normalises over the batch and RankSim compares the labels in it); use 2 or more")
    if args.resume:
        check_checkpoint_flag("--resume", args.resume, BEST_NAME if args.evaluate else CKPT_NAME)
    if args.pretrained:
        check_checkpoint_flag("--pretrained", args.pretrained, BEST_NAME)
    check_comparator_flags(args)


# Settings that define the model a checkpoint holds: --evaluate / --resume take them from the flags the
# checkpoint records (see adopt_checkpoint_settings).
FDS_FLAGS = ("fds", "fds_kernel", "fds_ks", "fds_sigma", "start_update", "start_smooth", "bucket_num",
             "bucket_start", "fds_mmt")
MODEL_FLAGS = ("model", "img_size") + FDS_FLAGS


def adopt_checkpoint_settings(args: argparse.Namespace, explicit) -> None:
    """--resume CKPT (with or without --evaluate): MODEL_FLAGS from CKPT's recorded flags ('args', written
    by this program); a contradicting flag in ``explicit`` (those given on the command line) is a UserError.
    --evaluate takes the FDS flags only from a checkpoint trained with FDS (FDS does not smooth in
    evaluation; its buffers then load as trained), so evaluating a run without FDS keeps this program's
    FDS defaults. A checkpoint without recorded flags (published) gives only its 'model' entry; the other
    settings stay as passed, by default the paper's."""
    if not args.resume:
        return
    check_checkpoint_flag("--resume", args.resume, BEST_NAME if args.evaluate else CKPT_NAME)
    checkpoint = load_checkpoint(args.resume)
    recorded = checkpoint.get("args")
    if not isinstance(recorded, dict):
        recorded = {"model": checkpoint["model"]} if isinstance(checkpoint.get("model"), str) else {}
    flags = MODEL_FLAGS if not args.evaluate or recorded.get("fds") else ("model", "img_size")
    adopt_recorded_flags(args, explicit, recorded, flags, f"--resume {args.resume}")


def run_name(args: argparse.Namespace) -> str:
    """Directory name encoding the settings, e.g.
    agedb_resnet50_sqrt_inv_lds_gau_9_1.0_ranksim_100.0_2.0_adam_l1_0.00025_64_20240101-120000."""
    parts = [args.dataset, args.model, args.reweight]
    if args.lds:
        parts += ["lds", args.lds_kernel[:3], str(args.lds_ks), str(args.lds_sigma)]
    if args.fds:
        parts += ["fds", args.fds_kernel[:3], str(args.fds_ks), str(args.fds_sigma),
                  str(args.start_update), str(args.start_smooth), str(args.fds_mmt)]
    if args.regularization_weight > 0:
        parts += ["ranksim", str(args.regularization_weight), str(args.interpolation_lambda)]
    if args.retrain_fc:
        parts += ["rrt"]
    parts += comparator_run_name(args)
    parts += [args.optimizer, args.loss, str(args.lr), str(args.batch_size), time.strftime("%Y%m%d-%H%M%S")]
    return "_".join(parts)


def lr_at(epoch: int, base_lr: float, schedule: Sequence[int]) -> float:
    """Learning rate of 0-based ``epoch``: base_lr x 0.1 for every milestone <= epoch (stateless, so a
    resumed run is at the right point of the schedule)."""
    return base_lr * 0.1 ** sum(epoch >= milestone for milestone in schedule)


def cosine_lr_at(epoch: int, base_lr: float, epochs: int) -> float:
    """--lr_cosine (Rank-N-Contrast's schedule): from base_lr at epoch 0 towards base_lr * 1e-3 at --epoch."""
    final = base_lr * 0.1 ** 3
    return final + (base_lr - final) * (1 + math.cos(math.pi * epoch / epochs)) / 2


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


def check_arch(checkpoint: Mapping, path: str, model_name: str) -> None:
    """UserError when the checkpoint's 'model' entry names another architecture than --model."""
    arch = checkpoint.get("model")
    if isinstance(arch, str) and arch != model_name:
        raise UserError(f"{path}: checkpoint of a {arch}, but --model is {model_name}; pass --model {arch} "
                        f"or another checkpoint")


def predict_split(model, loader, device, show_progress: bool, desc: str, ctx: Optional[DistContext] = None,
                  options: Optional[StepOptions] = None):
    """predict() over a split; under torchrun every rank predicts its shard and gets the whole split's
    predictions and labels back, in dataset order (float64 [N] each)."""
    preds, labels = predict(model, loader, device, show_progress, desc=desc, options=options)
    if ctx is not None and ctx.distributed:
        preds, labels = gather_predictions(preds, labels, loader.sampler, len(loader.dataset), ctx)
    return preds, labels


def evaluate_test_split(model, loader, train_labels: np.ndarray, device, gm_eps: float, show_progress: bool,
                        ctx: Optional[DistContext] = None, options: Optional[StepOptions] = None) -> dict:
    """Test-split metrics: {"metrics": per shot group, "per_label": per integer age}."""
    preds, labels = predict_split(model, loader, device, show_progress, "test", ctx, options)
    groups = age_shot_groups(train_labels, labels)
    return {"metrics": regression_metrics(preds, labels, groups, gm_eps=gm_eps, gm_eps_mode="overall"),
            "per_label": per_label_mae(preds, labels),
            "balanced_mae": balanced_mae(preds, labels, groups)}


def finish(logger: RunLogger, run_dir: Path, args, checkpoint_path: str, epoch: int, sizes: dict,
           tested: dict) -> dict:
    """Print the test table and write results.json; returns the results dict."""
    results = {"dataset": args.dataset, "split": "test", "checkpoint": os.fspath(checkpoint_path), "epoch": epoch,
               "args": vars(args), "sizes": sizes, **tested}
    logger.info(f"test results of {checkpoint_path} (epoch {epoch}):\n{format_metrics_table(tested['metrics'])}")
    if logger.enabled:  # only the main process writes files
        logger.info(f"wrote {write_results_json(run_dir, results)}")
    return results


def main(argv: Optional[Sequence[str]] = None, defaults: Optional[Mapping] = None,
         dataset_cls: Type[AgeCSVDataset] = AgeCSVDataset) -> dict:
    """Run the program (see the module docstring) and return the results dict of results.json.

    argv: command-line arguments (None: sys.argv[1:]); defaults: the dataset's flag defaults;
    dataset_cls: AgeCSVDataset subclass with the dataset's csv_name / how_to_create / overall_gm_eps.
    Under torchrun it joins the process group first and leaves it at the end; a user error stops
    every rank, and only rank 0 prints it (the others exit with the same code, silently).
    """
    args = parse_with_stage_defaults(build_parser(defaults), argv)

    def check() -> None:
        adopt_checkpoint_settings(args, explicit_flags(lambda: build_parser(defaults), argv))
        check_args(args)

    return run_on_every_rank(lambda ctx: run(args, dataset_cls, ctx), check=check,
                             batch_size=args.batch_size, gpu=args.gpu, select_device=select_device)


def run(args: argparse.Namespace, dataset_cls: Type[AgeCSVDataset], ctx: DistContext) -> dict:
    """main() after the flags are parsed and the process group (if any) is joined."""
    device = ctx.device
    local_batch = per_rank_batch(args.batch_size, ctx.world_size)
    check_sync_bn(args.sync_bn, ctx)
    options = make_step_options(args.amp, args.channels_last, device,
                                reduce_loss=mean_over_ranks if ctx.distributed else None)
    workers = cap_workers(args.workers)
    # Rank r seeds with seed + r: rank 0 (and a single process) as before, other ranks draw their own
    # augmentations. The model's initial weights come from rank 0 (DDP broadcasts them).
    seed_everything(args.seed + ctx.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    show = ctx.is_main

    # Data: split table, per-sample train weights (a deterministic function of the train labels, so
    # every rank computes the same), the three splits.
    table = dataset_cls.read_table(args.data_dir)
    dataset_cls.check_images(args.data_dir, table)  # a missing image stops here, not mid-epoch
    train_labels = table.loc[table["split"] == "train", "age"].to_numpy(dtype=np.float32)
    weights = label_weights(train_labels, args.reweight, args.lds, args.lds_kernel, args.lds_ks, args.lds_sigma,
                            label_kind="age", integer_smoothing=args.published_quirks)
    datasets = {split: dataset_cls(args.data_dir, table, args.img_size, split,
                                   weights if split == "train" else None) for split in SPLITS}
    sizes = {split: len(ds) for split, ds in datasets.items()}
    if ctx.distributed and (args.bmse != "none" or args.conr or args.rnc != "none"):
        raise UserError("--bmse / --conr / --rnc: not supported under torchrun yet; run them in one process")
    plain_train = datasets["train"]
    if args.conr and not args.evaluate:  # ConR's two views: the benchmark's own train augmentation
        datasets["train"] = AugmentedViews(plain_train, plain_train.transform, keep_image=True)
    if args.rnc == "encoder" and not args.evaluate:
        datasets["train"] = AugmentedViews(plain_train, strong_view_transform(args.img_size), keep_image=False)
    samplers = distributed_samplers(datasets, ctx, args.seed, args.fds)
    loaders = build_loaders(datasets, local_batch, workers, device, samplers)
    if datasets["train"] is not plain_train and args.fds:  # the FDS statistics pass reads plain images
        loaders["fds"] = build_loaders({**datasets, "train": plain_train}, local_batch, workers, device)["train"]
    comparator = Comparator() if args.evaluate else build_comparator(args, train_labels, device)

    model = build_model(args.model, fds=args.fds, bucket_num=args.bucket_num, bucket_start=args.bucket_start,
                        start_update=args.start_update, start_smooth=args.start_smooth, kernel=args.fds_kernel,
                        ks=args.fds_ks, sigma=args.fds_sigma, momentum=args.fds_mmt,
                        return_encoding=args.regularization_weight > 0 or comparator.view_loss is not None).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if options.amp_dtype is not None:
        keep_float32(model.linear)

    if args.evaluate:
        return evaluate_checkpoint(args, model, loaders, train_labels, sizes, device, dataset_cls, show, ctx, options)

    report = load_pretrained(args, model) if args.pretrained and not args.resume else None
    if args.retrain_fc:
        freeze_all_but_head(model)  # before DDP wraps the model: it registers the trainable parameters
    optimizer = build_optimizer(args, model)
    comparator.add_sigma_group(optimizer, args.bmse_sigma_lr)
    if args.resume:
        start_epoch, best_loss, run_dir = resume_from_checkpoint(args, model, optimizer, ctx, options)
        comparator.restore(load_checkpoint(args.resume), args.resume)
    else:
        start_epoch, best_loss = 0, math.inf
        run_dir = make_run_dir(args.store_root, args.store_name or run_name(args)) if ctx.is_main else None
    run_dir, best_loss = broadcast_object((run_dir, best_loss), ctx)
    if ctx.is_main:
        comparator.save_prior(run_dir)
    train_model = wrap_model(model, ctx, sync_bn=args.sync_bn)

    logger = RunLogger(run_dir, enabled=ctx.is_main)
    try:
        logger.info(f"run directory: {run_dir}")
        logger.info("args: " + " ".join(f"--{k}={v}" for k, v in vars(args).items()))
        logger.info(f"device {device}, workers {workers}; train/val/test = {sizes['train']}/{sizes['val']}/"
                    f"{sizes['test']}; train weights min {weights.min():.3g} max {weights.max():.3g}")
        overlap = dataset_cls.overlap_warning(table)
        if overlap:
            logger.info(overlap)
        if ctx.distributed:
            logger.info(f"distributed: {ctx.world_size} processes x {local_batch} samples = global batch "
                        f"{args.batch_size}{' (SyncBatchNorm)' if args.sync_bn else ''}")
        if report is not None:
            logger.info(f"loaded {len(report.loaded)} tensors from {args.pretrained}; kept initial: "
                        f"{', '.join(report.kept_init) or 'none'}")
        if args.resume:
            logger.info(f"resumed {args.resume} after epoch {start_epoch} (best val score {best_loss:.4f})")
        return train_and_test(args, train_model, optimizer, loaders, train_labels, sizes, device, dataset_cls,
                              logger, run_dir, start_epoch, best_loss, show, ctx, options, comparator)
    except UserError as exc:  # e.g. an unreadable image found mid-epoch: keep the reason with the run
        logger.record_error(exc)
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (errors.Terminated)
        raise logger.interrupted(run_dir / CKPT_NAME, stop) from None
    finally:
        logger.close()


def load_pretrained(args, model):
    """--pretrained: every tensor except the head's (RRT stage 2 / fine-tuning); FDS buffers are taken
    with --fds when present. Returns the LoadReport."""
    pretrained = load_checkpoint(args.pretrained)
    check_arch(pretrained, args.pretrained, args.model)
    return load_model_state(model, state_dict_of(pretrained, args.pretrained), ignore_fds=not args.fds,
                            allow_missing_fds=True, skip=is_head_key, source=args.pretrained)


def build_optimizer(args, model) -> torch.optim.Optimizer:
    """Adam without weight decay, or SGD with momentum and weight decay (docs/published_behaviour.md §7), over the trainable
    parameters (only the head under --retrain_fc)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def resume_from_checkpoint(args, model, optimizer, ctx: Optional[DistContext] = None,
                           options: Optional[StepOptions] = None):
    """--resume: restore model, optimizer, epoch, best score, FDS, RNG (and fp16 GradScaler) state.

    Returns (start_epoch, best_loss, run_dir): an unfinished run continues in its own directory; otherwise
    a new one is made and the source run's best checkpoint is copied into it (best_loss restarts when
    there is none). Under torchrun every rank loads the checkpoint, only rank 0 touches directories
    (the others get run_dir None and receive rank 0's), and each rank re-seeds from (seed, rank, epoch)
    instead of restoring rank 0's RNG streams.
    """
    ctx = ctx or DistContext()
    resumed = load_checkpoint(args.resume)
    check_arch(resumed, args.resume, args.model)
    load_model_state(model, state_dict_of(resumed, args.resume), source=args.resume)
    if resumed.get("optimizer") is not None:
        load_optimizer_state(optimizer, resumed, args.resume)
    start_epoch = int(resumed.get("epoch", 0))
    best_loss = float(resumed.get("best_loss", math.inf))
    if start_epoch >= args.epoch:
        raise UserError(f"--resume {args.resume}: the checkpoint has already completed {start_epoch} epochs "
                        f"(--epoch {args.epoch}); pass a larger --epoch to train on, or --evaluate to test it")
    scaler = options.scaler if options is not None else None
    if scaler is not None and SCALER_KEY in resumed:
        scaler.load_state_dict(resumed[SCALER_KEY])
    if not ctx.is_main:
        seed_everything(args.seed + ctx.rank + 1009 * start_epoch)
        return start_epoch, best_loss, None
    run_dir = resume_run_dir(args)
    if run_dir is None:  # a finished run continues as <its name>_2 (see ranksim/harness/run.py)
        run_dir = make_run_dir(args.store_root, args.store_name or Path(args.resume).resolve().parent.name)
        source_best = Path(args.resume).parent / BEST_NAME
        if source_best.is_file():
            copy_as_best(source_best, run_dir / BEST_NAME)
        else:
            best_loss = math.inf
    if ctx.distributed:
        seed_everything(args.seed + ctx.rank + 1009 * start_epoch)
    elif "rng" in resumed:  # last, so that nothing after it draws from the restored streams before training
        restore_rng_state(resumed["rng"])
    return start_epoch, best_loss, run_dir


def resume_run_dir(args) -> Optional[Path]:
    """The checkpoint's own run directory when the run it belongs to is unfinished (has training.log,
    no results.json) and no other --store_name was asked for; None -> start a new directory."""
    ckpt_dir = Path(args.resume).resolve().parent
    if args.store_name and args.store_name != ckpt_dir.name:
        return None
    if (ckpt_dir / LOG_NAME).is_file() and not (ckpt_dir / RESULTS_NAME).exists():
        return ckpt_dir
    return None


def train_and_test(args, model, optimizer, loaders, train_labels, sizes, device, dataset_cls, logger, run_dir,
                   start_epoch, best_loss, show, ctx: Optional[DistContext] = None,
                   options: Optional[StepOptions] = None, comparator: Optional[Comparator] = None) -> dict:
    """Epoch loop (train, FDS update, validate, checkpoint), then test the best checkpoint.

    model: the model to train (DDP-wrapped under torchrun); prediction and the FDS pass use the bare
    model (no gradient, so DDP has nothing to add) after rank 0's BatchNorm statistics are copied to
    every rank. comparator: Balanced MSE / ConR / Rank-N-Contrast (ranksim.harness.comparators; None: off).
    """
    ctx = ctx or DistContext(device=device)
    options = options or StepOptions()
    comparator = comparator or Comparator()
    bare = unwrap_model(model)
    loss_fn = published_age_loss(args.loss) if args.published_quirks else get_loss(args.loss)
    if comparator.balanced is not None:  # --bmse replaces --loss
        loss_fn = comparator.balanced
    if not comparator.regression:
        loss_fn = None
    if ctx.distributed and args.regularization_weight > 0:
        regularizer = GatheredRankSim(args.regularization_weight, args.interpolation_lambda, device, args.seed)
    else:
        regularizer = ranksim_regularizer(args.regularization_weight, args.interpolation_lambda)
    fds_loader = loaders.get("fds", loaders["train"])
    fds_gather_fn = fds_gather(fds_loader.sampler, sizes["train"]) if ctx.distributed and args.fds else None
    score_name = "mse" if args.loss == "mse" else "mae"
    ckpt_path, best_path = run_dir / CKPT_NAME, run_dir / BEST_NAME
    last_good = args.resume or None  # newest checkpoint of a completed epoch, for the divergence message

    for epoch in range(start_epoch, args.epoch):
        lr = cosine_lr_at(epoch, args.lr, args.epoch) if args.lr_cosine else lr_at(epoch, args.lr, args.schedule)
        for group in optimizer.param_groups:
            if not group.get("fixed_lr"):  # Balanced MSE's sigma keeps its own learning rate
                group["lr"] = lr
        if ctx.distributed:  # a new shuffle per epoch, the same on every rank; same tie draws on every rank
            loaders["train"].sampler.set_epoch(epoch)
            if isinstance(regularizer, GatheredRankSim):
                regularizer.set_epoch(epoch)
        try:
            train_stats = train_one_epoch(model, loaders["train"], optimizer, loss_fn, device, epoch,
                                          regularizer=regularizer, frozen_backbone=args.retrain_fc,
                                          show_progress=show, desc=f"epoch {epoch + 1}/{args.epoch}",
                                          log_every=args.print_freq, log_fn=logger.info, options=options,
                                          loss_limit=exploding_loss_limit(args.published_quirks),
                                          view_loss=comparator.view_loss)
            sync_buffers(bare, ctx)  # rank 0's BatchNorm running statistics everywhere (see wrap_model)
            if args.fds and epoch >= args.start_update:
                update_fds_statistics(bare, fds_loader, device, epoch, frozen_backbone=args.retrain_fc,
                                      show_progress=show, gather=fds_gather_fn, options=options)
                sync_buffers(bare, ctx)
            preds, labels = predict_split(bare, loaders["val"], device, show, "val", ctx, options)
            if not np.isfinite(preds).all():  # e.g. a finite loss with an inf gradient in the last step
                raise DivergenceError(f"training diverged in epoch {epoch + 1}: the model predicts NaN/inf on val")
        except DivergenceError as exc:
            kept = (f"the last good checkpoint is {last_good}" if last_good
                    else "no checkpoint was written (it diverged in the first epoch)")
            raise UserError(f"{exc}; stopped, {kept}; lower --lr (or --regularization_weight) and "
                            f"{'resume it with --resume ' + str(last_good) if last_good else 'start again'}") from None
        val = regression_metrics(preds, labels, age_shot_groups(train_labels, labels))["all"]
        # RnC stage 1 trains no head, so its val score says nothing: the last epoch is kept as the best.
        is_best = val[score_name] < best_loss or not comparator.regression
        best_loss = min(best_loss, val[score_name])

        # The published layout plus what an exact resume needs (RNG state; the lr follows from the epoch).
        extra = {"rng": capture_rng_state(), "args": vars(args), **comparator.checkpoint_extra()}
        if options.scaler is not None:
            extra[SCALER_KEY] = options.scaler.state_dict()
        state = make_checkpoint(model, optimizer, epoch + 1, best_loss, arch=args.model, extra=extra)
        if logger.enabled:  # only the main process writes files
            if is_best:  # best first: a kill between the two writes then repeats this epoch, losing nothing
                save_checkpoint(state, best_path)
                copy_as_best(best_path, ckpt_path)
            else:
                save_checkpoint(state, ckpt_path)
        last_good = ckpt_path
        reg = f" (ranksim {train_stats['reg']:.4f})" if regularizer is not None else ""
        if comparator.balanced is not None:
            reg += f" (bmse sigma {comparator.sigma():.4f})"
        logger.info(f"epoch {epoch + 1}/{args.epoch} lr {lr:.3g} | train loss {train_stats['loss']:.4f}{reg} | "
                    f"val MSE {val['mse']:.3f} MAE {val['mae']:.3f} GM {val['gmean']:.3f} | "
                    f"best {score_name.upper()} {best_loss:.3f}{' (new best)' if is_best else ''}")
        logger.scalars({"train/loss": train_stats["loss"], "train/ranksim": train_stats["reg"], "lr": lr,
                        "val/mse": val["mse"], "val/mae": val["mae"], "val/gmean": val["gmean"]}, epoch + 1)

    # Rank 0 reads the best checkpoint and hands its weights to the other ranks (no shared file system needed).
    best_epoch = None
    if ctx.is_main:
        best = load_checkpoint(best_path)
        load_model_state(bare, state_dict_of(best, os.fspath(best_path)), source=os.fspath(best_path))
        best_epoch = int(best["epoch"])
    best_epoch = broadcast_object(best_epoch, ctx)
    sync_state(bare, ctx)
    tested = evaluate_test_split(bare, loaders["test"], train_labels, device, dataset_cls.overall_gm_eps, show,
                                 ctx, options)
    return finish(logger, run_dir, args, best_path, best_epoch, sizes, tested)


def evaluate_checkpoint(args, model, loaders, train_labels, sizes, device, dataset_cls, show,
                        ctx: Optional[DistContext] = None, options: Optional[StepOptions] = None) -> dict:
    """--evaluate --resume CKPT: test CKPT (ours or the published code's) and write results.json.
    Under torchrun every rank loads CKPT and tests its shard; rank 0 makes the directory and writes."""
    ctx = ctx or DistContext(device=device)
    checkpoint = load_checkpoint(args.resume)
    check_arch(checkpoint, args.resume, args.model)
    # FDS buffers do not affect evaluation: ignored without --fds, allowed to be absent with it.
    load_model_state(model, state_dict_of(checkpoint, args.resume), ignore_fds=not args.fds,
                     allow_missing_fds=True, source=args.resume)
    run_dir = None
    if ctx.is_main:
        run_dir = make_run_dir(args.store_root, args.store_name or evaluation_run_name(args.resume))
    run_dir = broadcast_object(run_dir, ctx)
    with RunLogger(run_dir, enabled=show) as logger:
        tested = evaluate_test_split(model, loaders["test"], train_labels, device, dataset_cls.overall_gm_eps, show,
                                     ctx, options)
        epoch = checkpoint.get("epoch")
        return finish(logger, run_dir, args, args.resume, int(epoch) if epoch is not None else None, sizes, tested)
