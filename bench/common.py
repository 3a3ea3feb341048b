"""The command line shared by the library-vs-loop benches (bench/regularizer.py, bench/fds.py).

Not a benchmark itself. Each bench defines ``run_device(device, quick) -> [(target text, met?)]``,
which prints its own table for one device, and calls ``run_benchmark`` from its ``main``:

    --device auto|cpu|cuda   auto (default): CPU, and CUDA too when available
    --quick                  tiny sizes and few repetitions (smoke test)
    --threads N              CPU threads for torch

After every device has run, the targets are printed as PASS/FAIL lines. Speed misses never change
the exit code (a bench exits non-zero only when its implementations disagree numerically).
"""
import argparse
from typing import Callable, List, Tuple

import torch

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
