"""Benchmark: the cost of the per-epoch RankSim health pass (ranksim/harness/health.py) against an
epoch's training steps, measured in the same run.

What is timed, with the programs' own code:
  * step: one RankSim training step (forward, L1 + gamma * RankSim, backward, Adam), the mean over
    --steps steps after one warm-up step; an epoch = EPOCH_STEPS steps (AgeDB-DIR: 12,208 train
    images / batch 64 = 191 steps);
  * health: RunHealth.check, i.e. the fixed train batch's eval forward, the gradient ratio, and
    mean cosine + rank agreement of the fixed batch and of VAL_IMAGES val features (AgeDB-DIR's val
    split: 2,140), sampled down to ranksim.harness.health.VAL_SAMPLES;
  * capture: what the forward hook adds to validation's prediction pass (it keeps a reference to
    each batch's features on the device), the difference of the val pass with and without the hook
    (within timing noise when it prints a negative number; the share then counts it as 0).
Prints each time and (health + capture) / (EPOCH_STEPS x step), the share of an epoch the health
pass costs. Target: under 1 %.

    python bench/health.py                  # CUDA when available (ResNet-50, 224 px), else CPU (ResNet-18, 32 px)
    python bench/health.py --quick          # tiny CPU smoke run
"""
import argparse
import contextlib
import io
import os
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ranksim.harness.health import RunHealth  # noqa: E402
from ranksim.harness.loop import StepOptions  # noqa: E402
from ranksim.harness.models.resnet import resnet18, resnet50  # noqa: E402
from ranksim.regularizer import batchwise_ranking_regularizer  # noqa: E402

EPOCH_STEPS = 191  # AgeDB-DIR: 12,208 train images at batch 64
VAL_IMAGES = 2140  # AgeDB-DIR's val split
GAMMA, LAMBDA = 100.0, 2.0
TARGET = 0.01


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device, repeats: int) -> float:
    """Mean seconds of ``function()`` over ``repeats`` calls after one warm-up call."""
    function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def quiet_run():
    """The Run interface RunHealth writes to, writing nothing (the bench times the measurement)."""
    return types.SimpleNamespace(ctx=types.SimpleNamespace(is_main=True), log=lambda message: None,
                                 scalars=lambda values, step: None,
                                 logger=types.SimpleNamespace(record_error=lambda error, prefix: None))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test: the ratio means nothing)")
    parser.add_argument("--steps", type=int, default=None, help="training steps timed (default 5; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    big = device.type == "cuda" and not args.quick
    img, batch = (224, 64) if big else (16 if args.quick else 32, 64)
    val_images = 128 if args.quick else VAL_IMAGES
    steps = args.steps or (1 if args.quick else 5)
    torch.manual_seed(0)
    model = (resnet50 if big else resnet18)(return_encoding=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    images = torch.randn(batch, 3, img, img, device=device)
    ages = torch.randint(0, 101, (batch, 1), device=device).float()
    weights = torch.ones(batch, 1, device=device)

    def step():
        model.train()
        preds, features = model(images, ages, 0)
        loss = F.l1_loss(preds, ages) + GAMMA * batchwise_ranking_regularizer(features, ages, LAMBDA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        float(loss.detach())  # the step's one host sync, as in the programs
        optimizer.step()

    val_batches = [torch.randn(min(batch, val_images - i), 3, img, img, device=device)
                   for i in range(0, val_images, batch)]
    health = RunHealth(quiet_run(), model.linear, GAMMA, LAMBDA, lambda: (images, ages, ages, weights),
                       lambda preds, targets, w: (w * (preds - targets).abs()).mean(),
                       np.random.default_rng(0).integers(0, 101, val_images), range(val_images))

    @torch.no_grad()
    def predict(capture):
        model.eval()
        with (health.capture_val() if capture else contextlib.nullcontext([])) as captured:
            for inputs in val_batches:
                model(inputs).float().cpu()
        return captured

    step_time = timed(step, device, steps)
    capture = timed(lambda: predict(True), device, 1) - timed(lambda: predict(False), device, 1)
    val_features = predict(True)
    with contextlib.redirect_stderr(io.StringIO()):  # the warnings a random model raises are not the point here
        check = timed(lambda: health.check(model, StepOptions(), val_features, 1), device, 3)
    share = (check + max(0.0, capture)) / (EPOCH_STEPS * step_time)
    print(f"device {device}, {'ResNet-50' if big else 'ResNet-18'} at {img} px, batch {batch}, "
          f"{val_images} val images, {torch.get_num_threads()} CPU thread(s)")
    print(f"training step (RankSim gamma {GAMMA:g}): {step_time * 1e3:.1f} ms; an epoch of {EPOCH_STEPS} steps: "
          f"{EPOCH_STEPS * step_time:.2f} s")
    print(f"health check: {check * 1e3:.1f} ms; val feature capture: {capture * 1e3:.1f} ms")
    print(f"health / epoch = {share:.2%}  ({'PASS' if share < TARGET else 'FAIL'}: target < {TARGET:.0%}"
          f"{'; quick run: sizes too small to mean anything' if args.quick else ''})")


if __name__ == "__main__":
    main()
