"""STS-B-DIR training speed: iterations/s of sts-b-dir's real training step, without and with RankSim.

    python bench/stsb_step.py            # CUDA: the paper's size (d_hid 1500, batch 16); CPU: reduced size
    python bench/stsb_step.py --quick    # a few iterations at a tiny size (smoke run)

Each row times ``train.train_step`` (forward, loss, RankSim on the 8*d_hid pair features, backward,
the divergence check, gradient clipping, Adam step) on the same pre-built batches of random token ids with STS-B-like
sentence lengths (5-30 tokens), after warm-up iterations; CUDA is synchronised around the timed
loop. The ratio column is relative to the vanilla row measured in the same run.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from ranksim.harness.distributed import DistContext, GlobalBatch
from ranksim.harness.loop import StepOptions
from ranksim.harness.stsb_flags import build_parser

STSB_DIR = Path(__file__).resolve().parents[1] / "sts-b-dir"
SIBLINGS = ("datasets", "models", "loss", "ranking")  # sts-b-dir's modules that train.py imports by plain name


def _load_stsb(name: str):
    """Import sts-b-dir/<name>.py as module stsb_<name>. train.py imports its siblings by plain name
    (SIBLINGS): other modules of those names are set aside meanwhile and put back after."""
    before = {sibling: sys.modules.pop(sibling) for sibling in SIBLINGS if sibling in sys.modules}
    sys.path.insert(0, str(STSB_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"stsb_{name}", STSB_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(STSB_DIR))
        for sibling in SIBLINGS:
            sys.modules.pop(sibling, None)
        sys.modules.update(before)


def make_batches(num_batches: int, batch_size: int, vocab_size: int, generator: torch.Generator, datasets):
    """Random (PairInputs, scores [B, 1] in [0, 5], weights [B, 1]) batches; scores on a 0.2 grid."""
    batches = []
    for _ in range(num_batches):
        items = []
        for _ in range(batch_size):
            len1, len2 = torch.randint(5, 31, (2,), generator=generator).tolist()
            ids1 = torch.randint(2, vocab_size, (len1,), generator=generator)
            ids2 = torch.randint(2, vocab_size, (len2,), generator=generator)
            score = torch.randint(0, 26, (1,), generator=generator).float() * 0.2
            items.append((ids1, ids2, score, torch.ones(1)))
        batches.append(datasets.collate_pairs(items))
    return batches


def time_steps(train, model, batches, device, flags, warmup: int, iters: int, epoch: int = 0) -> float:
    """Iterations per second of train.train_step with train.py's ``flags`` over ``iters`` batches (after
    ``warmup``); epoch >= 1 makes FDS smooth the features."""
    args = build_parser().parse_args(flags)
    loss_fn = train.stsb_loss(args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2.5e-4, weight_decay=1e-5)
    global_batch, options = GlobalBatch(DistContext(device=device)), StepOptions()
    model.train()
    for i in range(warmup):
        train.train_step(model, batches[i % len(batches)], optimizer, loss_fn, global_batch, args, epoch, options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(iters):
        train.train_step(model, batches[i % len(batches)], optimizer, loss_fn, global_batch, args, epoch, options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny size, few iterations (smoke run)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per row")
    args = parser.parse_args(argv)

    datasets, models, train = _load_stsb("datasets"), _load_stsb("models"), _load_stsb("train")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.quick:
        d_hid, d_word, vocab_size, warmup, iters = 16, 8, 200, 1, 3
    elif device.type == "cuda":
        d_hid, d_word, vocab_size, warmup, iters = 1500, 300, 17011, 10, 100  # the paper's size
        torch.backends.cudnn.benchmark = True
    else:
        d_hid, d_word, vocab_size, warmup, iters = 256, 300, 17011, 2, 10  # reduced: the CPU is slow
    iters = args.iters or iters
    batch_size = 16
    generator = torch.Generator().manual_seed(0)
    batches = make_batches(8, batch_size, vocab_size, generator, datasets)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"STS-B-DIR training step on {name}: d_hid {d_hid}, d_word {d_word}, batch {batch_size}, "
          f"features {8 * d_hid}, {iters} timed iterations after {warmup} warm-up")
    ranksim = ["--regularization_weight", "3e-4", "--interpolation_lambda", "2"]
    rows = [("vanilla", False, []), ("RankSim (gamma 3e-4, lambda 2)", False, ranksim),
            ("FDS (smoothing on) + RankSim", True, ranksim)]
    results = []
    for label, fds, flags in rows:
        torch.manual_seed(0)
        model = models.STSBModel(vocab_size, d_word=d_word, d_hid=d_hid, fds=fds, return_features=True).to(device)
        results.append((label, time_steps(train, model, batches, device, flags, warmup, iters, epoch=1 if fds else 0)))
        del model
    reference = results[0][1]
    print(f"{'configuration':<34}{'it/s':>10}{'vs vanilla':>12}")
    for label, rate in results:
        print(f"{label:<34}{rate:>10.2f}{rate / reference:>11.3f}x")
    return results


if __name__ == "__main__":
    main()
