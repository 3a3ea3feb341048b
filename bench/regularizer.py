"""Benchmark: the vectorised RankSim regularizer vs the published per-row loop.

Forward + backward median wall time, D = 2048 features, for B in {64, 256} (plus 1024 on CUDA),
with AgeDB-like labels (integer ages 0-100, many ties) and all-distinct labels. Also times the bare
similarity cost (normalize + matmul, forward + backward), the floor any implementation pays.

Targets (issue 2, 2-core CPU): library >= 4x faster than the loop in all four cases, and library
<= 2x the bare similarity cost at B = 256. PASS/FAIL is printed; speed misses do not change the exit
code (only a numerical mismatch between the two implementations does).

    python bench/regularizer.py               # CPU, and CUDA too when available
    python bench/regularizer.py --device cuda
    python bench/regularizer.py --quick       # tiny sizes, smoke test
    python bench/regularizer.py --threads 1   # steadier numbers when other jobs share the cores

``count_dispatched_ops`` (used by bench/gpu.py) counts the compute operators of one forward + backward
on CPU: a device-independent proxy for the kernels a GPU launches (issue 20: <= 45 at B = 256).
"""
import collections
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import run_benchmark  # bench/common.py: python puts the script's folder on sys.path

from ranksim.ranking import TrueRanker, rank_normalised
from ranksim.regularizer import batchwise_ranking_regularizer, reduce_ties

LAMBDA = 2.0  # the paper's interpolation strength
MIN_SPEEDUP_OVER_LOOP = 4.0
MAX_RATIO_TO_SIMILARITY = 2.0


# ------------------------------------------------------------------ the published loop, re-written


def loop_reduce_ties(features, targets):
    """docs/published_behaviour.md §1.1 as the published code does it: torch.unique, then one random pick per label."""
    labels = torch.unique(targets)
    if len(labels) == len(targets):
        return features, targets
    picked = []
    for label in labels:
        candidates = (targets.reshape(-1) == label).nonzero()[:, 0]
        picked.append(candidates[torch.randint(len(candidates), ())].item())
    return features[picked], targets[picked]


def loop_rows(features, targets, lam):
    """docs/published_behaviour.md §1.2-1.3: one TrueRanker call and one MSE per row (row i of the similarity matrix)."""
    x = F.normalize(features.reshape(features.shape[0], -1).float(), dim=1)
    sims = x @ x.T
    y = targets.reshape(-1, 1)
    loss = 0.0
    for i in range(y.shape[0]):
        label_ranks = rank_normalised(-(y[i] - y).abs().T)
        feature_ranks = TrueRanker.apply(sims[i : i + 1], lam)
        loss = loss + F.mse_loss(feature_ranks, label_ranks)
    return loss


def loop_regularizer(features, targets, lam):
    return loop_rows(*loop_reduce_ties(features, targets), lam)


def similarity_only(features, targets, lam):
    """The cost floor: cosine similarity matrix forward (+ backward of its sum)."""
    x = F.normalize(features.reshape(features.shape[0], -1).float(), dim=1)
    return (x @ x.T).sum()


# ------------------------------------------------------------------ helpers


def make_batch(batch, dim, labels, device, gen):
    features = torch.randn(batch, dim, generator=gen).to(device)
    if labels == "agedb":
        # Integer ages 0-100 concentrated around adult ages, like AgeDB-DIR: many repeated labels.
        ages = (torch.randn(batch, generator=gen) * 16 + 42).round().clamp(0, 100)
        targets = ages.reshape(batch, 1)
    else:
        targets = torch.randperm(1000, generator=gen)[:batch].float().reshape(batch, 1) / 10
    return features, targets.to(device)


def loss_and_grad(fn, features, targets):
    leaf = features.detach().clone().requires_grad_(True)
    loss = fn(leaf, targets, LAMBDA)
    loss.backward()
    return loss.detach(), leaf.grad


def masked_regularizer(features, targets, lam):
    """The library's sync-free masked form (what CUDA runs), forced on any device for comparison."""
    return batchwise_ranking_regularizer(features, targets, lam, form="masked")


def verify_equal(fn, features, targets, seed=0):
    """``fn`` equals the loop (loss and gradient) on this batch, with the same kept samples.

    Returns (kept count, loss relative error, gradient relative L2 error). On CPU the two agree to
    float rounding. On CUDA the matmul may round differently for the n x n and B x B shapes, and a
    one-ulp change can swap two nearly equal similarities, moving a few gradient entries by
    1/(n lambda): hence the looser gradient tolerance there.
    """
    torch.manual_seed(seed)
    loss, grad = loss_and_grad(fn, features, targets)
    torch.manual_seed(seed)  # reduce_ties draws the random numbers the library drew
    kept_features, kept_targets = reduce_ties(features, targets)
    leaf = features.detach().clone().requires_grad_(True)
    kept_index = [int((features == row).all(dim=1).nonzero()[0, 0]) for row in kept_features]
    ref = loop_rows(leaf[kept_index], kept_targets, LAMBDA)
    ref.backward()
    loss_err = abs(loss.item() - ref.item()) / max(abs(ref.item()), 1e-12)
    grad_err = ((grad - leaf.grad).norm() / leaf.grad.norm().clamp_min(1e-12)).item()
    grad_tol = 1e-5 if features.device.type == "cpu" else 2e-2
    if loss_err > 1e-4 or grad_err > grad_tol:
        raise SystemExit(f"error: library and loop disagree on {features.device} "
                         f"(loss rel err {loss_err:.2e}, grad rel err {grad_err:.2e})")
    return len(kept_index), loss_err, grad_err


def median_ms(fns, features, targets, reps, device):
    """Median forward+backward milliseconds of each function in ``fns`` (name -> fn).

    The functions take turns within each repetition, so a teammate's job slowing the shared CPU
    for a while hits all of them alike and the ratios stay meaningful.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    leaf = features.detach().clone().requires_grad_(True)
    times = {name: [] for name in fns}
    for rep in range(reps + 2):  # the first two rounds warm up the allocator and kernels
        for name, fn in fns.items():
            leaf.grad = None
            sync()
            start = time.perf_counter()
            fn(leaf, targets, LAMBDA).backward()
            sync()
            if rep >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def check_no_sync_on_cuda(features, targets):
    """Run the library once with CUDA's sync debug mode set to raise on any host-device sync."""
    leaf = features.detach().clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batchwise_ranking_regularizer(leaf, targets, LAMBDA).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no host-device sync (torch.cuda sync debug mode 'error')"


# ------------------------------------------------------------------ dispatched-op count (issue 20)

# Not compute: allocations and index ranges (views are recognised by their schema, func.is_view).
NOT_COMPUTE = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.zeros", "aten.zeros_like", "aten.ones",
               "aten.ones_like", "aten.full", "aten.full_like", "aten.new_empty", "aten.new_empty_strided",
               "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.scalar_tensor", "aten.arange",
               "aten.lift_fresh", "aten.detach"}
MAX_DISPATCHED_OPS = 45


def count_dispatched_ops(batch=256, dim=2048, form="masked", gamma=100.0):
    """Compute operators the regularizer dispatches in one forward + backward, on CPU (a Counter of
    'aten.<op>' names): a device-independent proxy for the kernels a GPU launches. Views,
    allocations and aranges are left out; the leaf is fresh (no gradient accumulation is counted).
    AgeDB-like labels (integer ages, many ties), D = ``dim``; ``form='masked'`` is what runs on an
    accelerator, ``gamma`` as the programs pass it (None: the published call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if not (func.is_view or name in NOT_COMPUTE):
                self.ops[name] += 1
            return func(*args, **(kwargs or {}))

    features, targets = make_batch(batch, dim, "agedb", torch.device("cpu"), torch.Generator().manual_seed(0))
    extra = {} if gamma is None else {"gamma": gamma}
    for counting in (False, True):  # the first call settles anything done once per process
        leaf = features.clone().requires_grad_(True)
        with Recorder() if counting else contextlib.nullcontext() as recorder:
            batchwise_ranking_regularizer(leaf, targets, LAMBDA, form=form, **extra).backward()
    return recorder.ops


# ------------------------------------------------------------------ main


def run_device(device, quick):
    on_cpu = device.type == "cpu"
    dim = 64 if quick else 2048
    batches = [16, 32] if quick else [64, 256] + ([] if on_cpu else [1024])
    reps = 2 if quick else (15 if on_cpu else 30)
    gen = torch.Generator().manual_seed(0)
    rows, verdicts = [], []
    header = (f"{'device':6} {'B':>5} {'labels':8} {'kept':>5} {'library ms':>10} {'loop ms':>9} "
              f"{'speedup':>8} {'sim ms':>8} {'lib/sim':>8}" + (f" {'masked ms':>10}" if on_cpu else ""))
    print(f"\n== {device} (threads {torch.get_num_threads()}), D = {dim}, lambda = {LAMBDA}, "
          f"median of {reps} forward+backward runs")
    if on_cpu and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count()
        busy = "  (busy: other jobs share the cores, expect noisy times)" if load > cores - 1 else ""
        print(f"load average {load:.1f} on {cores} cores{busy}")
    print(header)
    print("-" * len(header))
    worst_loss_err = worst_grad_err = 0.0
    for batch in batches:
        for labels in ("agedb", "distinct"):
            features, targets = make_batch(batch, dim, labels, device, gen)
            fns = {"lib": batchwise_ranking_regularizer, "loop": loop_regularizer, "sim": similarity_only}
            if on_cpu:  # the sync-free form too, to show what gathering the kept samples saves on CPU
                fns["masked"] = masked_regularizer
            for name in ("lib", "masked") if on_cpu else ("lib",):
                kept, loss_err, grad_err = verify_equal(fns[name], features, targets)
                worst_loss_err, worst_grad_err = max(worst_loss_err, loss_err), max(worst_grad_err, grad_err)
            ms = median_ms(fns, features, targets, reps, device)
            rows.append((batch, labels, ms["lib"], ms["loop"], ms["sim"]))
            print(f"{device.type:6} {batch:>5} {labels:8} {kept:>5} {ms['lib']:>10.2f} {ms['loop']:>9.2f} "
                  f"{ms['loop'] / ms['lib']:>7.1f}x {ms['sim']:>8.2f} {ms['lib'] / ms['sim']:>7.2f}x"
                  + (f" {ms['masked']:>10.2f}" if on_cpu else ""), flush=True)
    print(f"verified against the loop before timing: loss rel err <= {worst_loss_err:.1e}, "
          f"gradient rel err <= {worst_grad_err:.1e}")
    if not on_cpu:
        print(check_no_sync_on_cuda(*make_batch(batches[-1], dim, "agedb", device, gen)))

    for batch, labels, lib, loop, sim in rows:
        if batch in batches[:2]:
            verdicts.append((f"{device.type} B={batch} {labels}: speedup over loop >= {MIN_SPEEDUP_OVER_LOOP:g}x",
                             loop / lib >= MIN_SPEEDUP_OVER_LOOP))
        if batch == batches[1]:
            verdicts.append((f"{device.type} B={batch} {labels}: library <= {MAX_RATIO_TO_SIMILARITY:g}x "
                             "similarity cost", lib / sim <= MAX_RATIO_TO_SIMILARITY))
    return verdicts


def main():
    run_benchmark(__doc__.splitlines()[0], run_device,
                  threads_help="CPU threads for torch (default: torch's choice, the number of cores)")


if __name__ == "__main__":
    main()
