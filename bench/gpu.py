"""One prepared benchmark run for a lent GPU machine (issue 5): prints one table, under 8 minutes.

  (a) RankSim regularizer forward + backward: the library vs the published per-row loop
      (bench/regularizer.py's loop_regularizer), D = 2048, AgeDB-like labels, B = 64 / 256 / 1024;
  (b) ResNet-50 training step (agedb-dir/train.py's own train_one_epoch on a one-batch loader, i.e.
      exactly what agedb-dir/train.py does per batch; Adam, weighted L1) at 224 px: fp32 vs
      --amp bf16 --channels_last, each without and with RankSim (gamma 100, lambda 2), B = 64 and
      256 -> images/s, RankSim overhead, bf16 speed-up;
  (c) data loading: images/s of the AgeDB-DIR train pipeline (JPEG decode, resize, crop, flip) from a
      generated JPEG folder (ranksim.harness.data.synthetic), pinned memory and persistent workers.

Targets on an H100-class GPU (issue 5): RankSim adds <= 2 % to a ResNet-50 step at B = 64 and 256;
the library is >= 30x faster than the loop at B = 256; bf16 + channels_last >= 1.8x fp32.

    python bench/gpu.py                 # on the GPU machine (CUDA); ~5 minutes on an H100
    python bench/gpu.py --quick         # tiny sizes on whatever device there is (a CPU smoke run)
    python bench/gpu.py --skip loader   # sections: regularizer, step, loader

Without CUDA it runs at reduced sizes automatically (the numbers then say nothing about GPUs).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AgeSteps  # noqa: E402
from regularizer import loop_regularizer, make_batch  # noqa: E402  (the per-row loop, shared)
from train_step import RANKSIM_FLAGS, median_step_seconds, synchronize  # noqa: E402

from ranksim.harness.loop import keep_float32  # noqa: E402
from ranksim.harness.models.resnet import resnet50  # noqa: E402
from ranksim.regularizer import batchwise_ranking_regularizer  # noqa: E402

LAMBDA = 2.0  # the paper's interpolation strength (RankSim's gamma and lambda of the step: train_step.RANKSIM_FLAGS)
TARGETS = {"ranksim_overhead": 0.02, "library_vs_loop_at_256": 30.0, "bf16_speedup": 1.8}
SECTIONS = ("regularizer", "step", "loader")


def sizes_for(device: torch.device, quick: bool) -> dict:
    """Problem sizes: the issue's on CUDA; small ones on CPU; tiny with --quick."""
    if quick:
        return dict(reg_batches=[32, 64], dim=128, reg_reps=2, loop_max=64, img=32, step_batches=[4], rounds=1,
                    warmup=1, n_images=48, loader_img=32, loader_batch=16, workers=[0, 2])
    if device.type == "cuda":
        return dict(reg_batches=[64, 256, 1024], dim=2048, reg_reps=10, loop_max=1024, img=224,
                    step_batches=[64, 256], rounds=10, warmup=3, n_images=3000, loader_img=224, loader_batch=64,
                    workers=[8, min(16, os.cpu_count() or 1)])
    return dict(reg_batches=[64, 256], dim=2048, reg_reps=3, loop_max=256, img=64, step_batches=[16], rounds=3,
                warmup=1, n_images=400, loader_img=64, loader_batch=32, workers=[0, 2])


# ------------------------------------------------------------------------------------------ (a)


def time_fn(fn, features, targets, reps, device) -> float:
    """Median seconds of forward + backward of fn(features, targets, LAMBDA)."""
    times = []
    for i in range(reps + 1):  # the first call warms up
        x = features.detach().clone().requires_grad_(True)
        synchronize(device)
        start = time.perf_counter()
        fn(x, targets, LAMBDA).backward()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_regularizer(device, sz, rows):
    gen = torch.Generator().manual_seed(0)
    for batch in sz["reg_batches"]:
        features, targets = make_batch(batch, sz["dim"], "agedb", device, gen)
        lib = time_fn(batchwise_ranking_regularizer, features, targets, sz["reg_reps"], device)
        loop = time_fn(loop_regularizer, features, targets, max(1, sz["reg_reps"] // 3), device) \
            if batch <= sz["loop_max"] else float("nan")
        rows.append(("a", f"regularizer B={batch}", f"library {lib * 1e3:.2f} ms", f"loop {loop * 1e3:.1f} ms",
                     f"{loop / lib:.1f}x"))
        if batch == 256 and device.type == "cuda":
            met = loop / lib >= TARGETS["library_vs_loop_at_256"]
            rows.append(("a", "target library >= 30x loop at B=256", "", "", "met" if met else "MISSED"))


# ------------------------------------------------------------------------------------------ (b)


def make_amp_step(steps, device, batch, img, ranksim: bool, bf16: bool):
    """One ResNet-50 training step as agedb-dir/train.py runs it (its train_one_epoch on one batch),
    with RankSim's flags and/or --amp bf16 --channels_last."""
    torch.manual_seed(0)
    model = resnet50(return_encoding=True).to(device)  # the program's step takes (predictions, features)
    if bf16:  # the model set-up main() does for these flags
        model = model.to(memory_format=torch.channels_last)
        keep_float32(model.linear)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    data = [(torch.randn(batch, 3, img, img, device=device), torch.randint(0, 101, (batch, 1), device=device).float(),
             torch.ones(batch, 1, device=device))]
    flags = (RANKSIM_FLAGS if ranksim else []) + (["--amp", "bf16", "--channels_last"] if bf16 else [])
    return steps.make(model, optimizer, data, flags)


def bench_step(device, sz, rows):
    variants = {"fp32": (False, False), "fp32+ranksim": (True, False), "bf16cl": (False, True),
                "bf16cl+ranksim": (True, True)}
    for batch in sz["step_batches"]:
        try:
            with AgeSteps(device) as program_steps:
                steps = {name: make_amp_step(program_steps, device, batch, sz["img"], rs, bf)
                         for name, (rs, bf) in variants.items()}
                med = median_step_seconds(device, steps, sz["warmup"], sz["rounds"])
        except torch.cuda.OutOfMemoryError:
            rows.append(("b", f"ResNet-50 B={batch}", "out of GPU memory", "", ""))
            continue
        finally:
            steps = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for name in variants:
            base = med["fp32"] if name.startswith("fp32") else med["bf16cl"]
            overhead = f"ranksim {(med[name] / base - 1) * 100:+.1f}%" if "ranksim" in name else ""
            speedup = f"{med['fp32'] / med['bf16cl']:.2f}x vs fp32" if name == "bf16cl" else ""
            rows.append(("b", f"ResNet-50 {sz['img']}px B={batch} {name}", f"{batch / med[name]:.1f} img/s",
                         overhead, speedup))
        if device.type == "cuda":
            worst = max(med["fp32+ranksim"] / med["fp32"], med["bf16cl+ranksim"] / med["bf16cl"]) - 1
            rows.append(("b", f"target RankSim <= 2% at B={batch}", f"{worst * 100:+.1f}%", "",
                         "met" if worst <= TARGETS["ranksim_overhead"] else "MISSED"))
            speed = med["fp32"] / med["bf16cl"]
            rows.append(("b", f"target bf16+cl >= 1.8x at B={batch}", f"{speed:.2f}x", "",
                         "met" if speed >= TARGETS["bf16_speedup"] else "MISSED"))


# ------------------------------------------------------------------------------------------ (c)


def bench_loader(device, sz, rows):
    from torch.utils.data import DataLoader

    from ranksim.harness.data.age import AgeCSVDataset
    from ranksim.harness.data.synthetic import make_synthetic_age_dataset

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        # JPEGs at 256 px, the pipeline resizes to loader_img (as AgeDB's ~ 400 px images are resized to 224).
        make_synthetic_age_dataset(root, n_train=sz["n_images"], n_val=1, n_test=1,
                                   img_size=max(sz["loader_img"], 256 if device.type == "cuda" else 32), seed=0)
        rows.append(("c", f"generated {sz['n_images']} JPEGs", f"{time.perf_counter() - start:.1f} s", "", ""))
        table = AgeCSVDataset.read_table(root)
        dataset = AgeCSVDataset(root, table, sz["loader_img"], "train")
        for workers in sz["workers"]:
            loader = DataLoader(dataset, batch_size=sz["loader_batch"], shuffle=True, num_workers=workers,
                                pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=True)
            for _ in loader:  # first pass: workers start, page cache warms
                pass
            start = time.perf_counter()
            seen = 0
            for images, _, _ in loader:
                images = images.to(device, non_blocking=True)
                seen += images.shape[0]
            synchronize(device)
            rate = seen / (time.perf_counter() - start)
            rows.append(("c", f"loader {sz['loader_img']}px workers={workers}", f"{rate:.0f} img/s", "", ""))
            del loader


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the paper's numbers)
        torch.backends.cudnn.allow_tf32 = False
    sz = sizes_for(device, args.quick)
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU ops: threads only wait on each other on a shared machine
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"bench/gpu.py on {name}; torch {torch.__version__}{load}{'; --quick' if args.quick else ''}")
    start = time.perf_counter()
    rows = []
    sections = {"regularizer": bench_regularizer, "step": bench_step, "loader": bench_loader}
    for section, fn in sections.items():
        if section not in args.skip:
            fn(device, sz, rows)
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
