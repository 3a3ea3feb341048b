"""Benchmark: per-step cost of every method the harness runs, relative to vanilla and to RankSim.

One step = ranksim.harness.loop.train_one_epoch on one batch (what the age programs run per step) with
the method's loss / regularizer / view term, on its own model copy; random images, AgeDB-like
integer ages. Variants are timed in turn within each round (bench/train_step.py's timer), so every
ratio is against a vanilla and a RankSim step measured in the same run:

  vanilla         L1 loss
  ranksim         L1 + gamma 100 * RankSim (lambda 2)
  bmse-bmc/bni/gai  Balanced MSE (learnable sigma in its own group) instead of L1
  conr            L1 + 4 * ConR on two extra views (three forward passes)
  conr+ranksim    both regularizers
  rnc             Rank-N-Contrast stage 1 (RnC loss on 2B views, no regression)

    python bench/methods.py                 # CPU (ResNet-18, 32 px, B 32), and CUDA too (ResNet-50, 224 px, B 64)
    python bench/methods.py --device cuda
    python bench/methods.py --quick         # tiny smoke run
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_benchmark  # noqa: E402
from train_step import median_step_seconds, synchronize  # noqa: E402  (same timer as the RankSim step bench)

from ranksim.balanced_mse import BalancedMSELoss, fit_gaussian_mixture, label_histogram  # noqa: E402
from ranksim.harness.comparators import conr_view_loss, rnc_view_loss  # noqa: E402
from ranksim.harness.loop import ranksim_regularizer, train_one_epoch  # noqa: E402
from ranksim.harness.models.resnet import build_model  # noqa: E402
from ranksim.losses import weighted_l1_loss  # noqa: E402

VARIANTS = ("vanilla", "ranksim", "bmse-bmc", "bmse-bni", "bmse-gai", "conr", "conr+ranksim", "rnc")


def make_step(device, model_name, batch_size, img_size, variant, train_labels):
    """A function running one training step of ``variant`` on its own model and batch."""
    torch.manual_seed(0)
    model = build_model(model_name, return_encoding=variant != "vanilla" and not variant.startswith("bmse")).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    loss_fn, regularizer, view_loss = weighted_l1_loss, None, None
    if "ranksim" in variant:
        regularizer = ranksim_regularizer(100.0, 2.0)
    if variant.startswith("bmse"):
        kind = variant.split("-")[1]
        prior = {}
        if kind == "bni":
            centres, masses = label_histogram(train_labels)
            prior = dict(bin_centers=centres, bin_weights=masses)
        elif kind == "gai":
            prior = dict(gmm=fit_gaussian_mixture(train_labels))
        loss_fn = BalancedMSELoss(kind, init_sigma=1.0, **prior).to(device)
        optimizer.add_param_group({"params": [loss_fn.noise_sigma], "lr": 1e-2})
    if variant.startswith("conr"):
        view_loss = conr_view_loss(4.0, 1.0, 0.2, 0.01)
    if variant == "rnc":
        loss_fn, view_loss = None, rnc_view_loss(2.0)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    views = torch.randn(batch_size, 2, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 101, (batch_size, 1), device=device).float()
    weights = torch.ones(batch_size, 1, device=device)
    batch = [(views, labels, weights)] if variant == "rnc" else [(images, labels, weights, views)]

    def step():
        train_one_epoch(model, batch, optimizer, loss_fn, device, epoch=0, regularizer=regularizer,
                        show_progress=False, view_loss=view_loss)

    return step


def run_device(device, quick):
    cuda = device.type == "cuda"
    if quick:
        model_name, img_size, batch_size, rounds, warmup = "resnet18", 16, 8, 1, 1
    elif cuda:
        model_name, img_size, batch_size, rounds, warmup = "resnet50", 224, 64, 10, 3
    else:
        model_name, img_size, batch_size, rounds, warmup = "resnet18", 32, 32, 5, 1
    train_labels = np.random.default_rng(0).integers(0, 101, size=5000).astype(np.float64)
    steps = {v: make_step(device, model_name, batch_size, img_size, v, train_labels) for v in VARIANTS}
    synchronize(device)
    medians = median_step_seconds(device, steps, warmup, rounds)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n== {name}: {model_name}, {img_size} px, B = {batch_size}, fp32, Adam; median of {rounds} rounds")
    print(f"{'variant':>13} {'ms/step':>9} {'x vanilla':>10} {'x ranksim':>10}")
    for variant in VARIANTS:
        m = medians[variant]
        print(f"{variant:>13} {m * 1e3:>9.1f} {m / medians['vanilla']:>9.2f}x {m / medians['ranksim']:>9.2f}x")
    return []


if __name__ == "__main__":
    run_benchmark(__doc__.split("\n")[0], run_device, "CPU threads for torch")
