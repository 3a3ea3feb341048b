"""Train and test an age regressor with RankSim (Gong, Mori and Tung, ICML 2022) and the DIR baselines.

    python train.py --reweight sqrt_inv --regularization_weight 100 --interpolation_lambda 2 \
        --batch_size 64 --lr 2.5e-4                           # SQINV + RankSim (a paper row)
    python train.py --evaluate --resume <run>/ckpt.best.pth.tar   # test a checkpoint, ours or published
    python train.py --resume <run>/ckpt.pth.tar               # continue an interrupted run
    torchrun --nproc_per_node 4 train.py ...                   # several GPUs; --batch_size stays global

`python train.py -h` lists every flag (the published ones, docs/published_behaviour.md §7). main()
reads as the table of contents: data -> model -> optimizer and starting point -> epochs -> test;
train_one_epoch() holds the training step and the paper's two loss lines. What is not research logic
(flag checks, run directories, checkpoints, logging, gathering, metrics) comes from ranksim.harness.

agedb-dir/train.py and imdb-wiki-dir/train.py are the same program: the files are identical except
for the marked dataset block (tests/test_architecture.py fails otherwise), so change both together.
"""
import math

import numpy as np
import torch
from loss import get_loss, published_age_loss
from ranking import batchwise_ranking_regularizer
from resnet import build_model

from ranksim.balanced_mse import balanced_mae
from ranksim.harness.age_flags import check_arch, check_args, is_head_key, parse_args, run_name
from ranksim.harness.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    state_dict_of,
)
from ranksim.harness.cli import run_cli
from ranksim.harness.comparators import DENSEWEIGHT, build_comparator, dense_sample_weights
from ranksim.harness.data.age import SPLITS
from ranksim.harness.data.loaders import age_loaders
from ranksim.harness.distributed import (
    GlobalBatch,
    fds_gather,
    mean_over_ranks,
    run_on_every_rank,
    sync_buffers,
    wrap_model,
)
from ranksim.harness.health import RunHealth, age_fixed_batch
from ranksim.harness.loop import (
    DivergenceError,
    checked_loss,
    exploding_loss_limit,
    freeze_all_but_head,
    keep_float32,
    make_step_options,
    predict_split,
    progress,
    set_train_mode,
    update_fds_statistics,
)
from ranksim.harness.run import (
    SCALER_KEY,
    Run,
    restore_random_state,
    restore_training,
    seed_everything,
    select_device,
)
from ranksim.metrics import age_shot_groups, format_metrics_table, per_label_mae, regression_metrics
from ranksim.ordinal_entropy import ordinal_entropy
from ranksim.weighting import label_weights

# isort: split
# ----- dataset block: the only lines in which agedb-dir/train.py and imdb-wiki-dir/train.py differ -----
from datasets import IMDBWIKI as Dataset  # the folder's datasets.py: split file, images

DEFAULTS = {"dataset": "imdb_wiki", "lds_ks": 5, "fds_ks": 5, "bucket_start": 0, "epoch": 90}
# ----- end of the dataset block -----


def main(argv=None) -> dict:
    """Run the program on the command line ``argv`` (None: sys.argv[1:]); returns results.json's content.
    Under torchrun every process runs it; a user error stops them all and rank 0 prints it."""
    args = parse_args(argv, DEFAULTS)
    return run_on_every_rank(lambda ctx: train_and_test(args, ctx), check=lambda: check_args(args, argv, DEFAULTS),
                             batch_size=args.batch_size, gpu=args.gpu, select_device=select_device)


def train_and_test(args, ctx) -> dict:
    device = ctx.device
    seed_everything(args.seed + ctx.rank)  # rank r draws its own augmentations; DDP copies rank 0's initial weights
    options = make_step_options(args.amp, args.channels_last, device, mean_over_ranks if ctx.distributed else None)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input size: let cuDNN pick its fastest kernels

    # Data. The per-sample train weights are SQINV/INV re-weighting, smoothed by LDS with --lds, or DenseWeight's.
    table = Dataset.read_table(args.data_dir, args.protocol)  # --protocol: a Puetz et al. stress-test split
    Dataset.check_images(args.data_dir, table)  # a missing image stops the run here, not mid-epoch
    train_labels = table.loc[table["split"] == "train", "age"].to_numpy(dtype=np.float32)
    if args.reweight == DENSEWEIGHT:
        weights = dense_sample_weights(args, train_labels)
    else:
        weights = label_weights(train_labels, args.reweight, args.lds, args.lds_kernel, args.lds_ks, args.lds_sigma,
                                label_kind="age", integer_smoothing=args.published_quirks)
    datasets = {split: Dataset(args.data_dir, table, args.img_size, split, weights if split == "train" else None)
                for split in SPLITS}
    sizes = {split: len(dataset) for split, dataset in datasets.items()}
    loaders = age_loaders(datasets, args, ctx)

    # Model: a ResNet whose pooled features are RankSim's input; with --fds it smooths them inside.
    model = build_model(args.model, fds=args.fds, bucket_num=args.bucket_num, bucket_start=args.bucket_start,
                        start_update=args.start_update, start_smooth=args.start_smooth, kernel=args.fds_kernel,
                        ks=args.fds_ks, sigma=args.fds_sigma, momentum=args.fds_mmt, return_encoding=True).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if options.amp_dtype is not None:
        keep_float32(model.linear)  # the regression head stays float32 under --amp (why: loop.keep_float32)
    if args.evaluate:
        return evaluate(args, model, loaders["test"], train_labels, sizes, ctx, options)

    # Optimizer and starting point: --resume, --pretrained (RRT: only the head retrains) or scratch.
    comparator = build_comparator(args, train_labels, device)  # --bmse / --conr / --rnc; inert without them
    pretrained = load_pretrained(args, model) if args.pretrained and not args.resume else None
    if args.retrain_fc:
        freeze_all_but_head(model)  # before DDP registers the trainable parameters
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=args.lr) if args.optimizer == "adam" else
                 torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay))
    comparator.add_sigma_group(optimizer, args.bmse_sigma_lr)
    start_epoch, best_score = 0, math.inf
    if args.resume:
        checkpoint = restore_training(args.resume, model, optimizer, options.scaler)
        comparator.restore(checkpoint, args.resume)
        start_epoch = int(checkpoint.get("epoch", 0))
        run = Run.for_resume(args.resume, args.store_root, args.store_name, ctx)
        best_score = run.resumed_best(checkpoint.get("best_loss", math.inf))
    else:
        run = Run.for_training(args.store_root, args.store_name or run_name(args), ctx)
    if ctx.is_main:
        comparator.save_prior(run.dir)

    with run:
        run.describe_memory(args)  # batch, image size, precision: named if the GPU runs out of memory
        run.log(f"run directory: {run.dir}\nargs: " + " ".join(f"--{k}={v}" for k, v in vars(args).items()))
        run.log(f"device {device}, workers {loaders['train'].num_workers}; train/val/test = {sizes['train']}/"
                f"{sizes['val']}/{sizes['test']}; train weights min {weights.min():.3g} max {weights.max():.3g}")
        for note in (Dataset.overlap_warning(table), pretrained,
                     ctx.distributed and f"distributed: {ctx.world_size} processes x {args.batch_size // ctx.world_size} "
                     f"samples = global batch {args.batch_size}{' (SyncBatchNorm)' if args.sync_bn else ''}",
                     args.resume and f"resumed {args.resume} after epoch {start_epoch} (best val score {best_score:.4f})"):
            if note:
                run.log(note)
        train_model = wrap_model(model, ctx, sync_bn=args.sync_bn)  # DistributedDataParallel under torchrun
        if args.compile:  # the training forward only: it shares its weights with `model`, which checkpoints save
            train_model = torch.compile(train_model)
        weighted_loss = comparator.balanced or (published_age_loss if args.published_quirks else get_loss)(args.loss)
        global_batch = GlobalBatch(ctx, args.seed)
        health = RunHealth(run, model.linear, args.regularization_weight, args.interpolation_lambda,  # RankSim health
                           lambda: age_fixed_batch(datasets["train"], args.batch_size, device), weighted_loss,
                           datasets["val"].labels, loaders["val"].sampler)
        score_name = "mse" if args.loss == "mse" else "mae"
        if args.resume:  # last before the first batch: nothing may draw from the restored random streams before it
            restore_random_state(checkpoint, ctx, args.seed, start_epoch)
        for epoch in range(start_epoch, args.epoch):
            lr = set_learning_rate(optimizer, args, epoch)
            if ctx.distributed:  # a new shuffle per epoch, and the same RankSim tie draws on every rank
                loaders["train"].sampler.set_epoch(epoch)
                global_batch.set_epoch(epoch)
            try:
                train_loss, ranksim_loss = train_one_epoch(train_model, loaders["train"], optimizer, weighted_loss,
                                                           epoch, args, run, options, global_batch, comparator)
                sync_buffers(model, ctx)  # rank 0's BatchNorm statistics on every rank before evaluating
                if args.fds and epoch >= args.start_update:  # FDS: per-bucket feature statistics after the epoch
                    gather = fds_gather(loaders["fds"].sampler, sizes["train"]) if ctx.distributed else None
                    run.phase = f"epoch {epoch + 1}, FDS statistics pass"
                    update_fds_statistics(model, loaders["fds"], device, epoch, frozen_backbone=args.retrain_fc,
                                          show_progress=ctx.is_main, gather=gather, options=options)
                    sync_buffers(model, ctx)
                run.phase = f"epoch {epoch + 1}, validation"
                with health.capture_val() as val_features:  # the val features, for the health check
                    val = validate(model, loaders["val"], train_labels, ctx, options, epoch)
            except DivergenceError as exc:
                raise run.diverged(exc) from None
            # RnC stage 1 trains no head, so its val score means nothing: the newest epoch counts as the best.
            is_best = val[score_name] < best_score or not comparator.regression
            best_score = min(best_score, val[score_name])
            extra = {"rng": capture_rng_state(), "args": vars(args), **comparator.checkpoint_extra()}
            if options.scaler is not None:
                extra[SCALER_KEY] = options.scaler.state_dict()
            run.save(make_checkpoint(model, optimizer, epoch + 1, best_score, arch=args.model, extra=extra), is_best)
            notes = (f" (ranksim {ranksim_loss:.4f})" if args.regularization_weight > 0 else "") + \
                (f" (bmse sigma {comparator.sigma():.4f})" if comparator.balanced is not None else "")
            run.log(f"epoch {epoch + 1}/{args.epoch} lr {lr:.3g} | train loss {train_loss:.4f}{notes} | val MSE "
                    f"{val['mse']:.3f} MAE {val['mae']:.3f} GM {val['gmean']:.3f} | best {score_name.upper()} "
                    f"{best_score:.3f}{' (new best)' if is_best else ''}")
            run.scalars({"train/loss": train_loss, "train/ranksim": ranksim_loss, "lr": lr, "val/mse": val["mse"],
                         "val/mae": val["mae"], "val/gmean": val["gmean"]}, epoch + 1)
            health.check(model, options, val_features, epoch + 1)  # one line, scalars, warnings (harness/health.py)

        best = run.load_best(model)
        run.phase = "test"
        results = test(model, loaders["test"], train_labels, ctx, options)
        return finish(run, args, run.best_path, best["epoch"], sizes, {**results, **health.results()})


def train_one_epoch(model, loader, optimizer, weighted_loss, epoch, args, run, options, global_batch, comparator):
    """One pass over the train split -> (mean total loss, mean RankSim term) per sample."""
    device = run.ctx.device
    set_train_mode(model, frozen_backbone=args.retrain_fc)  # RRT keeps the frozen backbone's BatchNorm in eval mode
    loss_limit = exploding_loss_limit(args.published_quirks)
    total_loss, total_ranksim, seen = 0.0, 0.0, 0
    with progress(loader, f"epoch {epoch + 1}/{args.epoch}", run.ctx.is_main) as bar:
        for step, (images, targets, weights, *views) in enumerate(bar):
            run.phase = f"epoch {epoch + 1}, training step {step + 1}"  # named if the GPU runs out of memory
            images, targets, weights = (t.to(device, non_blocking=True) for t in (images, targets, weights))
            with options.autocast(device):
                loss, ranksim = targets.new_zeros(()), None
                if comparator.regression:  # Rank-N-Contrast's encoder stage trains on its views alone
                    # In training the model returns the (FDS-smoothed) features next to the predictions.
                    preds, features = model(options.images(images), targets, epoch)
                    loss = weighted_loss(preds.float(), targets, weights)
                    if args.oe:  # Ordinal Entropy on the same features (one process: this batch's class centres)
                        loss = loss + ordinal_entropy(features, targets, args.oe_lambda_d, args.oe_lambda_t)
                    if args.regularization_weight > 0:
                        features, batch_targets = global_batch(features, targets)  # all ranks' batch under torchrun
                        ranksim = args.regularization_weight * batchwise_ranking_regularizer(
                            features, batch_targets, args.interpolation_lambda, generator=global_batch.generator,
                            gamma=args.regularization_weight)  # scale-correct under fp16 loss scaling
                        loss = loss + ranksim
                if comparator.view_loss is not None:  # ConR / Rank-N-Contrast on two augmented views
                    loss = loss + comparator.view_loss(model, views[0] if views else images, targets, weights)
            optimizer.zero_grad(set_to_none=True)
            options.backward(loss)
            # The step's one host sync, after backward (why: loop.checked_loss); the weights are still untouched.
            value = checked_loss(loss, loss_limit, f"epoch {epoch + 1}, step {step + 1}", options.reduce_loss)
            options.step(optimizer)

            seen += targets.shape[0]
            total_loss += value * targets.shape[0]
            if ranksim is not None:  # stays on the device: the loss check is the step's only sync
                total_ranksim = total_ranksim + ranksim.detach() * targets.shape[0]
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
            if (step + 1) % args.print_freq == 0:
                run.log(f"epoch {epoch + 1}/{args.epoch} [{step + 1}/{len(loader)}] running loss {total_loss / seen:.4f}")
    return total_loss / max(seen, 1), float(total_ranksim) / max(seen, 1)


def set_learning_rate(optimizer, args, epoch: int) -> float:
    """Step decay (x0.1 at each --schedule epoch) or, with --lr_cosine, cosine decay to --lr * 1e-3; a
    function of the epoch alone, so a resumed run continues on the same schedule."""
    if args.lr_cosine:
        final = args.lr * 1e-3
        lr = final + (args.lr - final) * (1 + math.cos(math.pi * epoch / args.epoch)) / 2
    else:
        lr = args.lr * 0.1 ** sum(epoch >= milestone for milestone in args.schedule)
    for group in optimizer.param_groups:
        if not group.get("fixed_lr"):  # Balanced MSE's sigma keeps its own learning rate
            group["lr"] = lr
    return lr


def validate(model, loader, train_labels, ctx, options, epoch: int) -> dict:
    """Val metrics of the whole split (MSE, MAE, GM)."""
    preds, labels = predict_split(model, loader, ctx, options, ctx.is_main, "val")
    if not np.isfinite(preds).all():  # e.g. a finite loss with an inf gradient in the last step
        raise DivergenceError(f"epoch {epoch + 1}: the model predicts NaN/inf on val")
    return regression_metrics(preds, labels, age_shot_groups(train_labels, labels))["all"]


def test(model, loader, train_labels, ctx, options) -> dict:
    """Test metrics per shot group (many > 100, few < 20 train images of the age), per age, balanced MAE."""
    preds, labels = predict_split(model, loader, ctx, options, ctx.is_main, "test")
    groups = age_shot_groups(train_labels, labels)
    return {"metrics": regression_metrics(preds, labels, groups, gm_eps=Dataset.overall_gm_eps, gm_eps_mode="overall"),
            "per_label": per_label_mae(preds, labels), "balanced_mae": balanced_mae(preds, labels, groups)}


def evaluate(args, model, loader, train_labels, sizes, ctx, options) -> dict:
    """--evaluate --resume CKPT: test CKPT (ours or the published code's). FDS buffers do not change a
    prediction, so they are ignored without --fds and may be absent with it."""
    checkpoint = load_checkpoint(args.resume)
    load_model_state(model, state_dict_of(checkpoint, args.resume), ignore_fds=not args.fds, allow_missing_fds=True,
                     source=args.resume)
    with Run.for_evaluation(args.resume, args.store_root, args.store_name, ctx) as run:
        run.describe_memory(args)
        run.phase = "test"
        results = test(model, loader, train_labels, ctx, options)
        epoch = checkpoint.get("epoch")
        return finish(run, args, args.resume, int(epoch) if epoch is not None else None, sizes, results)


def load_pretrained(args, model):
    """--pretrained (RRT's second stage, or fine-tuning): every tensor but the head's; FDS buffers with --fds
    when present. Returns the line to log (what was loaded, what kept its initial value)."""
    pretrained = load_checkpoint(args.pretrained)
    check_arch(pretrained, args.pretrained, args.model)
    report = load_model_state(model, state_dict_of(pretrained, args.pretrained), ignore_fds=not args.fds,
                              allow_missing_fds=True, skip=is_head_key, source=args.pretrained)
    return (f"loaded {len(report.loaded)} tensors from {args.pretrained}; kept initial: "
            f"{', '.join(report.kept_init) or 'none'}")


def finish(run, args, checkpoint, epoch, sizes, tested) -> dict:
    """Print the test table and write results.json; returns its content."""
    results = {"dataset": args.dataset, "protocol": args.protocol or "published", "split": "test",
               "checkpoint": str(checkpoint), "epoch": epoch, "args": vars(args), "sizes": sizes, **tested}
    run.log(f"test results of {checkpoint} (epoch {epoch}):\n{format_metrics_table(tested['metrics'])}")
    run.write_results(results)
    return results


if __name__ == "__main__":
    run_cli(main)
