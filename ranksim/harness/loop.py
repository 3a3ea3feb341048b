"""The pieces the programs' training loops are made of: the step options (mixed precision,
channels_last), the loss check, train mode, the progress bar, prediction over a split, the FDS
statistics pass (docs/published_behaviour.md §1.6, §3).

These functions know nothing about argparse or files. The training step itself is not here: it is
``train_one_epoch`` in agedb-dir/train.py (and imdb-wiki-dir/train.py) and ``train_step`` in
sts-b-dir/train.py, where the paper's loss lines are read. Speed options and the distributed loss reduction come in one :class:`StepOptions`; its
defaults are the paper's fp32 step, which runs exactly as it did before those options existed.
"""
import contextlib
import math
import types
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ranksim.harness.checkpoint import unwrap_model
from ranksim.harness.cli import UserError
from ranksim.harness.distributed import DistContext, gather_predictions

# A loss above this is treated as divergence. The largest honest losses of the age benchmarks are
# MSE of an untrained model (~1e4) and gamma * RankSim (gamma 100 * at most the batch size).
EXPLODING_LOSS = 1e8
# The published code's limit (--published_quirks): it stops at a loss above 1e6.
PUBLISHED_EXPLODING_LOSS = 1e6


def exploding_loss_limit(published_quirks: bool) -> float:
    """The divergence threshold of a run: ours, or the published one under --published_quirks."""
    return PUBLISHED_EXPLODING_LOSS if published_quirks else EXPLODING_LOSS



class DivergenceError(UserError):
    """The training loss became NaN/inf or exploded; the epoch is abandoned."""


def checked_loss(loss: torch.Tensor, limit: float, where: str,
                 reduce_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> float:
    """The step's loss as a float, or DivergenceError when it is NaN/inf or above ``limit``.

    This is the one host sync of a training step, and every program places it after backward and
    before the optimizer step: a GPU then has the whole forward and backward queued when the host
    waits, and the parameters are still untouched if the loss is bad. ``where`` names the step in the
    message ('epoch 3, step 17'); ``reduce_loss`` (distributed runs: the mean over ranks) makes every
    rank check, and stop on, the same value.
    """
    value = (loss.detach() if reduce_loss is None else reduce_loss(loss.detach())).item()
    if not math.isfinite(value) or abs(value) > limit:
        raise DivergenceError(f"training diverged at {where}: loss = {value:.4g}")
    return value


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOptions:
    """How a step runs, not what it computes (defaults: fp32, contiguous, single process).

    amp_dtype: autocast dtype of the forward pass (torch.bfloat16 / torch.float16; None = fp32). The
        loss, RankSim and the metrics stay float32 (see :func:`keep_float32`).
    scaler: torch.amp.GradScaler, with fp16 (its small range needs loss scaling); None otherwise.
    channels_last: images (and the model, converted by the caller) in NHWC memory format.
    reduce_loss: maps the detached loss to the value checked for divergence and logged; distributed
        runs pass the mean over ranks (ranksim.harness.distributed.mean_over_ranks), so that every rank
        sees the same value and they all stop together.
    """

    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional["torch.amp.GradScaler"] = None
    channels_last: bool = False
    reduce_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), through the fp16 loss scaler when there is one."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before gradient clipping: the true gradients, not the fp16-scaled ones (a no-op without a scaler)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with the fp16 scaler, skipped when the scaled gradients overflowed."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def make_step_options(amp: str, channels_last: bool, device: torch.device,
                      reduce_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> StepOptions:
    """StepOptions from the --amp ('' | 'bf16' | 'fp16') and --channels_last flags. fp16 gets a
    GradScaler (enabled on CUDA; on CPU fp16 autocast has no scaler support, so it is refused)."""
    if amp and amp not in AMP_DTYPES:
        raise UserError(f"--amp {amp}: choose bf16 or fp16 (or leave it out for fp32)")
    scaler = None
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16: float16 training needs a CUDA GPU; on CPU use --amp bf16")
        scaler = torch.amp.GradScaler(device.type)
    return StepOptions(amp_dtype=AMP_DTYPES.get(amp), scaler=scaler, channels_last=channels_last,
                       reduce_loss=reduce_loss)


def keep_float32(module: nn.Module) -> nn.Module:
    """Run ``module`` (the regression head) in float32 even inside autocast; returns it.

    Why: under autocast a Linear runs in bf16/fp16, and bf16 keeps 8 significant bits, so a predicted
    age of 50 would come out as a multiple of 0.25 (the test MAE would move with the precision, not
    the model). The head is one small matmul, so float32 costs nothing. Done by an instance-level
    forward that leaves the module's parameters and state_dict keys untouched.
    """
    # A bound method of the module (not a closure over it), so that copy.deepcopy rebinds it to the copy.
    module.forward = types.MethodType(_float32_forward, module)
    return module


def _float32_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs):
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float(), *args, **kwargs)


def freeze_all_but_head(model: nn.Module, head_prefix: str = "linear.") -> None:
    """RRT: no gradient for any parameter outside the head."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(head_prefix)


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """model.train(); with a frozen backbone (RRT) its BatchNorm layers stay in eval mode, so their
    running statistics do not drift and only the head changes."""
    model.train()
    if frozen_backbone:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def progress(iterable: Iterable, desc: str, show: bool) -> tqdm:
    """tqdm bar that disappears when done; show=False hides it (non-main processes). The TQDM_DISABLE=1
    environment variable also hides it (explicit ``disable=`` would override that, so it is not passed)."""
    kwargs = {} if show else {"disable": True}
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, show_progress: bool = True,
            desc: str = "eval", options: Optional[StepOptions] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Predictions and labels (float64 [N] each) of ``model`` in eval mode over ``loader``."""
    options = options or StepOptions()
    model.eval()
    preds, labels = [], []
    for images, targets, _ in progress(loader, desc, show_progress):
        with options.autocast(device):
            out = model(options.images(images.to(device, non_blocking=True)))
        preds.append(out.float().cpu())
        labels.append(targets)
    if not preds:
        return np.zeros(0), np.zeros(0)
    return torch.cat(preds).double().numpy().reshape(-1), torch.cat(labels).double().numpy().reshape(-1)


def predict_split(model: nn.Module, loader: Iterable, ctx: DistContext, options: Optional[StepOptions] = None,
                  show_progress: bool = True, desc: str = "eval") -> Tuple[np.ndarray, np.ndarray]:
    """:func:`predict` over a split; under torchrun every rank predicts its shard and gets the whole
    split's predictions and labels back, in dataset order (float64 [N] each)."""
    preds, labels = predict(model, loader, ctx.device, show_progress, desc=desc, options=options)
    if ctx.distributed:
        preds, labels = gather_predictions(preds, labels, loader.sampler, len(loader.dataset), ctx)
    return preds, labels


@torch.no_grad()
def update_fds_statistics(model: nn.Module, loader: Iterable, device: torch.device, epoch: int,
                          frozen_backbone: bool = False, show_progress: bool = True,
                          gather: Optional[Callable[[torch.Tensor, torch.Tensor],
                                                    Tuple[torch.Tensor, torch.Tensor]]] = None,
                          options: Optional[StepOptions] = None) -> None:
    """docs/published_behaviour.md §3, after training epoch ``epoch``: run the train split through the model in train mode
    (augmentation on, targets passed so smoothing applies), then update the FDS statistics.

    gather: maps this process's (features [n, D], labels [n, 1]) to the whole split's before the
    update (distributed runs: every rank then applies the same update, see ranksim.harness.distributed).
    """
    options = options or StepOptions()
    set_train_mode(model, frozen_backbone)
    features, labels = [], []
    for images, targets, _ in progress(loader, "fds stats", show_progress):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with options.autocast(device):
            _, encoding = model(options.images(images), targets, epoch)
        features.append(encoding.float())  # a no-op in fp32
        labels.append(targets)
    features, labels = torch.cat(features), torch.cat(labels)
    if gather is not None:
        features, labels = gather(features, labels)
    fds = unwrap_model(model).FDS
    fds.update_last_epoch_stats(epoch)
    fds.update_running_stats(features, labels, epoch)
