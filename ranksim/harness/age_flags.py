"""The command line of the age programs (agedb-dir/train.py, imdb-wiki-dir/train.py): flags, checks, names.

    args = parse_args(argv, DEFAULTS)        # the published flags (docs/published_behaviour.md §7)
    check_args(args, argv, DEFAULTS)         # one-line UserErrors; --resume/--evaluate adopt the checkpoint's model flags

``DEFAULTS`` holds the flags whose defaults differ between the two benchmarks (dataset, lds_ks, fds_ks,
bucket_start, epoch). :func:`run_name` is the run-directory name the programs use without --store_name.
"""
import argparse
import time
from typing import Mapping, Optional, Sequence

import torch

from ranksim.harness.checkpoint import check_checkpoint_flag, load_checkpoint
from ranksim.harness.cli import OneLineArgumentParser, UserError
from ranksim.harness.comparators import (
    SAMPLE_WEIGHTINGS,
    add_comparator_flags,
    check_comparator_flags,
    comparator_run_name,
    parse_with_stage_defaults,
)
from ranksim.harness.data.age_splits import PROTOCOLS
from ranksim.harness.distributed import env_world_size
from ranksim.harness.flags import adopt_recorded_flags, check_method_flags, check_positive, explicit_flags
from ranksim.harness.models.resnet import MODELS
from ranksim.harness.run import BEST_NAME, CKPT_NAME, resolve_data_dir
from ranksim.kernels import KERNELS
from ranksim.losses import LOSSES

PUBLISHED_QUIRKS_HELP = (
    "reproduce the published code's unintended behaviours the paper's numbers depend on: INV+LDS smooths "
    "integer counts (truncated), focal losses ignore the sample weights and Huber uses them as its threshold, "
    "divergence limit 1e6 (see the README's differences table)")
MAX_IMG_SIZE = 1024  # 4.6x the paper's 224 per side (~21x the memory); beyond it a run only dies of memory later


def is_head_key(key: str) -> bool:
    """Keys RRT does not load from --pretrained (docs/published_behaviour.md §7: names containing 'linear' or 'fc')."""
    return "linear" in key or "fc" in key


def build_parser(defaults: Mapping) -> argparse.ArgumentParser:
    """Every flag of docs/published_behaviour.md §7 (plus --seed and the comparators'); ``defaults``: the
    dataset-dependent defaults (dataset, lds_ks, fds_ks, bucket_start, epoch) of the calling train.py."""
    d = defaults
    p = OneLineArgumentParser(
        description=f"Train / evaluate an age regressor on {d['dataset']} (RankSim, LDS, FDS, RRT, Focal-R).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("imbalanced-regression methods")
    g.add_argument("--reweight", default="none", choices=SAMPLE_WEIGHTINGS,
                   help="cost-sensitive re-weighting (SQINV = sqrt_inv; denseweight: DenseWeight, see --dw_alpha)")
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
    g.add_argument("--protocol", default=None, choices=PROTOCOLS, help="AgeDB only: train and test on a stress-test "
                   "split of Puetz et al. (2026) instead of the published one; its pinned file is fetched into "
                   "--data_dir (see the README's 'Which protocol tests what')")
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
    g.add_argument("--compile", action="store_true", help="torch.compile the model's training forward; the first "
                   "steps wait for the compiler (start-up cost: bench/README.md); validation, the FDS pass and "
                   "checkpoints use the plain model")
    add_comparator_flags(p)
    return p


def parse_args(argv: Optional[Sequence[str]], defaults: Mapping) -> argparse.Namespace:
    """The parsed flags (with --rnc, that stage's reference schedule as the defaults)."""
    return parse_with_stage_defaults(build_parser(defaults), argv)


def check_args(args: argparse.Namespace, argv: Optional[Sequence[str]], defaults: Mapping) -> None:
    """Take the model-defining flags from a --resume checkpoint, then refuse what cannot work (UserError)."""
    adopt_checkpoint_settings(args, explicit_flags(lambda: build_parser(defaults), argv))
    check_flag_values(args)


def check_flag_values(args: argparse.Namespace) -> None:
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
    if args.pretrained:  # (--resume is checked where its settings are read: adopt_checkpoint_settings)
        check_checkpoint_flag("--pretrained", args.pretrained, BEST_NAME)
    check_comparator_flags(args)
    if args.protocol and args.dataset != "agedb":
        raise UserError(f"--protocol {args.protocol}: the stress-test protocols re-split AgeDB only; run it with "
                        f"agedb-dir/train.py, or leave out --protocol for {args.dataset}")
    if env_world_size() > 1 and (args.bmse != "none" or args.conr or args.rnc != "none"):
        raise UserError("--bmse / --conr / --rnc: not supported under torchrun yet; run them in one process")
    if args.sync_bn and env_world_size() > 1 and not torch.cuda.is_available():  # no CPU kernel in PyTorch
        raise UserError("--sync_bn: SyncBatchNorm runs on GPUs only (this torchrun job runs on CPUs with gloo); "
                        "leave out --sync_bn on CPU")


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
    settings stay as passed, by default the paper's. Resuming a checkpoint that has completed --epoch
    epochs already is refused here, before anything is made. --data_dir becomes absolute (the checkpoint's
    recorded folder unless given): :func:`~ranksim.harness.run.resolve_data_dir`."""
    if not args.resume:
        resolve_data_dir(args)
        return
    check_checkpoint_flag("--resume", args.resume, BEST_NAME if args.evaluate else CKPT_NAME)
    checkpoint = load_checkpoint(args.resume)
    recorded = checkpoint.get("args")
    if not isinstance(recorded, dict):
        recorded = {"model": checkpoint["model"]} if isinstance(checkpoint.get("model"), str) else {}
    flags = MODEL_FLAGS if not args.evaluate or recorded.get("fds") else ("model", "img_size")
    adopt_recorded_flags(args, explicit, recorded, flags, f"--resume {args.resume}")
    resolve_data_dir(args, explicit, recorded, f"--resume {args.resume}")
    done = int(checkpoint.get("epoch", 0))
    if not args.evaluate and done >= args.epoch:
        raise UserError(f"--resume {args.resume}: the checkpoint has already completed {done} epochs (--epoch "
                        f"{args.epoch}); pass a larger --epoch to train on, or --evaluate to test it")


def run_name(args: argparse.Namespace) -> str:
    """Directory name encoding the settings, e.g.
    agedb_resnet50_sqrt_inv_lds_gau_9_1.0_ranksim_100.0_2.0_adam_l1_0.00025_64_20240101-120000."""
    parts = [args.dataset] + ([args.protocol] if args.protocol else []) + [args.model, args.reweight]
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


def check_arch(checkpoint: Mapping, path: str, model_name: str) -> None:
    """UserError when the checkpoint's 'model' entry names another architecture than --model."""
    arch = checkpoint.get("model")
    if isinstance(arch, str) and arch != model_name:
        raise UserError(f"{path}: checkpoint of a {arch}, but --model is {model_name}; pass --model {arch} "
                        f"or another checkpoint")


