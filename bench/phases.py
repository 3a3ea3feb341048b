"""Where an age run's time goes, by phase: start-up, first step, train steps, FDS statistics pass,
validation, checkpoint, test.

Runs agedb-dir/train.py's own ``main()`` (with --fds, so every phase runs) on a generated synthetic data
set, and times each phase by wrapping the program's functions; no copy of the program lives here. Start-up
is split into the imports, reading and checking the data, building the loaders and building the model.
"first batch" is the time from an epoch's start to its first loss (loader workers starting, the first
forward and backward); the steady steps are the rest of the epoch, per step.

    python bench/phases.py [--quick] [--device cpu|cuda] [--workers 2] [--img_size 32] [--epochs 3] [--compile]

Each phase's time is printed per epoch, next to its share of the whole run, so the shares stay meaningful
on a busy machine.
"""
import os
import time

STARTED = time.perf_counter()  # before torch is imported: the imports are part of the start-up
os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it when first imported (by torch)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_age_program  # noqa: E402

from ranksim.harness.data.synthetic import make_synthetic_age_dataset  # noqa: E402
from ranksim.harness.run import Run  # noqa: E402

IMPORTED = time.perf_counter()


class PhaseTimer:
    """Seconds per phase name, and the time stamps of the losses of the current epoch."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.counts = defaultdict(int)
        self.loss_times = []
        self.first_batches = []  # seconds per epoch

    def wrap(self, owner, name: str, phase: str):
        """Replace ``owner.<name>`` by a version that adds its run time to ``phase``."""
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)
        setattr(owner, name, timed)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        self.counts[phase] += 1


def instrument(program, timer: PhaseTimer) -> None:
    """Wrap the program's phases; the training epoch is split into its first batch and its steady steps."""
    timer.wrap(program, "age_loaders", "start-up: loaders")
    timer.wrap(program, "build_model", "start-up: model build")
    timer.wrap(program, "update_fds_statistics", "FDS statistics pass")
    timer.wrap(program, "validate", "validation")
    timer.wrap(program, "test", "test")
    timer.wrap(Run, "save", "checkpoint save")
    timer.wrap(Run, "log", "logging (training.log, TensorBoard)")
    timer.wrap(Run, "scalars", "logging (training.log, TensorBoard)")
    read_table, check_images = program.Dataset.read_table, program.Dataset.check_images
    program.Dataset.read_table = staticmethod(lambda *a: _timed(timer, "start-up: data table + image check",
                                                                read_table, *a))
    program.Dataset.check_images = staticmethod(lambda *a: _timed(timer, "start-up: data table + image check",
                                                                  check_images, *a))
    checked_loss, train_one_epoch = program.checked_loss, program.train_one_epoch

    def loss_then_stamp(*args, **kwargs):
        value = checked_loss(*args, **kwargs)
        timer.loss_times.append(time.perf_counter())
        return value

    def epoch(*args, **kwargs):
        timer.loss_times = []
        start = time.perf_counter()
        result = train_one_epoch(*args, **kwargs)
        end, stamps = time.perf_counter(), timer.loss_times
        if stamps:
            timer.first_batches.append(stamps[0] - start)
            timer.add("first batch (workers start, first forward/backward)", stamps[0] - start)
            timer.add("train steps after the first", end - stamps[0])
            timer.counts["steady steps"] += len(stamps) - 1
        return result
    program.checked_loss, program.train_one_epoch = loss_then_stamp, epoch


def _timed(timer: PhaseTimer, phase: str, function, *args):
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        timer.add(phase, time.perf_counter() - start)


def run(opts) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        make_synthetic_age_dataset(data, n_train=opts.n_train, n_val=opts.n_train // 4, n_test=opts.n_train // 4,
                                   img_size=opts.img_size, seed=0)
        program, timer = load_age_program(), PhaseTimer()
        instrument(program, timer)
        argv = ["--data_dir", str(data), "--img_size", str(opts.img_size), "--model", opts.model, "--fds",
                "--batch_size", str(opts.batch_size), "--workers", str(opts.workers), "--epoch", str(opts.epochs),
                "--store_root", str(Path(folder) / "runs"), "--print_freq", "100000"]
        argv += (["--gpu", "0"] if opts.device == "cuda" else []) + (["--compile"] if opts.compile else [])
        argv += ["--amp", opts.amp] if opts.amp else []
        main_start = time.perf_counter()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the program's log lines
            program.main(argv)
        total = time.perf_counter() - STARTED
    timer.add("start-up: imports (torch, the program)", IMPORTED - STARTED)
    report(timer, total, opts, main_start - IMPORTED)


def report(timer: PhaseTimer, total: float, opts, setup_seconds: float) -> None:
    steps = timer.counts["steady steps"]
    print(f"\n== {opts.device}, {opts.model}, {opts.n_train} train images of {opts.img_size} px, batch "
          f"{opts.batch_size}, workers {opts.workers}, {opts.epochs} epochs, FDS on"
          f"{', compile' if opts.compile else ''}{', amp ' + opts.amp if opts.amp else ''}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; bench set-up (data generation, not "
          f"the program) {setup_seconds:.1f} s is left out of the shares")
    total -= setup_seconds
    print(f"{'phase':52s} {'seconds':>8s} {'calls':>6s} {'s/call':>8s} {'share':>6s}")
    print("-" * 84)
    for phase in sorted(timer.seconds, key=lambda p: (not p.startswith("start-up"), p)):
        seconds, calls = timer.seconds[phase], max(timer.counts[phase], 1)
        print(f"{phase:52s} {seconds:8.2f} {calls:6d} {seconds / calls:8.3f} {seconds / total:6.1%}")
    accounted = sum(timer.seconds.values())
    print(f"{'other (logging, metrics, bookkeeping)':52s} {total - accounted:8.2f} {'':6s} {'':8s} "
          f"{(total - accounted) / total:6.1%}")
    print(f"{'whole run':52s} {total:8.2f}")
    if steps:
        print(f"steady training step: {timer.seconds['train steps after the first'] / steps * 1000:.0f} ms "
              f"({steps} steps); first batch of each epoch: "
              f"{', '.join(f'{seconds:.1f}' for seconds in timer.first_batches)} s")


def best_checkpoint_save(megabytes: int, repeats: int) -> None:
    """Run.save(is_best=True) of a ``megabytes`` state (ResNet-50 + Adam: ~300 MB): the best file written, then
    the latest name hard-linked to it (share_file, what Run.save does) or copied (copy_as_best, what it does
    where hard links fail); medians of ``repeats``."""
    import statistics

    from ranksim.harness.checkpoint import copy_as_best, save_checkpoint
    from ranksim.harness.run import share_file

    state = {"epoch": 1, "state_dict": {"w": torch.randn(megabytes * 2**20 // 4)}}
    times = {}
    with tempfile.TemporaryDirectory() as folder:
        best, latest = Path(folder) / "ckpt.best.pth.tar", Path(folder) / "ckpt.pth.tar"
        for variant, second_name in (("linked", share_file), ("copied", copy_as_best)):
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                save_checkpoint(state, best)
                second_name(best, latest)
                seconds.append(time.perf_counter() - start)
            times[variant] = statistics.median(seconds)
    print(f"\nbest-checkpoint save of a {megabytes} MB state (median of {repeats}): latest name linked "
          f"{times['linked']:.2f} s, copied {times['copied']:.2f} s ({times['copied'] / times['linked']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--n_train", type=int, default=256, help="train images (val and test: a quarter each)")
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="", choices=["", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="train.py --compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--checkpoint_mb", type=int, default=300, help="state size of the best-checkpoint save "
                        "comparison (0: skip it)")
    opts = parser.parse_args()
    if opts.quick:
        opts.n_train, opts.img_size, opts.batch_size, opts.epochs = 64, 16, 16, 2
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    run(opts)
    if opts.checkpoint_mb:
        best_checkpoint_save(8 if opts.quick else opts.checkpoint_mb, 1 if opts.quick else 3)


if __name__ == "__main__":
    main()
