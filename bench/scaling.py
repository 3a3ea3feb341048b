"""Benchmark: how the RankSim regularizer's cost grows with the batch, beside the bare similarity cost.

Forward + backward median wall time and peak memory of ``batchwise_ranking_regularizer`` for
B in {64, 256, 1024, 4096}, D in {128, 2048} features and d in {1, 2} label dimensions (continuous
labels, all distinct: the worst case, every sample kept), each next to the bare similarity cost
(normalize + matmul, forward + backward of its sum) measured in the same run, in turns.
Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU the highest running total of the
allocations minus frees that torch's profiler attributes to the operators of one forward + backward,
in operator order (tensors alive before the call, such as the input features, are not counted).

Target (2-core CPU): at B = 256, D = 2048 the library stays <= 2x the similarity cost (d = 1 and 2).
Speed misses do not change the exit code.

    python bench/scaling.py                 # CPU, and CUDA too when available
    python bench/scaling.py --quick         # tiny sizes, smoke test
"""
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import run_benchmark  # bench/common.py: python puts the script's folder on sys.path
from torch.profiler import ProfilerActivity, profile

from ranksim import batchwise_ranking_regularizer

LAMBDA = 2.0
MAX_RATIO_TO_SIMILARITY = 2.0


def library(features, targets):
    return batchwise_ranking_regularizer(features, targets, LAMBDA, label_distance="l2")


def similarity_only(features, targets):
    x = F.normalize(features.float(), dim=1)
    return (x @ x.T).sum()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fns, features, targets, reps, device):
    """Median forward+backward milliseconds per function; they take turns in each repetition."""
    leaf = features.detach().clone().requires_grad_(True)
    times = {name: [] for name in fns}
    for rep in range(reps + 1):  # round 0 warms up
        for name, fn in fns.items():
            leaf.grad = None
            sync(device)
            start = time.perf_counter()
            fn(leaf, targets).backward()
            sync(device)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def peak_mib(fn, features, targets, device):
    """Peak memory (MiB) allocated during one forward + backward, beyond what was alive before."""
    leaf = features.detach().clone().requires_grad_(True)
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(leaf, targets).backward()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(leaf, targets).backward()
    # Each operator's own allocations (> 0) and frees (< 0), in the order the operators started.
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak / 2 ** 20


def run_device(device, quick):
    batches = [16, 32] if quick else [64, 256, 1024, 4096]
    dims = [16] if quick else [128, 2048]
    gen = torch.Generator().manual_seed(0)
    print(f"\n== {device} (threads {torch.get_num_threads()}), lambda = {LAMBDA}, label_distance 'l2', "
          "all labels distinct; median forward+backward ms, peak MiB")
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count()
        busy = "  (busy: other jobs share the cores, expect noisy times)" if load > cores - 1 else ""
        print(f"load average {load:.1f} on {cores} cores{busy}")
    header = (f"{'B':>5} {'D':>5} {'d':>2} {'library ms':>11} {'sim ms':>9} {'lib/sim':>8} "
              f"{'library MiB':>12} {'sim MiB':>9}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for batch in batches:
        reps = 2 if quick else (3 if batch >= 4096 else 5 if batch >= 1024 else 15)
        for dim in dims:
            features = torch.randn(batch, dim, generator=gen).to(device)
            for label_dims in (1, 2):
                targets = torch.rand(batch, label_dims, generator=gen).to(device)
                ms = median_ms({"lib": library, "sim": similarity_only}, features, targets, reps, device)
                lib_mib = peak_mib(library, features, targets, device)
                sim_mib = peak_mib(similarity_only, features, targets, device)
                ratio = ms["lib"] / ms["sim"]
                print(f"{batch:>5} {dim:>5} {label_dims:>2} {ms['lib']:>11.2f} {ms['sim']:>9.2f} {ratio:>7.2f}x "
                      f"{lib_mib:>12.1f} {sim_mib:>9.1f}", flush=True)
                if batch == batches[1] and dim == dims[-1]:
                    verdicts.append((f"{device.type} B={batch} D={dim} d={label_dims}: library <= "
                                     f"{MAX_RATIO_TO_SIMILARITY:g}x similarity cost ({ratio:.2f}x)",
                                     ratio <= MAX_RATIO_TO_SIMILARITY))
    return verdicts


def main():
    run_benchmark(__doc__.splitlines()[0], run_device,
                  threads_help="CPU threads for torch (default: torch's choice, the number of cores)")


if __name__ == "__main__":
    main()
