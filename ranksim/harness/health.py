"""RankSim health in every training run (RankSim on or off: a vanilla run is the baseline), computed
with ranksim.diagnostics once per epoch (STS-B: at each validation check).

What is measured, and on what:
  * the fixed train batch: --batch_size train samples (at most), chosen once by a private NumPy
    generator (seed 0), the same samples in every epoch and every run of the same data; images
    without augmentation (the val/test transform), the model in eval mode (BatchNorm's running
    statistics, no dropout, no FDS smoothing). Mean pairwise cosine, rank agreement, and the
    gradient ratio ||d(gamma * RankSim)/d features|| / ||d task loss/d features|| with gamma =
    --regularization_weight, the run's task loss (weights included) and RankSim's own targets;
    under --amp fp16 both terms are multiplied by the loss scaler's current scale, as in the step's
    backward, so a RankSim gradient that loses the scale (1/65536 of what it should be) reads as a
    vanishing ratio and warns.
    A vanilla run (gamma = 0) records grad_ratio = null: gamma * RankSim has no gradient, and the
    ratio at another gamma does not tell how large it would be (RankSim's blackbox gradient is not
    linear in gamma); ranksim.diagnostics.gradient_ratio measures any candidate gamma directly.
  * val: the features validation already computes (the regression head's input, captured by a
    forward hook while the val predictions are made, kept on the device), at most VAL_SAMPLES of
    them, chosen once by a private generator (the rank agreement's cost grows as n^2 log n): mean
    cosine, rank agreement, computed on the device (a handful of host syncs per epoch, none per step).
Nothing here draws from the training random streams (private NumPy and torch generators), changes
BatchNorm statistics (eval mode) or touches a parameter's .grad (autograd.grad at the features), so
runs with the same seed stay bit-identical with or without it; nothing syncs inside a training step.
Under torchrun only rank 0 measures, on its own val shard and the fixed batch (the features of the
other ranks' shards follow the same model; gathering them would cost a collective for a diagnostic).

Output: one "health" line per epoch (or check) in training.log, TensorBoard scalars health/..., a
warning line (training.log and stderr) per threshold crossed (ranksim.diagnostics.health_warnings),
and results.json's "health" (the last record) and "health_history" (every record of this process;
a resumed run's history starts at the resumed epoch).
"""
import contextlib
import sys
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ranksim.diagnostics import gradient_ratio, health_warnings, mean_cosine, rank_agreement
from ranksim.harness.data.age import AgeCSVDataset, age_transform
from ranksim.harness.distributed import sampler_indices
from ranksim.regularizer import batchwise_ranking_regularizer

VAL_SAMPLES = 512  # val features per measurement (rank agreement costs n^2 log n, on the features' device)
SELECTION_SEED = 0  # the private generator that picks the fixed train batch and the val subset
TIE_DRAW_SEED = 0  # RankSim's tie draws on the fixed batch: the same in every epoch


def fixed_indices(population: int, size: int, seed: int = SELECTION_SEED) -> np.ndarray:
    """``min(size, population)`` distinct indices of range(population), sorted, from a private generator."""
    chosen = np.random.default_rng(seed).choice(population, size=min(size, population), replace=False)
    return np.sort(chosen)


def age_fixed_batch(dataset: AgeCSVDataset, size: int, device: torch.device):
    """The fixed train batch of an age run: (images [B, 3, s, s], ages [B, 1] (RankSim's targets), ages
    [B, 1] (the task's), weights [B, 1]) on ``device``; images through the val/test transform (no
    augmentation, so no random draw)."""
    indices = fixed_indices(len(dataset), size)
    transform = age_transform(dataset.transform.img_size, train=False)
    images = torch.stack([transform(dataset.load_image(int(i))) for i in indices])
    ages = torch.as_tensor(dataset.labels[indices]).reshape(-1, 1).to(device)
    weights = torch.as_tensor(dataset.weights[indices]).reshape(-1, 1)
    return images.to(device), ages, ages, weights.to(device)


@contextlib.contextmanager
def head_inputs(head: nn.Module, enabled: bool = True) -> Iterator[List[torch.Tensor]]:
    """Collect the input of ``head`` (the features [b, D], as float32 on their device: no copy, no
    sync) of every forward call inside the block, into the yielded list. A forward hook: the model's
    code is unchanged."""
    captured: List[torch.Tensor] = []
    if not enabled:
        yield captured
        return

    def keep(module, inputs, output):
        captured.append(inputs[0].detach().float())

    handle = head.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def _defined(measure: Callable[[], float]) -> Optional[float]:
    """measure(), or None where the diagnostic is undefined (e.g. rank agreement of a batch of one label,
    or a RankSim term cut off from the features there)."""
    try:
        return measure()
    except ValueError:
        return None


def _format(value: Optional[float], digits: str = ".3f") -> str:
    return "n/a" if value is None else format(value, digits)


class RunHealth:
    """The health measurements of one run (see the module docstring).

    run: the ranksim.harness.run.Run; head: the model's regression head (its input are the features
    RankSim regularizes); gamma, interp_lambda: --regularization_weight, --interpolation_lambda;
    make_batch: returns the fixed train batch (inputs, RankSim targets [B, 1], task targets [B, ...],
    weights [B, ...]) on the device (called once, by the main process only); task_loss: the run's loss(preds, targets, weights); val_labels: the val split's
    labels [N] in dataset order (RankSim's units); val_sampler: the val loader's sampler (its order
    is the order of the captured features). Only the main process measures.
    """

    def __init__(self, run, head: nn.Module, gamma: float, interp_lambda: float, make_batch: Callable,
                 task_loss: Callable, val_labels: np.ndarray, val_sampler):
        self.run, self.head, self.gamma, self.interp_lambda = run, head, float(gamma), float(interp_lambda)
        self.make_batch, self.batch, self.task_loss = make_batch, None, task_loss
        self.enabled = run.ctx.is_main
        self.val_labels = np.asarray(val_labels, dtype=np.float64).reshape(len(val_labels), -1)
        self.val_order = sampler_indices(val_sampler).numpy() if self.enabled else None
        self.history: List[Dict] = []

    def capture_val(self):
        """Wrap the validation pass: ``with health.capture_val() as features: val = validate(...)``."""
        return head_inputs(self.head, self.enabled)

    def check(self, model: nn.Module, options, val_features: List[torch.Tensor], epoch: int,
              step: Optional[int] = None, extra: Optional[Dict] = None) -> Optional[Dict]:
        """Measure, log, warn, record; returns the record (None on other ranks). model: the bare model
        (not DDP-wrapped: no collective), left in eval mode; options: the run's StepOptions (autocast);
        epoch: 1-based epoch of the record; step: TensorBoard step (default epoch); extra: more keys."""
        if not self.enabled:
            return None
        record = {"epoch": int(epoch), **(extra or {}), "train": self._train_batch(model, options),
                  "val": self._val(val_features)}
        lines = health_warnings(record["train"]["mean_cosine"] or 0.0, record["train"]["grad_ratio"], self.gamma,
                                where="train batch: ")
        lines += health_warnings(record["val"]["mean_cosine"] or 0.0, None, self.gamma, where="val features: ")
        record["warnings"] = lines
        self.history.append(record)
        self._report(record, epoch if step is None else step)
        return record

    def results(self) -> Dict:
        """results.json's entries: {"health": the last record, "health_history": every record} ({} if none)."""
        if not self.history:
            return {}
        return {"health": self.history[-1], "health_history": list(self.history)}

    def _train_batch(self, model: nn.Module, options) -> Dict:
        if self.batch is None:
            self.batch = self.make_batch()
        inputs, ranksim_targets, targets, weights = self.batch
        model.eval()
        with torch.no_grad(), options.autocast(ranksim_targets.device), head_inputs(self.head) as captured:
            model(options.images(inputs))
        features = captured[0].to(ranksim_targets.device).requires_grad_()
        ratio = None
        if self.gamma > 0:
            with torch.enable_grad():
                task = self.task_loss(self.head(features).float(), targets, weights)
                generator = torch.Generator(features.device).manual_seed(TIE_DRAW_SEED)
                # gamma= as in the programs' step: RankSim's gradient then keeps the loss scale (regularizer.py)
                ranksim = self.gamma * batchwise_ranking_regularizer(features, ranksim_targets, self.interp_lambda,
                                                                     generator=generator, gamma=self.gamma)
                # fp16: both terms times the loss scale, as the step's backward sees them, so a RankSim
                # backward that mishandles the scale shows up here as a ratio off by that factor.
                scale = options.scaler.get_scale() if options.scaler is not None else 1.0
                ratio = _defined(lambda: gradient_ratio(features, task * scale, ranksim * scale))
        return {"mean_cosine": _defined(lambda: mean_cosine(features)),
                "rank_agreement": _defined(lambda: rank_agreement(features, ranksim_targets)), "grad_ratio": ratio}

    def _val(self, val_features: List[torch.Tensor]) -> Dict:
        features = torch.cat(val_features) if val_features else torch.zeros(0, 1)
        labels = self.val_labels[self.val_order[:len(features)]]
        keep = fixed_indices(len(features), VAL_SAMPLES)
        features, labels = features[torch.as_tensor(keep, dtype=torch.long, device=features.device)], labels[keep]
        return {"mean_cosine": _defined(lambda: mean_cosine(features)),
                "rank_agreement": _defined(lambda: rank_agreement(features, labels))}

    def _report(self, record: Dict, step: int) -> None:
        train, val = record["train"], record["val"]
        ratio = "null (gamma 0)" if self.gamma == 0 else _format(train["grad_ratio"], ".3g")
        self.run.log(f"health epoch {record['epoch']}: train batch mean cosine {_format(train['mean_cosine'], '.4f')} "
                     f"rank agreement {_format(train['rank_agreement'])} grad ratio {ratio} | val mean cosine "
                     f"{_format(val['mean_cosine'], '.4f')} rank agreement {_format(val['rank_agreement'])}")
        scalars = {f"health/{split}_{name}": value for split in ("train", "val")
                   for name, value in record[split].items() if value is not None}
        self.run.scalars(scalars, step)
        for line in record["warnings"]:
            # training.log without the console copy (run.log would print it on stdout too), then stderr
            self.run.logger.record_error(Exception(line), prefix="health warning: ")
            print(f"health warning: {line}", file=sys.stderr, flush=True)
