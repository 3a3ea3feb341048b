"""Benchmark: per-step cost of every method the harness runs, relative to vanilla and to RankSim.

One step = one call of agedb-dir/train.py's own train_one_epoch on a one-batch loader, i.e. exactly
what agedb-dir/train.py does per batch, with what its main() builds for the method's flags (loss,
comparator, RankSim; bench/common.py), on its own model copy; random images, AgeDB-like integer ages.
Variants are timed in turn within each round (bench/train_step.py's timer), so every ratio is against
a vanilla and a RankSim step measured in the same run:

  vanilla         L1 loss (no method flag)
  ranksim         L1 + gamma 100 * RankSim (lambda 2): --regularization_weight 100 --interpolation_lambda 2
  bmse-bmc/bni/gai  Balanced MSE (learnable sigma in its own group) instead of L1: --bmse bmc|bni|gai
  conr            L1 + 4 * ConR on two extra views (three forward passes): --conr
  conr+ranksim    both regularizers
  rnc             Rank-N-Contrast stage 1 (RnC loss on 2B views, no regression): --rnc encoder
  oe              L1 + Ordinal Entropy on the features (lambda_d = lambda_t = 1): --oe
  oe+ranksim      both regularizers
  denseweight     L1 weighted by DenseWeight (alpha 1) of the batch labels: --reweight denseweight; the
                  weights ride with the batch like SQINV's, so the step is vanilla's. Fitting them is
                  once per run, printed separately (IMDB-WIKI-DIR's train size).

    python bench/methods.py                 # CPU (ResNet-18, 32 px, B 32), and CUDA too (ResNet-50, 224 px, B 64)
    python bench/methods.py --device cuda
    python bench/methods.py --quick         # tiny smoke run
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AgeSteps, run_benchmark  # noqa: E402
from train_step import RANKSIM_FLAGS, median_step_seconds, synchronize  # noqa: E402  (the RankSim step bench's timer)

from ranksim.denseweight import DenseWeight  # noqa: E402
from ranksim.harness.models.resnet import build_model  # noqa: E402

# Each variant's command-line flags of agedb-dir/train.py (the comparators' other settings: their defaults).
VARIANT_FLAGS = {
    "vanilla": [],
    "ranksim": RANKSIM_FLAGS,
    "bmse-bmc": ["--bmse", "bmc"],
    "bmse-bni": ["--bmse", "bni"],
    "bmse-gai": ["--bmse", "gai"],
    "conr": ["--conr"],
    "conr+ranksim": ["--conr", *RANKSIM_FLAGS],
    "rnc": ["--rnc", "encoder"],
    "oe": ["--oe"],
    "oe+ranksim": ["--oe", *RANKSIM_FLAGS],
    "denseweight": ["--reweight", "denseweight"],
}
DENSEWEIGHT_FIT_LABELS = 191_509  # IMDB-WIKI-DIR's train split
VARIANTS = tuple(VARIANT_FLAGS)


def make_step(steps, device, model_name, batch_size, img_size, variant, train_labels):
    """A function running one training step of ``variant`` on its own model and batch."""
    torch.manual_seed(0)
    # In training the program's step takes (predictions, features) from the model, whatever the method.
    model = build_model(model_name, return_encoding=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    views = torch.randn(batch_size, 2, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 101, (batch_size, 1), device=device).float()
    weights = torch.ones(batch_size, 1, device=device)
    if variant == "denseweight":  # the program stores each sample's weight with it; the loader yields them
        dense = DenseWeight().fit(train_labels)(labels.cpu().numpy())
        weights = torch.from_numpy(dense).reshape(batch_size, 1).to(device)
    # Rank-N-Contrast's loader yields the two strong views in the images' place (no regression batch).
    batch = [(views, labels, weights)] if variant == "rnc" else [(images, labels, weights, views)]
    return steps.make(model, optimizer, batch, VARIANT_FLAGS[variant], train_labels)


def run_device(device, quick):
    cuda = device.type == "cuda"
    if quick:
        model_name, img_size, batch_size, rounds, warmup = "resnet18", 16, 8, 1, 1
    elif cuda:
        model_name, img_size, batch_size, rounds, warmup = "resnet50", 224, 64, 10, 3
    else:
        model_name, img_size, batch_size, rounds, warmup = "resnet18", 32, 32, 5, 1
    train_labels = np.random.default_rng(0).integers(0, 101, size=5000).astype(np.float64)
    with AgeSteps(device) as program_steps:
        steps = {v: make_step(program_steps, device, model_name, batch_size, img_size, v, train_labels)
                 for v in VARIANTS}
        synchronize(device)
        medians = median_step_seconds(device, steps, warmup, rounds)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n== {name}: {model_name}, {img_size} px, B = {batch_size}, fp32, Adam; median of {rounds} rounds")
    print(f"{'variant':>13} {'ms/step':>9} {'x vanilla':>10} {'x ranksim':>10}")
    for variant in VARIANTS:
        m = medians[variant]
        print(f"{variant:>13} {m * 1e3:>9.1f} {m / medians['vanilla']:>9.2f}x {m / medians['ranksim']:>9.2f}x")
    if device.type == "cpu":
        print(f"DenseWeight fit on {DENSEWEIGHT_FIT_LABELS:,} ages (once per run): {denseweight_fit_seconds():.2f} s")
    return []


def denseweight_fit_seconds() -> float:
    """Wall time of fitting DenseWeight and weighting every train label, for IMDB-WIKI-DIR's train size."""
    ages = np.random.default_rng(0).integers(1, 101, size=DENSEWEIGHT_FIT_LABELS).astype(np.float64)
    start = time.perf_counter()
    DenseWeight().fit(ages)(ages)
    return time.perf_counter() - start


if __name__ == "__main__":
    run_benchmark(__doc__.split("\n")[0], run_device, "CPU threads for torch")
