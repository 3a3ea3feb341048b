"""The bookkeeping of an ``sts-b-dir/train.py`` run, none of it research logic: which run directory
(:func:`open_run`), where training stands (:class:`Progress`), what a checkpoint holds and how
--resume continues from it (:func:`checkpoint_state`, :func:`resumed_progress`), the log lines, and
the evaluation protocol with its output files (:func:`predict_scores`, :func:`test_metrics`,
:func:`write_test_results`, vocab.txt).

The run protocol itself (files, save order, interruption, divergence) is :class:`ranksim.harness.run.Run`.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ranksim.harness.checkpoint import atomic_write, capture_rng_state, make_checkpoint
from ranksim.harness.comparators import Comparator
from ranksim.harness.distributed import DistContext
from ranksim.harness.loop import StepOptions, predict_split
from ranksim.harness.run import SCALER_KEY, Run
from ranksim.harness.stsb_flags import DATASET, run_name
from ranksim.metrics import format_metrics_table, per_label_mae, regression_metrics, stsb_shot_groups
from ranksim.weighting import stsb_bin_of

SCORE_SCALE = 5.0  # the model predicts score / 5, as published; metrics and files are on the 0-5 scale
GM_EPS = 1e-10  # STS-B: absolute errors equal to 0 become 1e-10 before the geometric mean (docs/published_behaviour.md §5)
ARCH = "sts-b-bilstm"  # the checkpoint's "model" entry


def open_run(args: argparse.Namespace, ctx: DistContext) -> Run:
    """The Run of --evaluate, --resume or a fresh training run (named by --store_name or the settings)."""
    if args.evaluate:
        return Run.for_evaluation(args.eval_model, args.store_root, args.store_name, ctx)
    if args.resume:
        return Run.for_resume(args.resume, args.store_root, args.store_name, ctx)
    return Run.for_training(args.store_root, args.store_name or run_name(args), ctx)


class Progress:
    """Where training stands; saved in every checkpoint so --resume continues at the same batch."""

    def __init__(self):
        self.iteration = 0  # optimizer steps taken
        self.epoch = 0  # completed passes over the train split (= the epoch now running, 0-based)
        self.batch_in_epoch = 0  # batches of the current epoch already used
        self.val_history: List[float] = []  # validation MSE of every check
        self.best_val_mse = float("inf")
        self.best_iteration = 0

    def record(self, val_mse: float) -> bool:
        """Add a check's validation MSE; True when it is the best so far."""
        self.val_history.append(val_mse)
        if val_mse < self.best_val_mse:
            self.best_val_mse, self.best_iteration = val_mse, self.iteration
            return True
        return False

    def state(self) -> dict:
        return {"iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
                "val_history": list(self.val_history), "best_iteration": self.best_iteration}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "Progress":
        progress = cls()
        progress.epoch, progress.best_val_mse = int(checkpoint["epoch"]), float(checkpoint["best_loss"])
        progress.iteration, progress.batch_in_epoch = int(checkpoint["iteration"]), int(checkpoint["batch_in_epoch"])
        progress.val_history = [float(v) for v in checkpoint["val_history"]]
        progress.best_iteration = int(checkpoint["best_iteration"])
        return progress


def checkpoint_state(model, optimizer, progress: Progress, args: argparse.Namespace, vocab_fingerprint: str,
                     comparator: Comparator, options: StepOptions) -> dict:
    """The published checkpoint layout (plain keys, no 'module.') plus what --resume needs to continue
    exactly: progress, random state, the vocabulary's fingerprint, the flags, Balanced MSE, loss scaler."""
    extra = {**progress.state(), "rng": capture_rng_state(), "vocab_fingerprint": vocab_fingerprint,
             "args": vars(args), **comparator.checkpoint_extra()}
    if options.scaler is not None:
        extra[SCALER_KEY] = options.scaler.state_dict()
    return make_checkpoint(model, optimizer, progress.epoch, progress.best_val_mse, arch=ARCH, module_prefix=False,
                           extra=extra)


def resumed_progress(run: Run, checkpoint: dict, path: str) -> Progress:
    """--resume ``path``: where training stands after the checkpoint (the best score to beat only when
    this run directory holds its best checkpoint, see Run.resumed_best); logs where training goes on."""
    progress = Progress.from_checkpoint(checkpoint)
    progress.best_val_mse = run.resumed_best(progress.best_val_mse)
    run.log(f"resumed from {path}: iteration {progress.iteration}, "
            f"{len(progress.val_history)} checks done, best val mse {progress.best_val_mse:.4f}")
    return progress


def log_setup(run: Run, args: argparse.Namespace, argv: Optional[Sequence[str]], splits: dict, vocab_size: int,
              vocab_note: Optional[str]) -> None:
    """The first lines of training.log: the command, the run directory, device, data sizes."""
    run.log("command: train.py " + " ".join(sys.argv[1:] if argv is None else argv))
    if vocab_note:
        run.log(vocab_note)
    run.log(f"run directory: {run.dir}")
    run.log(f"device: {run.ctx.device}; sizes: train {len(splits['train'])}, val {len(splits['val'])}, "
            f"test {len(splits['test'])} pairs; vocabulary {vocab_size} entries")
    run.log("rows skipped (no score, or a sentence without tokens): " +
            ", ".join(f"{Path(split.path).name} {split.skipped}" for split in splits.values()))
    if run.ctx.distributed:
        run.log(f"distributed: {run.ctx.world_size} processes share each global batch of {args.batch_size}")


def log_check(run: Run, args: argparse.Namespace, progress: Progress, val: dict, train_loss: float, ranksim: float,
              is_best: bool) -> None:
    """One line per validation check in training.log, and its TensorBoard scalars."""
    ranksim_note = f" (RankSim {ranksim:.4f})" if args.regularization_weight > 0 else ""
    # "epoch" is the 1-based epoch now running, as in the age logs; checkpoints keep progress.epoch
    # (completed passes), which --resume reads.
    run.log(f"check {len(progress.val_history)}/{args.max_vals} | iter {progress.iteration} | "
            f"epoch {progress.epoch + 1} | train loss {train_loss:.4f}{ranksim_note} | "
            f"val mse {val['mse']:.4f} mae {val['mae']:.4f} pearson {val['pearson'] or 0:.4f} | "
            f"best mse {progress.best_val_mse:.4f} @ iter {progress.best_iteration}" + (" *" if is_best else ""))
    run.scalars({"train/loss": train_loss, "train/ranksim": ranksim, "val/mse": val["mse"], "val/mae": val["mae"],
                 "val/pearson": val["pearson"] or 0.0, "val/spearman": val["spearman"] or 0.0,
                 "train/epoch": progress.epoch}, progress.iteration)


# ----------------------------------------------------------------------------------- evaluation

def predict_scores(model, loader, ctx: DistContext, options: StepOptions, show: bool,
                   desc: str) -> Tuple[np.ndarray, np.ndarray]:
    """(predicted scores = model output * 5, true scores), float64 [N] each, unclipped, in dataset
    order; under torchrun each rank predicts its shard and gets the whole split back."""
    preds, scores = predict_split(model, loader, ctx, options, show, desc)
    return preds * SCORE_SCALE, scores


def test_metrics(preds: np.ndarray, scores: np.ndarray) -> Dict[str, dict]:
    """MSE, MAE, GM, Pearson, Spearman overall and per shot group; preds and scores on [0, 5] ([N])."""
    return regression_metrics(preds, scores, stsb_shot_groups(scores), gm_eps=GM_EPS, gm_eps_mode="zeros",
                              correlations=True)


def write_test_results(run: Run, args: argparse.Namespace, preds: np.ndarray, scores: np.ndarray,
                       checkpoint_path: Path, checkpoint: dict, sizes: Dict[str, int],
                       extra: Optional[dict] = None) -> dict:
    """Log the test metrics of the weights of ``checkpoint_path`` (``checkpoint``: its entries, for the
    epoch and iteration), write test_predictions.tsv and results.json (plus ``extra``'s entries);
    returns the results."""
    metrics = test_metrics(preds, scores)
    run.log(f"test metrics ({checkpoint_path}):\n{format_metrics_table(metrics)}")
    if run.ctx.is_main:
        write_predictions(run.dir / "test_predictions.tsv", preds, scores)
    results = {"dataset": DATASET, "split": "test", "checkpoint": str(checkpoint_path),
               "epoch": checkpoint.get("epoch"), "iteration": checkpoint.get("iteration"), "args": vars(args),
               "sizes": sizes, "metrics": metrics, "per_label": per_label_mae(preds, scores, label_of=stsb_bin_of),
               **(extra or {})}
    run.write_results(results)
    return results


def write_predictions(path: Path, preds: np.ndarray, scores: np.ndarray) -> None:
    """test_predictions.tsv: the test predictions, clipped to [0, 5] as published (the metrics use the
    unclipped values)."""
    clipped = np.clip(preds, 0.0, SCORE_SCALE)
    lines = ["index\tscore\tprediction"] + [f"{i}\t{s:.3f}\t{p:.6f}" for i, (s, p) in enumerate(zip(scores, clipped))]
    write_text_file(path, "\n".join(lines) + "\n")


def write_vocab(run: Run, vocab: Sequence[str]) -> None:
    """vocab.txt of a run: one entry a line, the line number (from 0) its index (main process only)."""
    if run.ctx.is_main:
        write_text_file(run.dir / "vocab.txt", "\n".join(vocab) + "\n")


def write_text_file(path: "str | os.PathLike", text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; a failed write is the one-line "cannot write <path>"."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
