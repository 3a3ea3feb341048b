"""Train and evaluate the STS-B-DIR BiLSTM regressor, with LDS / FDS / re-weighting / RankSim (docs/published_behaviour.md §8).

Training is iteration-based as published: Adam, batch 16, validation every --val_interval iterations,
at most --max_vals checks, early stopping on validation MSE, the best checkpoint kept, then the test
split is evaluated with it. The model predicts score / 5; metrics are on prediction * 5.

    python train.py                                                       # Vanilla
    python train.py --regularization_weight 3e-4 --interpolation_lambda 2 # + RankSim
    python train.py --reweight inverse --lds --fds --regularization_weight 3e-4 --interpolation_lambda 2
    python train.py --loss focal_mse                                      # Focal-R
    python train.py --retrain_fc --pretrained <run>/ckpt.best.pth.tar --reweight inverse  # RRT stage 2
    python train.py --evaluate --eval_model <run>/ckpt.best.pth.tar       # test a checkpoint
    python train.py --resume <run>/ckpt.pth.tar                           # continue a run
    python train.py --store_name <name> --resume                          # the same, by run name

Multi-GPU: ``torchrun --nproc_per_node N train.py ...`` (--batch_size stays the global batch: every
rank takes its slice of the same batch a single process would use; RankSim and FDS see the global
batch / the whole split; rank 0 writes). --amp bf16|fp16 runs the encoder under autocast.

Run directory <store_root>/<store_name>/: training.log, TensorBoard events, vocab.txt, ckpt.pth.tar
(latest check), ckpt.best.pth.tar, results.json, test_predictions.tsv. A finished run is never
written to again.
"""
import argparse
import functools
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from datasets import (
    PAD_INDEX,
    PairDataset,
    build_vocab,
    check_glove_file,
    collate_pairs,
    load_glove_matrix,
    load_splits,
    vocab_fingerprint,
)
from models import HEAD_NAME, STSBModel
from tqdm import tqdm

from ranksim.bins import Binning
from ranksim.distributed import GatheredRankSim
from ranksim.harness.checkpoint import (
    atomic_write,
    capture_rng_state,
    check_checkpoint_flag,
    copy_as_best,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_of,
    unwrap_model,
)
from ranksim.harness.cli import OneLineArgumentParser, UserError, run_cli
from ranksim.harness.comparators import (
    Comparator,
    add_comparator_flags,
    build_comparator,
    check_comparator_flags,
    comparator_run_name,
)
from ranksim.harness.distributed import (
    DistContext,
    broadcast_object,
    fds_gather,
    gather_predictions,
    mean_over_ranks,
    run_on_every_rank,
    split_sizes,
    sync_state,
    wrap_model,
)
from ranksim.harness.flags import adopt_recorded_flags, check_method_flags, check_positive, explicit_flags
from ranksim.harness.loop import (
    EXPLODING_LOSS,
    DivergenceError,
    StepOptions,
    exploding_loss_limit,
    freeze_all_but_head,
    keep_float32,
    make_step_options,
    predict,
    update_fds_statistics,
)
from ranksim.harness.loop import ranksim_regularizer as make_ranksim_regularizer
from ranksim.harness.run import (
    RESULTS_NAME,
    RunLogger,
    evaluation_run_name,
    make_run_dir,
    seed_everything,
    select_device,
    write_results_json,
)
from ranksim.losses import LOSSES, get_loss
from ranksim.metrics import format_metrics_table, per_label_mae, regression_metrics, stsb_shot_groups
from ranksim.weighting import REWEIGHTS, label_weights, stsb_bin_of

DATASET = "sts-b"
ARCH = "sts-b-bilstm"
SCORE_SCALE = 5.0  # the model is trained on score / 5
GM_EPS = 1e-10  # STS-B: absolute errors equal to 0 become 1e-10 before the geometric mean (docs/published_behaviour.md §5)
FOCAL_BETA = 20.0  # Focal-R's beta on STS-B as published (the age datasets use the loss default 0.2)
EVAL_BATCH_SIZE = 128  # prediction passes only (no gradient); results do not depend on it
CKPT_NAME, BEST_NAME = "ckpt.pth.tar", "ckpt.best.pth.tar"
RESUME_BY_NAME = True  # the value of a bare --resume: continue the run named by --store_name
SCALER_KEY = "scaler"  # extra checkpoint key: the fp16 GradScaler state (--amp fp16)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    a = p.add_argument
    # data and embeddings
    a("--data_dir", default="./glue_data/STS-B", help="folder with train_new.tsv, dev_new.tsv, test_new.tsv")
    a("--word_embs_file", default="./glove/glove.840B.300d.txt", help="GloVe text file")
    a("--glove", type=int, default=1, choices=[0, 1], help="1: GloVe vectors; 0: random N(0,1) embeddings")
    a("--max_seq_len", type=int, default=40, help="tokens kept per sentence")
    a("--max_word_v_size", type=int, default=30000, help="vocabulary words (besides padding/unknown)")
    # model
    a("--d_word", type=int, default=300, help="word vector size")
    a("--train_words", type=int, default=0, choices=[0, 1], help="1: fine-tune the GloVe word embeddings "
      "(with --glove 0 the random embeddings are always trained, as published)")
    a("--d_hid", type=int, default=1500, help="LSTM hidden size per direction")
    a("--n_layers_enc", type=int, default=2, help="LSTM layers")
    a("--dropout", type=float, default=0.2, help="dropout on the embeddings and the LSTM outputs")
    # optimisation
    a("--optimizer", default="adam", choices=["adam", "sgd"])
    a("--lr", type=float, default=2.5e-4)
    a("--weight_decay", type=float, default=1e-5)
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--batch_size", type=int, default=16)
    a("--loss", default="mse", choices=sorted(LOSSES))
    a("--huber_beta", type=float, default=0.3, help="Huber loss threshold (on score / 5)")
    a("--max_grad_norm", type=float, default=5.0, help="gradient-norm clip (0: off)")
    a("--val_interval", type=int, default=400, help="iterations between validation checks")
    a("--max_vals", type=int, default=300, help="maximum number of validation checks")
    a("--patience", type=int, default=30, help="early stop: see docs/published_behaviour.md §8 (P = patience + 1)")
    # imbalance methods
    a("--reweight", default="none", choices=list(REWEIGHTS), help="cost-sensitive re-weighting")
    a("--lds", action="store_true", help="label distribution smoothing of the re-weighting")
    a("--lds_kernel", default="gaussian", choices=["gaussian", "triang", "laplace"])
    a("--lds_ks", type=int, default=5)
    a("--lds_sigma", type=float, default=2)
    a("--fds", action="store_true", help="feature distribution smoothing")
    a("--fds_kernel", default="gaussian", choices=["gaussian", "triang", "laplace"])
    a("--fds_ks", type=int, default=5)
    a("--fds_sigma", type=float, default=2)
    a("--start_update", type=int, default=0, help="first epoch whose features update the FDS statistics")
    a("--start_smooth", type=int, default=1, help="first epoch in which FDS smooths the features")
    a("--bucket_num", type=int, default=50)
    a("--bucket_start", type=int, default=0)
    a("--fds_mmt", type=float, default=0.9, help="FDS momentum")
    a("--regularization_weight", type=float, default=0.0, help="RankSim gamma (0: off)")
    a("--interpolation_lambda", type=float, default=1.0, help="RankSim lambda")
    a("--published_quirks", action="store_true", help="reproduce the published code's unintended behaviours: "
      "INV+LDS smooths integer counts (truncated); divergence limit 1e6 (see the README's differences table)")
    a("--retrain_fc", action="store_true", help="RRT: retrain only the head (needs --pretrained)")
    a("--pretrained", default="", help="checkpoint whose encoder RRT starts from")
    # runs
    a("--evaluate", action="store_true", help="only evaluate --eval_model on the test split")
    a("--eval_model", default="", help="checkpoint to evaluate (ours or a published model_state_best.th)")
    a("--resume", nargs="?", const=RESUME_BY_NAME, default="", metavar="CKPT",
      help="continue a run: --resume <run>/ckpt.pth.tar, or --resume alone (the published form) to continue "
      "<store_root>/<store_name>/ckpt.pth.tar")
    a("--store_root", default="checkpoint", help="folder of run directories")
    a("--store_name", default="", help="run directory name (default: derived from the settings)")
    a("--random_seed", "--seed", type=int, default=111, help="random seed (recorded as random_seed, the published name)")
    a("--gpu", type=int, default=None, help="CUDA device index (default: CUDA when available, else CPU)")
    a("--no_progress", action="store_true", help="no progress bars")
    a("--amp", default="", choices=["", "bf16", "fp16"], help="mixed-precision training (autocast; fp16 with loss "
      "scaling); RankSim, the loss, the head and the metrics stay float32")
    # ConR's omega on the score / 5 targets: 0.04 = 0.2 score points, the step of most STS-B scores
    add_comparator_flags(p, with_rnc=False, conr_omega=0.04)
    return p


def resolve_resume_by_name(args: argparse.Namespace) -> None:
    """A bare --resume (the published form) -> args.resume = <store_root>/<store_name>/ckpt.pth.tar."""
    if args.resume is not RESUME_BY_NAME:
        return
    if not args.store_name:
        raise UserError("--resume without a checkpoint continues the run named by --store_name; pass "
                        f"--store_name <run name> or --resume <run>/{CKPT_NAME}")
    args.resume = str(Path(args.store_root) / args.store_name / CKPT_NAME)


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work -> UserError naming the flag (a bare --resume is resolved
    to its checkpoint path first)."""
    resolve_resume_by_name(args)
    check_positive(args, ("lr", "max_seq_len", "max_word_v_size", "d_word", "d_hid", "n_layers_enc", "batch_size",
                          "val_interval", "max_vals"))
    if args.patience < 0:
        raise UserError(f"--patience {args.patience}: must be 0 or more")
    if not 0 <= args.dropout < 1:
        raise UserError(f"--dropout {args.dropout}: must be in [0, 1)")
    check_method_flags(args)  # LDS / FDS / RankSim flags, shared with the image benchmarks
    if args.loss == "huber" and not args.huber_beta > 0:
        raise UserError(f"--huber_beta {args.huber_beta}: the Huber threshold must be > 0 (default 0.3)")
    if args.retrain_fc and not (args.pretrained or args.resume):
        raise UserError("--retrain_fc needs --pretrained <checkpoint> (the encoder to keep)")
    if args.pretrained and not args.retrain_fc:
        raise UserError("--pretrained is only used with --retrain_fc (RRT); to continue a run use --resume")
    if args.evaluate and not args.eval_model:
        raise UserError("--evaluate needs --eval_model <checkpoint>")
    if args.resume and (args.evaluate or args.pretrained):
        raise UserError("--resume continues a training run (it holds the whole model); "
                        "it cannot be combined with --evaluate or --pretrained")
    for flag, path, file_name in (("--resume", args.resume, CKPT_NAME), ("--eval_model", args.eval_model, BEST_NAME),
                                  ("--pretrained", args.pretrained, BEST_NAME)):
        if path:
            check_checkpoint_flag(flag, path, file_name)
    check_comparator_flags(args)
    if args.store_name and ("/" in args.store_name or args.store_name in (".", "..")):
        raise UserError(f"--store_name {args.store_name!r}: must be a plain directory name")


# Settings that define the model (and its vocabulary) a checkpoint holds: --evaluate / --resume take them
# from the flags the checkpoint records (see adopt_checkpoint_settings).
SIZE_FLAGS = ("d_word", "d_hid", "n_layers_enc", "max_seq_len", "max_word_v_size")
MODEL_FLAGS = SIZE_FLAGS + ("fds", "fds_kernel", "fds_ks", "fds_sigma", "start_update", "start_smooth", "bucket_num",
                            "bucket_start", "fds_mmt")


def adopt_checkpoint_settings(args: argparse.Namespace, explicit) -> None:
    """--evaluate --eval_model CKPT / --resume CKPT: MODEL_FLAGS from CKPT's recorded flags ('args', written
    by this program; --evaluate only the SIZE_FLAGS: evaluation never applies FDS); a contradicting flag in
    ``explicit`` (given on the command line) is a UserError. A published model_state_best.th records none:
    the flags stay as passed, by default the paper's."""
    flag, path = ("--eval_model", args.eval_model) if args.evaluate else ("--resume", args.resume)
    if not path:
        return
    check_checkpoint_flag(flag, path, BEST_NAME if args.evaluate else CKPT_NAME)
    recorded = load_checkpoint(path).get("args")
    if isinstance(recorded, dict):
        adopt_recorded_flags(args, explicit, recorded, SIZE_FLAGS if args.evaluate else MODEL_FLAGS, f"{flag} {path}")


def run_name(args: argparse.Namespace) -> str:
    """Default run directory name: the settings that tell runs apart, and a timestamp."""
    parts = [DATASET, "bilstm"]
    if args.retrain_fc:
        parts.append("rrt")
    if args.reweight != "none":
        parts.append(args.reweight)
    if args.lds:
        parts.append(f"lds_{args.lds_kernel[:3]}_{args.lds_ks}_{args.lds_sigma:g}")
    if args.fds:
        parts.append(f"fds_{args.fds_kernel[:3]}_{args.fds_ks}_{args.fds_sigma:g}_{args.start_update}_"
                     f"{args.start_smooth}_{args.fds_mmt:g}")
    if args.regularization_weight > 0:
        parts.append(f"reg{args.regularization_weight:g}_il{args.interpolation_lambda:g}")
    parts += comparator_run_name(args)
    parts += [args.optimizer, args.loss, f"lr{args.lr:g}", f"bs{args.batch_size}", f"hid{args.d_hid}",
              time.strftime("%Y%m%d-%H%M%S")]
    return "_".join(parts)


# ----------------------------------------------------------------------------------------- evaluation

def test_metrics(preds: np.ndarray, scores: np.ndarray) -> Dict[str, dict]:
    """MSE, MAE, GM, Pearson, Spearman overall and per shot group; preds and scores on [0, 5] ([N])."""
    return regression_metrics(preds, scores, stsb_shot_groups(scores), gm_eps=GM_EPS, gm_eps_mode="zeros",
                              correlations=True)


def predict_scores(model, loader, device, show_progress: bool, desc: str, ctx: Optional[DistContext] = None,
                   options: Optional[StepOptions] = None):
    """(predicted scores = model output * 5, true scores), float64 [N] each, unclipped. Under torchrun
    each rank predicts its shard and gets the whole split back, in dataset order."""
    preds, scores = predict(model, loader, device, show_progress=show_progress, desc=desc, options=options)
    if ctx is not None and ctx.distributed:
        preds, scores = gather_predictions(preds, scores, loader.sampler, len(loader.dataset), ctx)
    return preds * SCORE_SCALE, scores


def eval_loader(dataset, ctx: DistContext, shuffle: bool = False):
    """In-order prediction loader; under torchrun over this rank's shard (DistributedSampler pads the
    shards with a few repeated pairs, which gather_predictions / fds_gather drop again)."""
    sampler = None
    if ctx.distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                                      shuffle=shuffle)
    return torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, collate_fn=collate_pairs, sampler=sampler)


def rank_share(batch: np.ndarray, ctx: DistContext):
    """This rank's contiguous slice of a global batch of indices -> (indices, sizes of every rank's slice)."""
    if not ctx.distributed:
        return batch, None
    sizes = split_sizes(len(batch), ctx.world_size)
    start = sum(sizes[:ctx.rank])
    return batch[start:start + sizes[ctx.rank]], sizes


# ------------------------------------------------------------------------------------------- training

def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
    """Index batches of one epoch: a permutation drawn from (seed, epoch) alone, so a resumed run
    replays exactly the batches the interrupted one would have seen. The last batch may be smaller."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).numpy()
    return [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]


def should_stop_early(val_history: List[float], patience: int) -> bool:
    """docs/published_behaviour.md §8, as published: with P = patience + 1, once the history (this check included) is longer
    than P, stop when this check's value is >= every one of the last P values."""
    window = patience + 1
    return len(val_history) > window and val_history[-1] >= max(val_history[-window:])


class Progress:
    """Where training stands; saved in every checkpoint so --resume continues at the same batch."""

    def __init__(self):
        self.iteration = 0  # optimizer steps taken
        self.epoch = 0  # completed passes over the train split (= the epoch now running, 0-based)
        self.batch_in_epoch = 0  # batches of the current epoch already used
        self.val_history: List[float] = []  # validation MSE of every check
        self.best_val_mse = math.inf
        self.best_iteration = 0

    def state(self) -> dict:
        return {"iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
                "val_history": list(self.val_history), "best_iteration": self.best_iteration}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "Progress":
        progress = cls()
        progress.epoch = int(checkpoint["epoch"])
        progress.best_val_mse = float(checkpoint["best_loss"])
        progress.iteration = int(checkpoint["iteration"])
        progress.batch_in_epoch = int(checkpoint["batch_in_epoch"])
        progress.val_history = [float(v) for v in checkpoint["val_history"]]
        progress.best_iteration = int(checkpoint["best_iteration"])
        return progress


def train_step(model, batch, optimizer, loss_fn, regularizer, device, epoch: int, max_grad_norm: float,
               options: Optional[StepOptions] = None, share: Optional[float] = None,
               loss_limit: float = EXPLODING_LOSS, view_loss=None):
    """One optimizer step on ``batch`` -> (total loss, RankSim term) as floats.

    loss = loss_fn(pred, score / 5, weight) [+ gamma * RankSim(pair features, score)]: the head learns
    score / 5, while RankSim ranks the raw scores (0-5) as published (which label distances tie
    depends on the scale once float32 rounds them); FDS (inside the model) buckets by the raw scores.
    Under torchrun ``batch`` is this rank's slice b_r of a global batch of B pairs and
    share = b_r * N / B: DDP averages the N ranks' gradients, so scaling each rank's mean loss by its
    share makes the average the global-batch mean even when the last batch of an epoch splits unevenly;
    the regularizer (GatheredRankSim) is computed on the global batch and needs no scaling (see
    ranksim/distributed.py). view_loss: ConR on two dropout draws of the batch (ranksim.harness.comparators),
    added as is.
    """
    options = options or StepOptions()
    inputs, scores, weights = (t.to(device, non_blocking=True) for t in batch)
    targets = scores / SCORE_SCALE
    with options.autocast(device):
        output = model(inputs, scores, epoch)
        pred, features = output if isinstance(output, tuple) else (output, None)
        loss = loss_fn(pred.float(), targets, weights)  # .float(): a no-op in fp32
        if share is not None:
            loss = loss * share
        reg = regularizer(features, scores) if regularizer is not None else None
        if reg is not None:
            loss = loss + reg
        if view_loss is not None:
            loss = loss + view_loss(model, inputs, targets, weights)
    value = (loss.detach() if options.reduce_loss is None else options.reduce_loss(loss.detach())).item()
    if not math.isfinite(value) or abs(value) > loss_limit:
        raise DivergenceError(f"training diverged at epoch {epoch + 1}: loss = {value:.4g}; "
                              "lower --lr or --regularization_weight")
    optimizer.zero_grad(set_to_none=True)
    scaler = options.scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if max_grad_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value, (reg.item() if reg is not None else 0.0)


def stsb_loss(args):
    """The --loss function with STS-B's settings: Focal-R beta 20, Huber threshold --huber_beta."""
    loss_fn = get_loss(args.loss)
    if args.loss in ("focal_l1", "focal_mse"):
        return functools.partial(loss_fn, beta=FOCAL_BETA)
    if args.loss == "huber":
        return functools.partial(loss_fn, beta=args.huber_beta)
    return loss_fn


def train_weights(args, scores) -> np.ndarray:
    """Per-pair train weights (--reweight, --lds) over --bucket_num score bins, as published."""
    return label_weights(scores, args.reweight, args.lds, args.lds_kernel, args.lds_ks, args.lds_sigma,
                         label_kind="stsb", binning=Binning.stsb(args.bucket_num),
                         integer_smoothing=args.published_quirks)


def make_optimizer(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def checkpoint_vocab_check(checkpoint: dict, vocab: List[str], source: str) -> Optional[str]:
    """Our checkpoints record the vocabulary's fingerprint: refuse one built from other data (UserError).
    Returns a note to log for a checkpoint that records none (a published one), else None."""
    saved = checkpoint.get("vocab_fingerprint")
    if saved is None:
        return (f"note: {source} records no vocabulary (e.g. a published model_state_best.th); it must have been "
                "trained on these data files with the same --max_seq_len / --max_word_v_size")
    if saved != vocab_fingerprint(vocab):
        raise UserError(
            f"{source}: trained with another vocabulary (fingerprint {saved}, this data gives "
            f"{vocab_fingerprint(vocab)}); use the --data_dir, --max_seq_len and --max_word_v_size it was trained with")
    return None


def rank_batches(num_samples: int, args, epoch: int, ctx: DistContext) -> List[np.ndarray]:
    """epoch_batches; under torchrun without a last batch smaller than the number of processes (a rank
    would get no pair)."""
    batches = epoch_batches(num_samples, args.batch_size, args.random_seed, epoch)
    return [b for b in batches if len(b) >= ctx.world_size]


def train(args, model, optimizer, progress: Progress, splits, datasets_, device, run_dir: Path,
          logger: RunLogger, vocab: List[str], ctx: Optional[DistContext] = None,
          options: Optional[StepOptions] = None, comparator: Optional[Comparator] = None) -> Progress:
    """The iteration-based loop: steps, epoch-boundary FDS refresh, validation checks, checkpoints.
    model: DDP-wrapped under torchrun (prediction and the FDS pass use the bare model)."""
    ctx = ctx or DistContext(device=device)
    options = options or StepOptions()
    bare = unwrap_model(model)
    show = not args.no_progress and ctx.is_main
    train_set = datasets_["train"]
    val_loader = eval_loader(datasets_["val"], ctx)
    fds_loader = eval_loader(train_set, ctx)
    fds_gather_fn = fds_gather(fds_loader.sampler, len(train_set)) if ctx.distributed and args.fds else None
    loss_fn = stsb_loss(args)
    loss_limit = exploding_loss_limit(args.published_quirks)
    comparator = comparator or Comparator()
    if comparator.balanced is not None:  # --bmse replaces --loss
        loss_fn = comparator.balanced
    gathered = None
    if ctx.distributed and args.regularization_weight > 0:
        gathered = GatheredRankSim(args.regularization_weight, args.interpolation_lambda, device, args.random_seed)
        gathered.set_epoch(progress.epoch)
    regularizer = make_ranksim_regularizer(args.regularization_weight, args.interpolation_lambda)
    frozen_encoder = args.retrain_fc

    batches = rank_batches(len(train_set), args, progress.epoch, ctx)
    while len(progress.val_history) < args.max_vals:
        model.train()  # RRT too: the frozen encoder has no BatchNorm, only dropout (as in training)
        loss_sum = reg_sum = 0.0
        bar = tqdm(range(args.val_interval), desc=f"check {len(progress.val_history) + 1}", leave=False,
                   disable=not show, dynamic_ncols=True)
        for step in bar:
            global_batch = batches[progress.batch_in_epoch]
            indices, sizes = rank_share(global_batch, ctx)
            batch = collate_pairs([train_set[i] for i in indices])
            share = len(indices) * ctx.world_size / len(global_batch) if ctx.distributed else None
            step_regularizer = regularizer if gathered is None else functools.partial(gathered, sizes=sizes)
            loss, reg = train_step(model, batch, optimizer, loss_fn, step_regularizer, device, progress.epoch,
                                   args.max_grad_norm, options, share, loss_limit, comparator.view_loss)
            progress.iteration += 1
            progress.batch_in_epoch += 1
            loss_sum, reg_sum = loss_sum + loss, reg_sum + reg
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}", epoch=progress.epoch + 1, refresh=False)
            if progress.batch_in_epoch == len(batches):  # epoch boundary
                if args.fds and progress.epoch >= args.start_update:
                    update_fds_statistics(bare, fds_loader, device, progress.epoch, frozen_encoder, show,
                                          gather=fds_gather_fn, options=options)
                    model.train()
                progress.epoch += 1
                progress.batch_in_epoch = 0
                batches = rank_batches(len(train_set), args, progress.epoch, ctx)
                if gathered is not None:
                    gathered.set_epoch(progress.epoch)
        bar.close()

        preds, scores = predict_scores(bare, val_loader, device, show, "val", ctx, options)
        val = test_metrics(preds, scores)["all"]
        progress.val_history.append(val["mse"])
        is_best = val["mse"] < progress.best_val_mse
        if is_best:
            progress.best_val_mse, progress.best_iteration = val["mse"], progress.iteration
        check = len(progress.val_history)
        ranksim_note = f" (RankSim {reg_sum / args.val_interval:.4f})" if args.regularization_weight > 0 else ""
        # "epoch" here is the 1-based epoch now running, as in the age logs; checkpoints keep progress.epoch
        # (completed passes), which --resume reads.
        logger.info(f"check {check}/{args.max_vals} | iter {progress.iteration} | epoch {progress.epoch + 1} | "
                    f"train loss {loss_sum / args.val_interval:.4f}{ranksim_note} | "
                    f"val mse {val['mse']:.4f} mae {val['mae']:.4f} pearson {val['pearson'] or 0:.4f} | "
                    f"best mse {progress.best_val_mse:.4f} @ iter {progress.best_iteration}" + (" *" if is_best else ""))
        logger.scalars({"train/loss": loss_sum / args.val_interval, "train/ranksim": reg_sum / args.val_interval,
                        "val/mse": val["mse"], "val/mae": val["mae"], "val/pearson": val["pearson"] or 0.0,
                        "val/spearman": val["spearman"] or 0.0, "train/epoch": progress.epoch},
                       progress.iteration)
        extra = {**progress.state(), "rng": capture_rng_state(), "vocab_fingerprint": vocab_fingerprint(vocab),
                 "args": vars(args), **comparator.checkpoint_extra()}
        if options.scaler is not None:
            extra[SCALER_KEY] = options.scaler.state_dict()
        if ctx.is_main:  # only rank 0 writes
            save_checkpoint(make_checkpoint(model, optimizer, progress.epoch, progress.best_val_mse, arch=ARCH,
                                            module_prefix=False, extra=extra), run_dir / CKPT_NAME)
            if is_best:
                copy_as_best(run_dir / CKPT_NAME, run_dir / BEST_NAME)
        if should_stop_early(progress.val_history, args.patience):
            logger.info(f"early stop: val mse {val['mse']:.4f} is the worst of the last {args.patience + 1} checks")
            break
    return progress


# ----------------------------------------------------------------------------------------------- main

def build_model(args, vocab, embeddings: Optional[torch.Tensor], fds: bool) -> STSBModel:
    return STSBModel(
        len(vocab), d_word=args.d_word, d_hid=args.d_hid, n_layers=args.n_layers_enc, dropout=args.dropout,
        fds=fds, return_features=args.regularization_weight > 0 or args.conr, train_words=embeddings_trainable(args),
        embeddings=embeddings, start_update=args.start_update, start_smooth=args.start_smooth,
        kernel=args.fds_kernel, ks=args.fds_ks, sigma=args.fds_sigma, momentum=args.fds_mmt,
        bucket_num=args.bucket_num, bucket_start=args.bucket_start)


def embeddings_trainable(args) -> bool:
    """--train_words 1 fine-tunes GloVe; random embeddings (--glove 0) are always trained, as published."""
    return bool(args.train_words) or not args.glove


def initial_embeddings(args, vocab, logger) -> torch.Tensor:
    """GloVe (--glove 1) or N(0, 1) rows (--glove 0); padding row zero either way."""
    if args.glove:
        matrix, found = load_glove_matrix(args.word_embs_file, vocab, args.d_word, args.random_seed, log=logger.info)
        logger.info(f"GloVe: {found} of {len(vocab)} vocabulary entries found; the others are N(0, 1)")
        return matrix
    generator = torch.Generator().manual_seed(args.random_seed)
    matrix = torch.randn(len(vocab), args.d_word, generator=generator)
    matrix[PAD_INDEX] = 0.0
    return matrix


def check_checkpoint_fits(args, vocab, checkpoint: dict, source: str) -> None:
    """UserError listing the keys when ``checkpoint`` does not fit the model the flags describe (e.g.
    another --d_hid), raised before a run directory is made. It compares names and shapes against a
    skeleton of the model on the meta device (no memory, no random draws), with the rules run() loads by:
    --resume everything; --evaluate all but the FDS buffers; --retrain_fc the encoder only (not the
    head, not the FDS buffers)."""
    use_fds = args.fds and not args.evaluate
    with torch.device("meta"):
        skeleton = build_model(args, vocab, None, use_fds)
    head_key = HEAD_NAME + "."
    retrain = args.retrain_fc and not args.resume
    ignore_fds = (not use_fds or retrain) and not args.resume
    load_model_state(skeleton, state_dict_of(checkpoint, source), ignore_fds=ignore_fds,
                     skip=(lambda key: key.startswith(head_key)) if retrain else None, source=source,
                     check_only=True)


def resume_run_dir(args) -> Path:
    """Continue in the checkpoint's run directory while that run is unfinished (no results.json) and no
    other --store_name was asked for. A finished run is never written to again: its continuation gets
    a fresh directory, which starts with a copy of the finished run's best checkpoint."""
    old_dir = Path(args.resume).resolve().parent
    if not (old_dir / RESULTS_NAME).exists() and args.store_name in ("", old_dir.name):
        return old_dir
    run_dir = make_run_dir(args.store_root, args.store_name or old_dir.name)
    if (old_dir / BEST_NAME).is_file():
        copy_as_best(old_dir / BEST_NAME, run_dir / BEST_NAME)
    return run_dir


def main(argv=None) -> Dict:
    """Parse the flags, join the torchrun process group if there is one, run. A user error stops every
    rank; only rank 0 prints it (the others exit with the same code, quietly)."""
    args = build_parser().parse_args(argv)

    def check() -> None:
        resolve_resume_by_name(args)  # a bare --resume names its checkpoint before it is read
        adopt_checkpoint_settings(args, explicit_flags(build_parser, argv))
        check_args(args)

    return run_on_every_rank(lambda ctx: prepare_and_run(args, argv, ctx), check=check,
                             batch_size=args.batch_size, gpu=args.gpu, select_device=select_device)


def prepare_and_run(args, argv, ctx: DistContext) -> Dict:
    """Data, vocabulary, checkpoint checks and the run directory (rank 0's, on every rank), then run()."""
    # Rank r seeds with seed + r: rank 0 (and a single process) as before; other ranks get their own
    # dropout masks. The initial weights are rank 0's (DDP broadcasts them).
    seed_everything(args.random_seed + ctx.rank)
    device = ctx.device
    options = make_step_options(args.amp, False, device, reduce_loss=mean_over_ranks if ctx.distributed else None)

    splits = load_splits(args.data_dir, args.max_seq_len)  # UserError for missing/bad files first
    vocab = build_vocab(splits, args.max_word_v_size)
    weights = train_weights(args, splits["train"].scores)
    datasets_ = {"train": PairDataset(splits["train"], vocab, weights),
                 "val": PairDataset(splits["val"], vocab), "test": PairDataset(splits["test"], vocab)}

    # Weights from a checkpoint include the embeddings, so only a fresh model needs GloVe. Inputs are
    # checked before a run directory is made, so a bad one leaves nothing behind.
    source = args.eval_model if args.evaluate else (args.resume or args.pretrained)
    checkpoint = load_checkpoint(source) if source else None
    vocab_note = checkpoint_vocab_check(checkpoint, vocab, source) if checkpoint is not None else None
    if args.resume and ("iteration" not in checkpoint or checkpoint.get("optimizer") is None):
        raise UserError(f"--resume {args.resume}: not a training checkpoint of this program (no progress or "
                        "optimizer state); pass <run>/ckpt.pth.tar")
    if checkpoint is not None:
        check_checkpoint_fits(args, vocab, checkpoint, source)
    if checkpoint is None and args.glove:
        check_glove_file(args.word_embs_file, args.d_word)

    run_dir = None
    if ctx.is_main:
        default_name = evaluation_run_name(args.eval_model) if args.evaluate else run_name(args)
        run_dir = resume_run_dir(args) if args.resume else make_run_dir(args.store_root,
                                                                        args.store_name or default_name)
    run_dir = broadcast_object(run_dir, ctx)
    logger = RunLogger(run_dir, enabled=ctx.is_main)
    try:
        logger.info("command: train.py " + " ".join(sys.argv[1:] if argv is None else argv))
        if vocab_note:
            logger.info(vocab_note)
        return run(args, device, splits, vocab, datasets_, source, checkpoint, run_dir, logger, ctx, options)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (errors.Terminated)
        raise logger.interrupted(run_dir / CKPT_NAME, stop) from None
    finally:
        logger.close()


def run(args, device, splits, vocab, datasets_, source: str, checkpoint: Optional[dict], run_dir: Path,
        logger: RunLogger, ctx: Optional[DistContext] = None, options: Optional[StepOptions] = None) -> Dict:
    """Build the model (from GloVe or ``checkpoint``), train unless --evaluate, test, write results.json."""
    ctx = ctx or DistContext(device=device)
    options = options or StepOptions()
    logger.info(f"run directory: {run_dir}")
    logger.info(f"device: {device}; sizes: train {len(splits['train'])}, val {len(splits['val'])}, "
                f"test {len(splits['test'])} pairs; vocabulary {len(vocab)} entries")
    logger.info("rows skipped (no score, or a sentence without tokens): " +
                ", ".join(f"{Path(split.path).name} {split.skipped}" for split in splits.values()))
    if ctx.distributed:
        logger.info(f"distributed: {ctx.world_size} processes share each global batch of {args.batch_size}")
    if ctx.is_main:
        write_text_file(run_dir / "vocab.txt", "\n".join(vocab) + "\n")

    # Where the weights come from decides whether GloVe is needed: a checkpoint carries the embeddings.
    embeddings = None if checkpoint is not None else initial_embeddings(args, vocab, logger)
    use_fds = args.fds and not args.evaluate  # FDS is never applied in evaluation: its buffers are ignored
    model = build_model(args, vocab, embeddings, use_fds).to(device)
    if options.amp_dtype is not None:
        keep_float32(model.head)

    head_key = HEAD_NAME + "."
    if args.evaluate or (args.retrain_fc and not args.resume):
        # RRT stage 2 takes only the encoder, as published: a fresh head and, with --fds, fresh FDS
        # statistics (the stage-1 epoch counter would otherwise freeze them for all of stage 2).
        load_model_state(model, state_dict_of(checkpoint, source), ignore_fds=not use_fds or args.retrain_fc,
                         source=source, skip=(lambda key: key.startswith(head_key)) if args.retrain_fc else None)
    if args.retrain_fc:
        freeze_all_but_head(model, head_prefix=head_key)
        logger.info(f"RRT: encoder from {source}{'; FDS statistics start afresh' if args.fds else ''}; "
                    f"training only {HEAD_NAME}")
    optimizer = make_optimizer(model, args)
    if ctx.distributed and (args.bmse != "none" or args.conr):
        raise UserError("--bmse / --conr: not supported under torchrun yet; run them in one process")
    # Balanced MSE's prior on the targets (score / 5): BNI bins of 0.02 = the 0.1-point STS-B bins
    comparator = build_comparator(args, np.asarray(splits["train"].scores) / SCORE_SCALE, device,
                                  bin_width=0.1 / SCORE_SCALE,
                                  two_views=lambda inputs: (inputs, inputs))
    comparator.add_sigma_group(optimizer, args.bmse_sigma_lr)
    if ctx.is_main and not args.evaluate:
        comparator.save_prior(run_dir)
    progress = Progress()
    if args.resume:
        load_model_state(model, state_dict_of(checkpoint, args.resume), source=args.resume)
        load_optimizer_state(optimizer, checkpoint, args.resume)
        comparator.restore(checkpoint, args.resume)
        progress = Progress.from_checkpoint(checkpoint)
        if not (run_dir / BEST_NAME).is_file():
            progress.best_val_mse = math.inf  # no best checkpoint to compare against: the next check is best
        if options.scaler is not None and SCALER_KEY in checkpoint:
            options.scaler.load_state_dict(checkpoint[SCALER_KEY])
        if ctx.distributed:  # each rank its own dropout stream (the batches follow from seed and epoch)
            seed_everything(args.random_seed + ctx.rank + 1009 * progress.iteration)
        else:
            restore_rng_state(checkpoint["rng"])
        logger.info(f"resumed from {args.resume}: iteration {progress.iteration}, "
                    f"{len(progress.val_history)} checks done, best val mse {progress.best_val_mse:.4f}")

    best_path = Path(source) if args.evaluate else run_dir / BEST_NAME
    checkpoint_epoch, checkpoint_iteration = (checkpoint.get("epoch"), checkpoint.get("iteration")) \
        if args.evaluate else (None, None)
    if not args.evaluate:
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"training {n_trainable:,} parameters; {args.val_interval} iterations per check, "
                    f"at most {args.max_vals} checks")
        progress = train(args, wrap_model(model, ctx), optimizer, progress, splits, datasets_, device, run_dir,
                         logger, vocab, ctx, options, comparator)
        # Rank 0 reads the best checkpoint and hands its weights to the other ranks.
        if ctx.is_main:
            best = load_checkpoint(best_path)
            load_model_state(model, state_dict_of(best, str(best_path)), source=str(best_path))
            checkpoint_epoch, checkpoint_iteration = best.get("epoch"), best.get("iteration")
        checkpoint_epoch, checkpoint_iteration = broadcast_object((checkpoint_epoch, checkpoint_iteration), ctx)
        sync_state(model, ctx)
        logger.info(f"best checkpoint: iteration {progress.best_iteration}, val mse {progress.best_val_mse:.4f}")

    test_loader = eval_loader(datasets_["test"], ctx)
    preds, scores = predict_scores(model, test_loader, device, not args.no_progress and ctx.is_main, "test", ctx,
                                   options)
    metrics = test_metrics(preds, scores)
    logger.info(f"test metrics ({best_path}):\n{format_metrics_table(metrics)}")
    if ctx.is_main:
        write_predictions(run_dir / "test_predictions.tsv", preds, scores)
    results = {
        "dataset": DATASET, "split": "test", "checkpoint": str(best_path), "epoch": checkpoint_epoch,
        "iteration": checkpoint_iteration,
        "args": vars(args),
        "sizes": {name: len(split) for name, split in splits.items()},
        "metrics": metrics,
        "per_label": per_label_mae(preds, scores, label_of=stsb_bin_of),
    }
    if ctx.is_main:
        write_results_json(run_dir, results)
        logger.info(f"results: {run_dir / RESULTS_NAME}")
    return results


def write_predictions(path: Path, preds: np.ndarray, scores: np.ndarray) -> None:
    """Test predictions, clipped to [0, 5] as published (metrics use the unclipped values)."""
    clipped = np.clip(preds, 0.0, SCORE_SCALE)
    lines = ["index\tscore\tprediction"] + [f"{i}\t{s:.3f}\t{p:.6f}" for i, (s, p) in enumerate(zip(scores, clipped))]
    write_text_file(path, "\n".join(lines) + "\n")


def write_text_file(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; a failed write is the one-line "cannot write <path>"."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


if __name__ == "__main__":
    run_cli(main)
