"""Helpers shared by the benches; not a benchmark itself.

The command line of the library-vs-loop benches (bench/regularizer.py, bench/fds.py, bench/scaling.py):
each defines ``run_device(device, quick) -> [(target text, met?)]``,
which prints its own table for one device, and calls ``run_benchmark`` from its ``main``:

    --device auto|cpu|cuda   auto (default): CPU, and CUDA too when available
    --quick                  tiny sizes and few repetitions (smoke test)
    --threads N              CPU threads for torch

After every device has run, the targets are printed as PASS/FAIL lines. Speed misses never change
the exit code (a bench exits non-zero only when its implementations disagree numerically).

The age training step of the step benches (bench/train_step.py, bench/methods.py, bench/gpu.py):
:func:`load_age_program` loads agedb-dir/train.py, and :class:`AgeSteps` turns one batch into a call
of that program's own ``train_one_epoch``, so the benches time exactly what the program runs per batch.
"""
import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch

AGE_FOLDER = Path(__file__).resolve().parents[1] / "agedb-dir"

Verdict = Tuple[str, bool]  # (what the target says, whether this run met it)


def run_benchmark(description: str, run_device: Callable[[torch.device, bool], List[Verdict]],
                  threads_help: str) -> None:
    """Parse the command line, run ``run_device`` on each chosen device, print the targets."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, and CUDA too when available")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu")
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]

    verdicts = []
    for name in devices:
        verdicts += run_device(torch.device(name), args.quick)
    note = " (quick run: sizes too small for the targets to mean anything)" if args.quick else ""
    print(f"\nTargets (set for the 2-core CPU; shown for every device){note}:")
    for text, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


def load_age_program():
    """agedb-dir/train.py as a new module object: every call runs the file again, so one variant may
    patch names of its own copy without touching the others'.

    The folder is not a package and train.py imports its sibling files by plain names (datasets, loss,
    ranking, resnet), so the folder leads sys.path while the file runs. Those siblings stay loaded
    afterwards: a bench is a process of its own, and nothing else in it uses those names.
    """
    sys.path.insert(0, str(AGE_FOLDER))
    try:
        spec = importlib.util.spec_from_file_location("agedb_train", AGE_FOLDER / "train.py")
        program = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(program)
    finally:
        sys.path.remove(str(AGE_FOLDER))
    # The program draws a progress bar per train_one_epoch call, which is per timed step here, and the
    # benches print tables: hide it as TQDM_DISABLE=1 would (tqdm reads that variable when it is first
    # imported, and torch imports it before a bench could set it). A disabled bar is what the program
    # creates on the non-main ranks, so the step itself is unchanged.
    shown = program.progress
    program.progress = lambda iterable, desc, show: shown(iterable, desc, False)
    return program


class AgeSteps:
    """One-batch calls of agedb-dir/train.py's ``train_one_epoch`` (the program's training step), each
    with what the program's main() passes it for a command line::

        with AgeSteps(device) as steps:
            step = steps.make(model, optimizer, [(images, labels, weights)], ["--regularization_weight", "100"])
            step()  # one training step: forward, loss [+ RankSim], backward, loss check, optimizer step

    The pieces are built once per make(): the parsed flags, a Run in a scratch folder (deleted on exit),
    the StepOptions of --amp / --channels_last, a single-process GlobalBatch, the comparator of the
    --bmse / --conr / --rnc flags (its sigma group added to ``optimizer``) and the weighted loss.
    """

    def __init__(self, device: torch.device, program=None):
        from ranksim.harness.distributed import DistContext

        self.device = device
        self.program = program or load_age_program()
        self.ctx = DistContext(device=device)
        self._scratch = tempfile.TemporaryDirectory(prefix="bench_age_step_")
        self._runs = []

    def make(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Sequence, flags=(),
             train_labels=None, program=None) -> Callable[[], None]:
        """A function running ``program`` (default: this object's) over ``batch``, a list of one
        (images, labels [B, 1], weights [B, 1][, views]) tuple on the device. The model (already on the
        device, in the memory format and precision the flags ask for) must return (predictions,
        features) in training; ``train_labels``: the prior of --bmse bni / gai."""
        from ranksim.harness.distributed import GlobalBatch
        from ranksim.harness.run import Run

        program = program or self.program
        args = program.parse_args(list(flags), program.DEFAULTS)
        comparator = program.build_comparator(args, train_labels, self.device)
        comparator.add_sigma_group(optimizer, args.bmse_sigma_lr)
        weighted_loss = comparator.balanced or (program.published_age_loss if args.published_quirks
                                                else program.get_loss)(args.loss)
        options = program.make_step_options(args.amp, args.channels_last, self.device)
        global_batch = GlobalBatch(self.ctx, args.seed)
        run = Run(Path(self._scratch.name) / f"step{len(self._runs)}", self.ctx)
        self._runs.append(run)

        def step() -> None:
            program.train_one_epoch(model, batch, optimizer, weighted_loss, 0, args, run, options, global_batch,
                                    comparator)

        return step

    def close(self) -> None:
        for run in self._runs:
            run.logger.close()
        self._runs = []
        self._scratch.cleanup()

    def __enter__(self) -> "AgeSteps":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
