"""Train and evaluate the STS-B-DIR BiLSTM regressor, with LDS / FDS / re-weighting / RankSim (docs/published_behaviour.md §8).

    python train.py                                                       # Vanilla
    python train.py --regularization_weight 3e-4 --interpolation_lambda 2 # + RankSim
    python train.py --reweight inverse --lds --fds --regularization_weight 3e-4 --interpolation_lambda 2
    python train.py --loss focal_mse                                      # Focal-R
    python train.py --retrain_fc --pretrained <run>/ckpt.best.pth.tar --reweight inverse  # RRT stage 2
    python train.py --evaluate --eval_model <run>/ckpt.best.pth.tar       # test a checkpoint
    python train.py --resume <run>/ckpt.pth.tar                           # continue a run
    python train.py --store_name <name> --resume                          # the same, by run name

Training counts iterations, as published: Adam, batch 16, a validation check every --val_interval
iterations, at most --max_vals checks, early stopping on validation MSE, the best checkpoint kept; then
the test split is evaluated with it. The model predicts score / 5 (metrics on prediction * 5), while
RankSim ranks and FDS buckets the raw scores 0-5.

Multi-GPU: ``torchrun --nproc_per_node N train.py ...`` (--batch_size stays the global batch: every
rank takes its slice of the batch a single process would use; RankSim and FDS see the global batch /
the whole split; rank 0 writes). --amp bf16|fp16 runs the encoder under autocast.

Run directory <store_root>/<store_name>/ (ranksim/harness/run.py): training.log, TensorBoard events,
vocab.txt, ckpt.pth.tar (latest check), ckpt.best.pth.tar, results.json, test_predictions.tsv. A
finished run is never written to again. Flags: ranksim/harness/stsb_flags.py.
"""
import functools
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from datasets import (
    PairDataset,
    build_vocab,
    check_glove_file,
    checkpoint_vocab_check,
    collate_pairs,
    eval_loader,
    initial_embeddings,
    load_splits,
    rank_batches,
    rank_share,
    vocab_fingerprint,
)
from loss import get_loss
from models import HEAD_NAME, STSBModel
from ranking import batchwise_ranking_regularizer

from ranksim.bins import Binning
from ranksim.harness.checkpoint import load_checkpoint, load_model_state, state_dict_of, unwrap_model
from ranksim.harness.cli import UserError, run_cli
from ranksim.harness.comparators import DENSEWEIGHT, build_comparator, dense_sample_weights
from ranksim.harness.distributed import (
    GlobalBatch,
    fds_gather,
    mean_over_ranks,
    run_on_every_rank,
    wrap_model,
)
from ranksim.harness.health import RunHealth, fixed_indices
from ranksim.harness.loop import (
    DivergenceError,
    checked_loss,
    exploding_loss_limit,
    freeze_all_but_head,
    keep_float32,
    make_step_options,
    update_fds_statistics,
)
from ranksim.harness.loop import progress as progress_bar
from ranksim.harness.run import restore_random_state, restore_training, seed_everything, select_device
from ranksim.harness.stsb_flags import check_args, parse_args
from ranksim.harness.stsb_run import (
    SCORE_SCALE,
    Progress,
    checkpoint_state,
    log_check,
    log_setup,
    open_run,
    predict_scores,
    resumed_progress,
    test_metrics,
    write_test_results,
    write_vocab,
)
from ranksim.ordinal_entropy import ordinal_entropy
from ranksim.weighting import label_weights

FOCAL_BETA = 20.0  # Focal-R's beta on STS-B as published (the age datasets use the loss default 0.2)


def main(argv=None) -> Dict:
    """Parse and check the flags, join the torchrun process group if there is one, run. A user error
    stops every rank; only rank 0 prints it."""
    args = parse_args(argv)
    return run_on_every_rank(lambda ctx: run_program(args, argv, ctx), check=lambda: check_args(args, argv),
                             batch_size=args.batch_size, gpu=args.gpu, select_device=select_device)


def run_program(args, argv, ctx) -> Dict:
    """Data -> model -> optimizer (or --resume) -> iterations with validation checks -> test."""
    # Rank r seeds with seed + r: rank 0 (and a single process) as published, the other ranks their own
    # dropout masks. The initial weights are rank 0's (DDP broadcasts them).
    seed_everything(args.random_seed + ctx.rank)
    options = make_step_options(args.amp, False, ctx.device, reduce_loss=mean_over_ranks if ctx.distributed else None)
    splits, vocab, data = load_data(args)
    source, checkpoint, vocab_note = read_checkpoint(args, vocab)  # vetted before a run directory exists
    with open_run(args, ctx) as run:
        log_setup(run, args, argv, splits, len(vocab), vocab_note)
        write_vocab(run, vocab)
        # A checkpoint carries the embeddings: only a fresh model needs GloVe.
        run.describe_memory(args)  # batch and precision: named if the GPU runs out of memory
        run.phase = "building the model"
        embeddings = None if checkpoint is not None else initial_embeddings(
            vocab, args.d_word, args.random_seed, args.word_embs_file if args.glove else None, run.log)
        model = build_model(args, vocab, embeddings, fds=args.fds and not args.evaluate).to(ctx.device)
        if options.amp_dtype is not None:
            keep_float32(model.head)
        if checkpoint is not None and not args.resume:  # --resume restores everything below, with the optimizer
            load_weights(model, args, checkpoint, source)
        if args.retrain_fc:
            freeze_all_but_head(model, head_prefix=HEAD_NAME + ".")
            run.log(f"RRT: encoder from {source}{'; FDS statistics start afresh' if args.fds else ''}; "
                    f"training only {HEAD_NAME}")
        if args.evaluate:
            return test(args, run, model, data, ctx, options, Path(source), checkpoint)

        optimizer = make_optimizer(model, args)
        # Balanced MSE's prior on the targets (score / 5): BNI bins of 0.02 = the 0.1-point STS-B bins
        comparator = build_comparator(args, np.asarray(splits["train"].scores) / SCORE_SCALE, ctx.device,
                                      bin_width=0.1 / SCORE_SCALE, two_views=lambda inputs: (inputs, inputs))
        comparator.add_sigma_group(optimizer, args.bmse_sigma_lr)
        if ctx.is_main:
            comparator.save_prior(run.dir)
        run.log(f"training {sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters; "
                f"{args.val_interval} iterations per check, at most {args.max_vals} checks")
        progress = Progress()
        if args.resume:
            checkpoint = restore_training(args.resume, model, optimizer, options.scaler)
            comparator.restore(checkpoint, args.resume)
            progress = resumed_progress(run, checkpoint, args.resume)
            # Last before the first batch: nothing may draw from the restored random streams first.
            restore_random_state(checkpoint, ctx, args.random_seed, progress.iteration)
        health = train(args, run, wrap_model(model, ctx), optimizer, progress, data, vocab, ctx, options, comparator)
        best = run.load_best(model)
        run.log(f"best checkpoint: iteration {progress.best_iteration}, val mse {progress.best_val_mse:.4f}")
        return test(args, run, model, data, ctx, options, run.best_path, best, extra=health.results())


# ------------------------------------------------------------------------------------- training

def train(args, run, model, optimizer, progress, data, vocab, ctx, options, comparator) -> RunHealth:
    """--val_interval steps, then a validation check (log, checkpoint, early stop), until --max_vals
    checks. model: DDP-wrapped under torchrun (prediction and the FDS pass use the bare model).
    Returns the run's health records (ranksim/harness/health.py), one per check."""
    bare, show = unwrap_model(model), not args.no_progress and ctx.is_main
    # --compile: the training forward only (it shares its weights with `model`, which checkpoints save);
    # dynamic shapes, as every batch has its own sentence length.
    step_model = torch.compile(model, dynamic=True) if args.compile else model
    val_loader, fds_loader = eval_loader(data["val"], ctx), eval_loader(data["train"], ctx)
    gather_fds = fds_gather(fds_loader.sampler, len(data["train"])) if ctx.distributed and args.fds else None
    weighted_loss = stsb_loss(args) if comparator.balanced is None else comparator.balanced  # --bmse replaces --loss
    global_batch = GlobalBatch(ctx, seed=args.random_seed)
    health = RunHealth(run, bare.head, args.regularization_weight, args.interpolation_lambda,  # RankSim health
                       lambda: fixed_train_batch(data["train"], args.batch_size, ctx.device), weighted_loss,
                       data["val"].scores, val_loader.sampler)
    global_batch.set_epoch(progress.epoch)
    batches = rank_batches(len(data["train"]), args.batch_size, args.random_seed, progress.epoch, ctx.world_size)
    while len(progress.val_history) < args.max_vals:
        model.train()  # RRT too: the frozen encoder has no BatchNorm, only dropout (as in training)
        loss_sum, ranksim_sum = 0.0, 0.0  # ranksim_sum stays on the device: one host sync per step is enough
        bar = progress_bar(range(args.val_interval), f"check {len(progress.val_history) + 1}", show)
        for step in bar:
            global_indices = batches[progress.batch_in_epoch]
            indices, sizes = rank_share(global_indices, ctx)
            # DDP averages the ranks' gradients: each rank's mean loss scaled by its share of the global
            # batch makes that the global-batch mean also when the last batch splits unevenly (1: one process).
            share = len(indices) * ctx.world_size / len(global_indices)
            run.phase = f"iteration {progress.iteration + 1} (epoch {progress.epoch + 1}), training step"
            try:
                loss, ranksim = train_step(step_model, collate_pairs([data["train"][i] for i in indices]), optimizer,
                                           weighted_loss, global_batch, args, progress.epoch, options, sizes, share,
                                           comparator.view_loss, f"iteration {progress.iteration + 1}")
            except DivergenceError as error:
                raise run.diverged(error) from None
            progress.iteration += 1
            progress.batch_in_epoch += 1
            loss_sum, ranksim_sum = loss_sum + loss, ranksim_sum + ranksim
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}", epoch=progress.epoch + 1, refresh=False)
            if progress.batch_in_epoch == len(batches):  # the epoch ends: FDS statistics of its features
                if args.fds and progress.epoch >= args.start_update:
                    run.phase = f"epoch {progress.epoch + 1}, FDS statistics pass"
                    update_fds_statistics(bare, fds_loader, ctx.device, progress.epoch, args.retrain_fc, show,
                                          gather=gather_fds, options=options)
                    model.train()
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
                batches = rank_batches(len(data["train"]), args.batch_size, args.random_seed, progress.epoch,
                                       ctx.world_size)
                global_batch.set_epoch(progress.epoch)
        bar.close()

        run.phase = f"validation check {len(progress.val_history) + 1}"
        with health.capture_val() as val_features:  # the val features, for the health check
            preds, scores = predict_scores(bare, val_loader, ctx, options, show, "val")
        val = test_metrics(preds, scores)["all"]
        is_best = progress.record(val["mse"])
        log_check(run, args, progress, val, loss_sum / args.val_interval, float(ranksim_sum) / args.val_interval,
                  is_best)
        health.check(bare, options, val_features, progress.epoch + 1, step=progress.iteration,
                     extra={"check": len(progress.val_history), "iteration": progress.iteration})
        run.save(checkpoint_state(model, optimizer, progress, args, vocab_fingerprint(vocab), comparator, options),
                 is_best)
        if should_stop_early(progress.val_history, args.patience):
            run.log(f"early stop: val mse {val['mse']:.4f} is the worst of the last {args.patience + 1} checks")
            break
    return health


def fixed_train_batch(dataset, size: int, device):
    """The health check's fixed train batch (ranksim/harness/health.py): (inputs, scores [B, 1] for
    RankSim, scores / 5 [B, 1] for the task loss, weights [B, 1]) on ``device``."""
    inputs, scores, weights = collate_pairs([dataset[int(i)] for i in fixed_indices(len(dataset), size)])
    return inputs.to(device), scores.to(device), scores.to(device) / SCORE_SCALE, weights.to(device)


def train_step(model, batch, optimizer, weighted_loss, global_batch, args, epoch: int, options, sizes=None,
               share: float = 1.0, view_loss=None, where: str = "a step"):
    """One optimizer step on ``batch`` (this rank's slice of the global batch; ``sizes``: every rank's)
    -> (the loss as a float, the RankSim term: a detached tensor on the device)."""
    device = global_batch.ctx.device
    inputs, scores, weights = (t.to(device, non_blocking=True) for t in batch)
    targets = scores / SCORE_SCALE
    optimizer.zero_grad(set_to_none=True)
    with options.autocast(device):  # --amp: the encoder in bf16/fp16; the head, the loss and RankSim in float32
        preds, features = model(inputs, scores, epoch)  # FDS (if on) smooths the features by their scores
        loss = weighted_loss(preds.float(), targets, weights) * share
        if args.oe:  # Ordinal Entropy on the same features and the raw scores (one process only: share = 1)
            loss = loss + ordinal_entropy(features, scores, args.oe_lambda_d, args.oe_lambda_t)
        ranksim = loss.new_zeros(())
        if args.regularization_weight > 0:
            # RankSim ranks the raw scores, as published (which label distances tie in float32 depends on
            # the scale). Under torchrun it sees the global batch (identity on one process).
            global_features, global_scores = global_batch(features, scores, sizes=sizes)
            ranksim = args.regularization_weight * batchwise_ranking_regularizer(
                global_features, global_scores, args.interpolation_lambda, generator=global_batch.generator,
                gamma=args.regularization_weight)  # scale-correct under fp16 loss scaling
            loss = loss + ranksim
        if view_loss is not None:  # ConR on two dropout draws of the batch (ranksim.harness.comparators)
            loss = loss + view_loss(model, inputs, targets, weights)
    options.backward(loss)
    # The step's one host sync, after backward (why: loop.checked_loss); the weights are still untouched.
    value = checked_loss(loss, exploding_loss_limit(args.published_quirks), f"{where} (epoch {epoch + 1})",
                         options.reduce_loss)
    if args.max_grad_norm > 0:
        options.unscale(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
    options.step(optimizer)
    return value, ranksim.detach()


def should_stop_early(val_history: List[float], patience: int) -> bool:
    """docs/published_behaviour.md §8, as published: with P = patience + 1, once the history (this check
    included) is longer than P, stop when this check's value is >= every one of the last P values."""
    window = patience + 1
    return len(val_history) > window and val_history[-1] >= max(val_history[-window:])


# ------------------------------------------------------------------------- the parts of a run

def stsb_loss(args):
    """The --loss function with STS-B's settings: Focal-R beta 20, Huber threshold --huber_beta."""
    loss_fn = get_loss(args.loss)
    if args.loss in ("focal_l1", "focal_mse"):
        return functools.partial(loss_fn, beta=FOCAL_BETA)
    if args.loss == "huber":
        return functools.partial(loss_fn, beta=args.huber_beta)
    return loss_fn


def train_weights(args, scores) -> np.ndarray:
    """Per-pair train weights (--reweight, --lds) over --bucket_num score bins, as published; DenseWeight's
    (--reweight denseweight) from a density of the raw scores 0-5."""
    if args.reweight == DENSEWEIGHT:
        return dense_sample_weights(args, scores)
    return label_weights(scores, args.reweight, args.lds, args.lds_kernel, args.lds_ks, args.lds_sigma,
                         label_kind="stsb", binning=Binning.stsb(args.bucket_num),
                         integer_smoothing=args.published_quirks)


def load_data(args):
    """(splits, vocabulary, {"train"|"val"|"test": PairDataset}); the train pairs carry their weights."""
    splits = load_splits(args.data_dir, args.max_seq_len)  # UserError for a missing or bad file
    vocab = build_vocab(splits, args.max_word_v_size)
    weights = train_weights(args, splits["train"].scores)
    return splits, vocab, {name: PairDataset(split, vocab, weights if name == "train" else None)
                           for name, split in splits.items()}


def build_model(args, vocab, embeddings, fds: bool) -> STSBModel:
    return STSBModel(
        len(vocab), d_word=args.d_word, d_hid=args.d_hid, n_layers=args.n_layers_enc, dropout=args.dropout,
        fds=fds, return_features=True, embeddings=embeddings,
        train_words=bool(args.train_words) or not args.glove,  # random embeddings (--glove 0) always train, as published
        start_update=args.start_update, start_smooth=args.start_smooth, kernel=args.fds_kernel, ks=args.fds_ks,
        sigma=args.fds_sigma, momentum=args.fds_mmt, bucket_num=args.bucket_num, bucket_start=args.bucket_start)


def read_checkpoint(args, vocab):
    """(path, contents, note to log) of the checkpoint the weights come from (--eval_model, --resume or
    --pretrained), vetted against this data's vocabulary and the model the flags describe; ("", None,
    None) for a fresh model, whose GloVe file is checked instead."""
    source = args.eval_model if args.evaluate else (args.resume or args.pretrained)
    if not source:
        if args.glove:
            check_glove_file(args.word_embs_file, args.d_word)
        return "", None, None
    checkpoint = load_checkpoint(source)
    note = checkpoint_vocab_check(checkpoint, vocab, source)
    if args.resume and ("iteration" not in checkpoint or checkpoint.get("optimizer") is None):
        raise UserError(f"--resume {args.resume}: not a training checkpoint of this program (no progress or "
                        "optimizer state); pass <run>/ckpt.pth.tar")
    with torch.device("meta"):  # a skeleton: names and shapes, no memory, no random draws
        skeleton = build_model(args, vocab, None, fds=args.fds and not args.evaluate)
    load_weights(skeleton, args, checkpoint, source, check_only=True)
    return source, checkpoint, note


def load_weights(model, args, checkpoint: dict, source: str, check_only: bool = False) -> None:
    """--resume: every weight. --evaluate: all but the FDS statistics (evaluation never smooths). RRT
    stage 2 (--retrain_fc --pretrained): the encoder only, as published: a fresh head and fresh FDS
    statistics (the stage-1 epoch counter would otherwise freeze them for all of stage 2).
    check_only: a UserError listing the keys that do not fit, and nothing loaded."""
    state_dict = state_dict_of(checkpoint, source)
    if args.resume:
        load_model_state(model, state_dict, source=source, check_only=check_only)
    else:
        skip_head = (lambda key: key.startswith(HEAD_NAME + ".")) if args.retrain_fc else None
        load_model_state(model, state_dict, ignore_fds=True, skip=skip_head, source=source, check_only=check_only)


def make_optimizer(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def test(args, run, model, data, ctx, options, checkpoint_path: Path, checkpoint: dict, extra=None) -> Dict:
    """The test split with ``model`` (the weights of ``checkpoint_path``): metrics, predictions, results.json
    (plus ``extra``'s entries: the health records of a training run)."""
    run.phase = "test"
    preds, scores = predict_scores(model, eval_loader(data["test"], ctx), ctx, options,
                                   not args.no_progress and ctx.is_main, "test")
    sizes = {name: len(dataset) for name, dataset in data.items()}
    return write_test_results(run, args, preds, scores, checkpoint_path, checkpoint, sizes, extra)


if __name__ == "__main__":
    run_cli(main)
