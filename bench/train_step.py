"""Benchmark: ResNet-50 training-step throughput with and without RankSim.

One step = one call of agedb-dir/train.py's own train_one_epoch on a one-batch loader: forward
(backbone + head), weighted L1 loss [+ gamma * RankSim on the 2048-d pooled features], backward, the
loss check, Adam step, i.e. exactly what agedb-dir/train.py does per batch (bench/common.py loads the
program and builds what its main() would pass). Three variants:

  none     --regularization_weight 0 (the program's default: RankSim off)
  library  --regularization_weight 100 --interpolation_lambda 2: the program's RankSim line, i.e.
           ranksim.regularizer.batchwise_ranking_regularizer (vectorised)
  loop     the same flags with the published per-row loop (re-written in bench/regularizer.py)
           swapped into the program's RankSim line

Labels are AgeDB-like integer ages (0-100, so ties are reduced as in real batches); inputs are random
tensors (no data loading). Prints images/s and each RankSim variant's overhead over "none" measured
in the same run. Target (issue 3, CUDA, 224 px): the library adds <= 2 % at B = 64 and B = 256.

    python bench/train_step.py              # CUDA when available (224 px, B 64 and 256), else CPU (64 px, B 32)
    python bench/train_step.py --device cpu --img_size 64 --batch_sizes 32
    python bench/train_step.py --quick      # tiny CPU smoke run
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AgeSteps, load_age_program  # noqa: E402
from regularizer import loop_regularizer  # noqa: E402  (the per-row reference, shared with bench/regularizer.py)

from ranksim.harness.models.resnet import resnet50  # noqa: E402
from ranksim.regularizer import batchwise_ranking_regularizer  # noqa: E402

GAMMA, LAMBDA = 100.0, 2.0  # the paper's AgeDB-DIR settings
RANKSIM_FLAGS = ["--regularization_weight", str(GAMMA), "--interpolation_lambda", str(LAMBDA)]
TARGET_OVERHEAD = 0.02
VARIANTS = ("none", "library", "loop")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def published_loop(features, targets, interpolation_lambda, generator=None, gamma=None):
    """The per-row loop with the library function's signature. ``generator`` is GlobalBatch's, None on
    one process; the loop draws its tie picks from torch's global RNG, as the library then does.
    ``gamma`` (the program passes its weight) is ignored: the loop is the published gradient, which
    is the same number when nothing scales the loss (fp32, as timed here)."""
    return loop_regularizer(features, targets, interpolation_lambda)


def loop_program():
    """A copy of agedb-dir/train.py of its own in which the RankSim line calls the published loop: its
    module-level name batchwise_ranking_regularizer is rebound. Only the "loop" variant runs this
    copy; the other variants run an unpatched one."""
    program = load_age_program()
    program.batchwise_ranking_regularizer = published_loop  # patched in this copy only: the "loop" variant
    return program


def make_step(steps, device, batch_size, img_size, variant, program=None):
    """A function running one training step of the given variant on its own model and batch."""
    torch.manual_seed(0)
    # In training the program's step takes (predictions, features) from the model, RankSim on or off.
    model = resnet50(return_encoding=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 101, (batch_size, 1), device=device).float()
    weights = torch.ones(batch_size, 1, device=device)
    return steps.make(model, optimizer, [(images, labels, weights)], [] if variant == "none" else RANKSIM_FLAGS,
                      program=program)


def median_step_seconds(device, steps_by_variant, warmup, rounds):
    """Median seconds per step of each variant; variants are timed in turn within each round so that
    load changes on a shared machine hit all of them alike."""
    for step in steps_by_variant.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps_by_variant}
    for _ in range(rounds):
        for name, step in steps_by_variant.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def check_loop_matches_library(device):
    """Guard: the two regularizers agree on a batch (same random tie picks are not needed: distinct labels)."""
    torch.manual_seed(0)
    feats = torch.randn(64, 2048, device=device)
    labels = torch.randperm(64, device=device).float().reshape(-1, 1)
    lib = batchwise_ranking_regularizer(feats, labels, LAMBDA)
    loop = loop_regularizer(feats, labels, LAMBDA)
    if not torch.allclose(lib, loop, rtol=1e-4, atol=1e-5):
        sys.exit(f"library ({lib.item():.6f}) and loop ({loop.item():.6f}) regularizers disagree")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--img_size", type=int, default=None, help="default 224 on CUDA, 64 on CPU")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default 64 256 on CUDA, 32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed rounds (one step of each variant) (default 10 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 CUDA, 1 CPU)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    args = p.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if args.quick:
        img_size, batch_sizes, steps, warmup = args.img_size or 32, args.batch_sizes or [8], args.steps or 1, 1
    else:
        img_size = args.img_size or (224 if cuda else 64)
        batch_sizes = args.batch_sizes or ([64, 256] if cuda else [32])
        steps, warmup = args.steps or (10 if cuda else 3), args.warmup if args.warmup is not None else (3 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"ResNet-50 training step, {img_size} px, fp32, Adam; device: {name}; torch {torch.__version__}")
    check_loop_matches_library(device)

    print(f"{'B':>5} {'variant':>8} {'ms/step':>9} {'images/s':>9} {'overhead':>9}")
    failed = False
    with AgeSteps(device) as program_steps:
        programs = {"loop": loop_program()}  # the other variants run program_steps' unpatched copy
        for batch_size in batch_sizes:
            steps_by_variant = {v: make_step(program_steps, device, batch_size, img_size, v, programs.get(v))
                                for v in VARIANTS}
            medians = median_step_seconds(device, steps_by_variant, warmup, steps)
            del steps_by_variant
            if cuda:
                torch.cuda.empty_cache()
            base = medians["none"]
            for variant in VARIANTS:
                median = medians[variant]
                overhead = "" if variant == "none" else f"{(median / base - 1) * 100:+8.1f}%"
                if variant == "library" and cuda and median / base - 1 > TARGET_OVERHEAD:
                    failed = True
                print(f"{batch_size:>5} {variant:>8} {median * 1e3:>9.1f} {batch_size / median:>9.1f} {overhead:>9}")
    if cuda:
        print(f"target: library overhead <= {TARGET_OVERHEAD:.0%}: {'MISSED' if failed else 'met'}")


if __name__ == "__main__":
    main()
