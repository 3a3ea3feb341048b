"""One prepared benchmark run for a lent GPU machine (issues 5 and 20): prints one table, under 8 minutes.

  (a) RankSim regularizer forward + backward as the programs call it (gamma passed): milliseconds,
      next to the bare similarity (normalize + matmul, forward + backward: the floor) and the
      published per-row loop (bench/regularizer.py's loop_regularizer), D = 2048, AgeDB-like labels,
      B = 64 / 256 / 1024; and the compute operators it dispatches (counted on CPU, any machine);
  (b) ResNet-50 training step (agedb-dir/train.py's own train_one_epoch on a one-batch loader, i.e.
      exactly what agedb-dir/train.py does per batch; Adam, weighted L1) at 224 px: fp32 vs
      --amp bf16 --channels_last, each without and with RankSim (gamma 100, lambda 2), B = 64 and
      256 -> images/s, RankSim overhead, bf16 speed-up;
  (c) data loading: images/s of the AgeDB-DIR train pipeline (JPEG decode, resize, crop, flip) from a
      generated JPEG folder (ranksim.harness.data.synthetic), pinned memory and persistent workers;
  (d) STS-B-DIR training step it/s (sts-b-dir's train_step, bench/stsb_step.py) at the paper's size
      (d_hid 1500, batch 16), without and with RankSim (gamma 3e-4, lambda 2);
  (e) GPU busy: agedb-dir/train.py itself (--amp bf16 --channels_last --fds, RankSim) for two epochs
      on the generated JPEG folder, nvidia-smi's utilisation sampled every 100 ms over the whole run.

Targets on an H100-class GPU (issues 5, 20): RankSim adds <= 2 % to a ResNet-50 step at B = 64 and
256; the library is >= 30x faster than the loop at B = 256 and takes <= 0.5 ms at B <= 1024; it
dispatches <= 45 compute operators (B = 256); the STS-B step with RankSim is <= 5 % slower; bf16 +
channels_last >= 1.8x fp32; the GPU is busy >= 70 % of a train.py run. Target rows say met / MISSED
(or "needs CUDA" where the row measures nothing on this machine).

    python bench/gpu.py                 # on the GPU machine (CUDA); ~5 minutes on an H100
    python bench/gpu.py --quick         # tiny sizes on whatever device there is (a CPU smoke run)
    python bench/gpu.py --skip loader   # sections: regularizer, step, loader, stsb, busy

Without CUDA it runs at reduced sizes automatically (the numbers then say nothing about GPUs).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import AgeSteps  # noqa: E402
from regularizer import (  # noqa: E402  (the loop, the similarity floor and the op count, shared)
    MAX_DISPATCHED_OPS,
    count_dispatched_ops,
    loop_regularizer,
    make_batch,
    similarity_only,
)
from train_step import RANKSIM_FLAGS, median_step_seconds, synchronize  # noqa: E402

from ranksim.harness.loop import keep_float32  # noqa: E402
from ranksim.harness.models.resnet import resnet50  # noqa: E402
from ranksim.regularizer import batchwise_ranking_regularizer  # noqa: E402

LAMBDA = 2.0  # the paper's interpolation strength (RankSim's gamma and lambda of the step: train_step.RANKSIM_FLAGS)
TARGETS = {"ranksim_overhead": 0.02, "library_vs_loop_at_256": 30.0, "bf16_speedup": 1.8, "library_ms": 0.5,
           "ops": MAX_DISPATCHED_OPS, "stsb_slowdown": 0.05, "busy": 0.70}
SECTIONS = ("regularizer", "step", "loader", "stsb", "busy")
GAMMA = 100.0  # the age programs' RankSim weight, passed as gamma= as they pass it


def verdict(device, met: bool) -> str:
    """met / MISSED on CUDA; elsewhere the measurement says nothing about the GPU target."""
    return ("met" if met else "MISSED") if device.type == "cuda" else "needs CUDA"


def programs_regularizer(features, targets, lam):
    """The regularizer as the programs call it: gamma * R(..., gamma=gamma)."""
    return GAMMA * batchwise_ranking_regularizer(features, targets, lam, gamma=GAMMA)


def sizes_for(device: torch.device, quick: bool) -> dict:
    """Problem sizes: the issue's on CUDA; small ones on CPU; tiny with --quick."""
    if quick:
        return dict(reg_batches=[32, 64], dim=128, reg_reps=2, loop_max=64, img=32, step_batches=[4], rounds=1,
                    warmup=1, n_images=48, loader_img=32, loader_batch=16, workers=[0, 2], quick=True)
    if device.type == "cuda":
        return dict(reg_batches=[64, 256, 1024], dim=2048, reg_reps=10, loop_max=1024, img=224,
                    step_batches=[64, 256], rounds=10, warmup=3, n_images=3000, loader_img=224, loader_batch=64,
                    workers=[8, min(16, os.cpu_count() or 1)], quick=False)
    return dict(reg_batches=[64, 256], dim=2048, reg_reps=3, loop_max=256, img=64, step_batches=[16], rounds=3,
                warmup=1, n_images=400, loader_img=64, loader_batch=32, workers=[0, 2], quick=False)


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
    slowest = 0.0
    for batch in sz["reg_batches"]:
        features, targets = make_batch(batch, sz["dim"], "agedb", device, gen)
        lib = time_fn(programs_regularizer, features, targets, sz["reg_reps"], device)
        floor = time_fn(similarity_only, features, targets, sz["reg_reps"], device)
        loop = time_fn(loop_regularizer, features, targets, max(1, sz["reg_reps"] // 3), device) \
            if batch <= sz["loop_max"] else float("nan")
        slowest = max(slowest, lib)
        rows.append(("a", f"regularizer B={batch}", f"library {lib * 1e3:.2f} ms", f"loop {loop * 1e3:.1f} ms",
                     f"{loop / lib:.1f}x"))
        rows.append(("a", f"similarity floor B={batch}", f"{floor * 1e3:.2f} ms", "", f"library/floor {lib / floor:.2f}"))
        if batch == 256:
            rows.append(("a", "target library >= 30x loop at B=256", f"{loop / lib:.1f}x", "",
                         verdict(device, loop / lib >= TARGETS["library_vs_loop_at_256"])))
    rows.append(("a", "target library <= 0.5 ms at B<=1024", f"{slowest * 1e3:.2f} ms", "",
                 verdict(device, slowest * 1e3 <= TARGETS["library_ms"])))
    # Counted on the CPU (the masked form, which accelerators run), so this row is meaningful anywhere.
    ops = sum(count_dispatched_ops(batch=256, dim=2048, gamma=GAMMA).values())
    published = sum(count_dispatched_ops(batch=256, dim=2048, gamma=None).values())
    rows.append(("a", "target ops dispatched <= 45 (B=256, fwd+bwd)", f"{ops} ops", f"({published} without gamma=)",
                 "met" if ops <= TARGETS["ops"] else "MISSED"))


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


# ------------------------------------------------------------------------------------------ (d)


def bench_stsb(device, sz, rows):
    import contextlib
    import io

    import stsb_step

    argv = (["--quick"] if sz["quick"] else []) + (["--cpu"] if device.type != "cuda" else [])
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # its own table; the rows below say it all
        results = stsb_step.main(argv)
    size = printed.getvalue().split(":", 1)[1].split(",")[0].strip()  # "d_hid 1500" (the paper's on CUDA)
    (_, vanilla), (_, ranksim) = results[:2]
    for name, rate in (("vanilla", vanilla), ("ranksim", ranksim)):
        rows.append(("d", f"STS-B step {size.replace(' ', '=')} B=16 {name}", f"{rate:.1f} it/s", "", ""))
    slowdown = 1 - ranksim / vanilla
    rows.append(("d", "target STS-B RankSim <= 5% slower", f"{slowdown * 100:+.1f}%", "",
                 verdict(device, slowdown <= TARGETS["stsb_slowdown"])))


# ------------------------------------------------------------------------------------------ (e)


def sample_utilisation(samples, stop):
    """Append nvidia-smi's GPU utilisation (percent) every 100 ms until ``stop`` is set."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
    while not stop.is_set():
        try:
            samples.append(float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return
        stop.wait(0.1)


def bench_busy(device, sz, rows):
    if device.type != "cuda":
        rows.append(("e", "target GPU busy >= 70% of a train.py run", "", "", "needs CUDA"))
        return
    from ranksim.harness.data.synthetic import make_synthetic_age_dataset

    with tempfile.TemporaryDirectory() as root:
        make_synthetic_age_dataset(root, n_train=sz["n_images"], n_val=200, n_test=200, img_size=256, seed=0)
        program = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "agedb-dir", "train.py")
        command = [sys.executable, program, "--data_dir", root, "--store_root", os.path.join(root, "runs"),
                   "--store_name", "busy", "--epoch", "2", "--batch_size", "64", "--amp", "bf16", "--channels_last",
                   "--fds", "--regularization_weight", "100", "--interpolation_lambda", "2",
                   "--workers", str(min(16, os.cpu_count() or 1))]
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample_utilisation, args=(samples, stop), daemon=True)
        start = time.perf_counter()
        sampler.start()
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        stop.set()
        sampler.join()
        seconds = time.perf_counter() - start
    if result.returncode != 0 or not samples:
        why = result.stderr.strip().splitlines()[-1:] or ["no nvidia-smi samples"]
        rows.append(("e", "target GPU busy >= 70% of a train.py run", "not measured", why[0][:60], "MISSED"))
        return
    busy = statistics.mean(samples) / 100
    rows.append(("e", f"train.py 2 epochs, {sz['n_images']} images", f"{seconds:.0f} s", f"{len(samples)} samples", ""))
    rows.append(("e", "target GPU busy >= 70% of a train.py run", f"{busy * 100:.0f}%", "",
                 verdict(device, busy >= TARGETS["busy"])))


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
    sections = {"regularizer": bench_regularizer, "step": bench_step, "loader": bench_loader, "stsb": bench_stsb,
                "busy": bench_busy}
    for section, fn in sections.items():
        if section not in args.skip:
            fn(device, sz, rows)
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
