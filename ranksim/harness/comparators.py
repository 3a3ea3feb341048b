"""The later DIR methods in the training programs: Balanced MSE, ConR, Rank-N-Contrast, Ordinal Entropy
and DenseWeight.

:func:`build_comparator` turns the comparator flags (--bmse*, --conr*, --rnc*) into one
:class:`Comparator` that the training loop asks for (a) the regression loss, (b) an extra term on two
augmented views (``view_loss(model, views [B, 2, ...], labels [B, 1], weights [B, 1])``), (c) the
optimizer group of Balanced MSE's noise scale and (d) what the checkpoint must carry to resume.

Balanced MSE (Ren et al., CVPR 2022): --bmse bmc|bni|gai replaces --loss; sigma is learned in its own
optimizer group at a fixed --bmse_sigma_lr (the reference code does not decay it); the BNI histogram /
GAI mixture is built once from the train labels and saved in the run directory (``bmse_prior.json``)
and, with sigma, in every checkpoint (key ``balanced_mse``). With --pretrained --retrain_fc it is the
reference protocol's second stage (head retrained with Balanced MSE).

ConR (Keramati et al., ICLR 2024): --conr adds beta * ConR on two views drawn with the benchmark's own
train augmentation; each view is a separate forward pass (three per step with the regression batch),
called without targets so FDS never smooths them; predictions detached inside the loss.

Rank-N-Contrast (Zha et al., NeurIPS 2023): --rnc encoder trains the encoder with the RnC loss alone
on two strongly augmented views (one forward pass over the 2B views, as the reference); --rnc linear
is stage 2, a linear head on the frozen encoder (RRT's machinery: --pretrained, only the head trains).

Ordinal Entropy (Zhang et al., ICLR 2023): --oe adds lambda_d * L_d + lambda_t * L_t
(ranksim.ordinal_entropy, --oe_lambda_d / --oe_lambda_t, both 1 as in the reference integration) on
the features RankSim sees (the backbone output the head sees, FDS-smoothed with --fds; STS-B: the
pair features [u, v, |u - v|, u * v] and the raw scores 0-5). The term is a line of the programs'
training step, next to RankSim's. One process only (its batch statistics are per process).

DenseWeight (Steininger et al., Machine Learning 2021): --reweight denseweight --dw_alpha A gives each
train sample DenseWeight's weight (ranksim.denseweight, fitted on the train labels in the units the
program reads them: ages, STS-B's raw scores); it takes the place of SQINV/INV in the per-sample
weight path, so it multiplies the per-sample loss and combines with FDS / RankSim / OE the same way.
"""
import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from ranksim.balanced_mse import BalancedMSELoss, fit_gaussian_mixture, label_histogram
from ranksim.contrastive import conr_loss, rnc_loss
from ranksim.denseweight import DenseWeight
from ranksim.harness.cli import UserError
from ranksim.harness.distributed import env_world_size
from ranksim.weighting import REWEIGHTS

CHECKPOINT_KEY = "balanced_mse"
PRIOR_NAME = "bmse_prior.json"

DENSEWEIGHT = "denseweight"
# The --reweight choices of the programs: the bin-count schemes of ranksim.weighting, and DenseWeight.
SAMPLE_WEIGHTINGS = REWEIGHTS + (DENSEWEIGHT,)

ViewLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# The reference schedules of Rank-N-Contrast, the defaults of --rnc encoder / --rnc linear (any flag
# given on the command line still wins).
RNC_STAGE_DEFAULTS = {
    "encoder": dict(model="resnet18", optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=1e-4, batch_size=256,
                    epoch=400, schedule=[], lr_cosine=True),
    "linear": dict(model="resnet18", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=64,
                   epoch=100, schedule=[], loss="l1", retrain_fc=True),
}


def add_comparator_flags(parser: argparse.ArgumentParser, with_rnc: bool = True, conr_omega: float = 1.0) -> None:
    """The --bmse*, --conr*, --oe*, --dw_alpha and (with_rnc) --rnc*/--lr_cosine flags; defaults: the
    papers' (conr_omega: the benchmark's default omega, in the units of the labels the loss sees)."""
    g = parser.add_argument_group("later DIR methods (Balanced MSE, ConR, Rank-N-Contrast, Ordinal Entropy, "
                                  "DenseWeight)")
    g.add_argument("--bmse", default="none", choices=["none", "bmc", "bni", "gai"],
                   help="Balanced MSE variant; replaces --loss (no --reweight)")
    g.add_argument("--bmse_init_sigma", type=float, default=1.0, help="initial noise scale sigma")
    g.add_argument("--bmse_sigma_lr", type=float, default=1e-2, help="learning rate of sigma (not decayed)")
    g.add_argument("--bmse_fix_sigma", action="store_true", help="keep sigma at --bmse_init_sigma")
    g.add_argument("--bmse_gmm_k", type=int, default=8, help="GAI: components of the label mixture")
    g.add_argument("--bmse_lds", action="store_true",
                   help="BNI: smooth the label histogram with the --lds_kernel/--lds_ks/--lds_sigma window")
    g.add_argument("--conr", action="store_true", help="add beta * ConR on two augmented views")
    g.add_argument("--conr_beta", type=float, default=4.0, help="ConR weight beta")
    g.add_argument("--conr_omega", type=float, default=conr_omega, help="ConR label/prediction similarity window omega")
    g.add_argument("--conr_tau", type=float, default=0.2, help="ConR temperature tau")
    g.add_argument("--conr_e", type=float, default=0.01, help="ConR pushing-weight exponent e")
    g.add_argument("--oe", action="store_true", help="add Ordinal Entropy on the features RankSim sees")
    g.add_argument("--oe_lambda_d", type=float, default=1.0, help="Ordinal Entropy: weight of the diversity term")
    g.add_argument("--oe_lambda_t", type=float, default=1.0, help="Ordinal Entropy: weight of the tightness term")
    g.add_argument("--dw_alpha", type=float, default=1.0,
                   help="DenseWeight strength alpha (with --reweight denseweight; 0: all weights 1)")
    if not with_rnc:
        return
    g.add_argument("--rnc", default="none", choices=["none", "encoder", "linear"],
                   help="Rank-N-Contrast stage: 'encoder' (RnC loss on two strong views; defaults ResNet-18, "
                        "SGD lr 0.5 wd 1e-4, batch 256, 400 epochs, cosine) or 'linear' (head on the frozen "
                        "--pretrained encoder; defaults SGD lr 0.05 wd 0, batch 64, 100 epochs, L1)")
    g.add_argument("--rnc_tau", type=float, default=2.0, help="RnC temperature tau")
    g.add_argument("--lr_cosine", action=argparse.BooleanOptionalAction, default=False,
                   help="cosine decay from --lr to --lr * 1e-3 over --epoch (instead of --schedule)")


def parse_with_stage_defaults(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """parse_args, then again with the --rnc stage's reference schedule as defaults (if a stage is given)."""
    args = parser.parse_args(argv)
    if getattr(args, "rnc", "none") != "none":
        parser.set_defaults(**RNC_STAGE_DEFAULTS[args.rnc])
        args = parser.parse_args(argv)
    return args


def check_comparator_flags(args: argparse.Namespace) -> None:
    """UserError (flag, value, fix) for comparator flags that cannot work."""
    rnc = getattr(args, "rnc", "none")
    if args.bmse != "none":
        if args.reweight != "none":
            raise UserError(f"--bmse {args.bmse}: Balanced MSE balances through its loss; drop --reweight "
                            f"{args.reweight} (and --lds)")
        if not args.bmse_init_sigma > 0 or not args.bmse_sigma_lr > 0:
            raise UserError(f"--bmse_init_sigma {args.bmse_init_sigma} / --bmse_sigma_lr {args.bmse_sigma_lr}: "
                            "both must be > 0")
        if args.bmse == "bmc" and args.batch_size < 2:
            raise UserError("--bmse bmc: the batch is the label sample; pass --batch_size >= 2")
        if args.bmse_gmm_k < 1:
            raise UserError(f"--bmse_gmm_k {args.bmse_gmm_k}: must be >= 1")
    if args.conr:
        if not (args.conr_beta >= 0 and args.conr_omega >= 0 and args.conr_tau > 0):
            raise UserError(f"--conr_beta {args.conr_beta} / --conr_omega {args.conr_omega} / --conr_tau "
                            f"{args.conr_tau}: beta and omega must be >= 0, tau > 0")
    if rnc == "encoder":
        others = [flag for flag, on in (("--bmse", args.bmse != "none"), ("--conr", args.conr), ("--fds", args.fds),
                                        ("--regularization_weight", args.regularization_weight > 0),
                                        ("--retrain_fc", args.retrain_fc)) if on]
        if others:
            raise UserError(f"--rnc encoder trains the encoder with the RnC loss alone; drop {' '.join(others)} "
                            "(use them in the --rnc linear stage or in another run)")
        if not args.rnc_tau > 0:
            raise UserError(f"--rnc_tau {args.rnc_tau}: must be > 0")
    if rnc == "linear" and not args.pretrained:
        raise UserError("--rnc linear: pass --pretrained <ckpt.best.pth.tar> of a --rnc encoder run")
    if args.conr and rnc != "none":
        raise UserError("--conr with --rnc: pick one method")
    check_oe_and_denseweight_flags(args)


def check_oe_and_denseweight_flags(args: argparse.Namespace) -> None:
    """UserError (flag, value, fix) for --oe* and --reweight denseweight / --dw_alpha values that cannot work."""
    for flag in ("oe_lambda_d", "oe_lambda_t", "dw_alpha"):
        value = getattr(args, flag)
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"--{flag} {value}: must be a finite number >= 0")
    if args.reweight != DENSEWEIGHT and args.dw_alpha != 1.0:  # a value the run would silently ignore
        raise UserError(f"--dw_alpha {args.dw_alpha}: only read with --reweight denseweight; add that, or drop "
                        "--dw_alpha")
    if not args.oe and (args.oe_lambda_d != 1.0 or args.oe_lambda_t != 1.0):
        raise UserError(f"--oe_lambda_d {args.oe_lambda_d} / --oe_lambda_t {args.oe_lambda_t}: only read with --oe; "
                        "add --oe, or drop them")
    if args.reweight == DENSEWEIGHT and args.lds:
        raise UserError("--lds: LDS smooths bin counts, DenseWeight (--reweight denseweight) has its own density "
                        "estimate; drop --lds")
    if args.oe and getattr(args, "rnc", "none") == "encoder":
        raise UserError("--oe with --rnc encoder: RnC's first stage trains on its loss alone; drop --oe")
    if args.oe and env_world_size() > 1:
        raise UserError("--oe: not supported under torchrun yet (its class centres are per batch); run it in one "
                        "process")


def dense_sample_weights(args: argparse.Namespace, train_labels) -> np.ndarray:
    """--reweight denseweight: DenseWeight's weights (float32 [N], mean 1) of the train labels [N] or [N, 1],
    fitted on them with --dw_alpha (Silverman bandwidth, 4,096-point grid, eps 1e-6)."""
    return DenseWeight(alpha=args.dw_alpha).fit(train_labels)(train_labels)


def comparator_run_name(args: argparse.Namespace) -> list:
    """Run-name parts of the comparator flags (empty when none is on)."""
    parts = []
    if args.bmse != "none":
        parts += ["bmse", args.bmse, str(args.bmse_init_sigma)]
    if args.conr:
        parts += ["conr", str(args.conr_beta)]
    if getattr(args, "rnc", "none") != "none":
        parts += ["rnc", args.rnc]
    if args.reweight == DENSEWEIGHT:
        parts += ["dw", str(args.dw_alpha)]
    if args.oe:
        parts += ["oe", str(args.oe_lambda_d), str(args.oe_lambda_t)]
    return parts


@dataclass
class Comparator:
    """What the training loop needs from the comparator flags (see the module docstring).

    balanced: the Balanced MSE loss module (None: --loss is used); view_loss: the extra term on the
    views (None: off); regression: False when no regression loss is trained (RnC stage 1: the head is
    untrained, so every epoch's checkpoint is kept as the best); prior: the BNI/GAI prior as saved.
    """

    balanced: Optional[BalancedMSELoss] = None
    view_loss: Optional[ViewLoss] = None
    regression: bool = True
    prior: dict = field(default_factory=dict)

    def add_sigma_group(self, optimizer: torch.optim.Optimizer, sigma_lr: float) -> None:
        """sigma in its own group, marked fixed_lr so the epoch schedule leaves its learning rate alone."""
        if self.balanced is not None and self.balanced.noise_sigma.requires_grad:
            optimizer.add_param_group({"params": [self.balanced.noise_sigma], "lr": sigma_lr, "fixed_lr": True})

    def checkpoint_extra(self) -> dict:
        return {CHECKPOINT_KEY: self.balanced.state_dict()} if self.balanced is not None else {}

    def restore(self, checkpoint: dict, path: str) -> None:
        """--resume: sigma and the prior exactly as saved (the prior is not refitted)."""
        if self.balanced is None:
            return
        if CHECKPOINT_KEY not in checkpoint:
            raise UserError(f"--resume {path}: the checkpoint holds no Balanced MSE state; resume it without "
                            "--bmse, or use --pretrained to start Balanced MSE from it")
        self.balanced.load_state_dict(checkpoint[CHECKPOINT_KEY])

    def save_prior(self, run_dir: Path) -> None:
        if self.prior:
            (Path(run_dir) / PRIOR_NAME).write_text(json.dumps(self.prior, indent=1) + "\n")

    def sigma(self) -> Optional[float]:
        return float(self.balanced.noise_sigma.detach()) if self.balanced is not None else None


def build_comparator(args: argparse.Namespace, train_labels: np.ndarray, device: torch.device,
                     bin_width: float = 1.0, two_views: Optional[Callable] = None) -> Comparator:
    """The Comparator of the parsed flags; the BNI/GAI prior is computed here, from the train labels
    (in the units the loss sees; bin_width: BNI's histogram bin). two_views: the ConR views of a batch's
    views entry (default: the two slices of a [B, 2, ...] tensor)."""
    comparator = Comparator()
    if args.bmse != "none":
        kwargs, prior = {}, {"variant": args.bmse}
        if args.bmse == "bni":
            centres, masses = label_histogram(train_labels, bin_width=bin_width, lds=args.bmse_lds, lds_kernel=args.lds_kernel,
                                              lds_ks=args.lds_ks, lds_sigma=args.lds_sigma)
            kwargs = dict(bin_centers=centres, bin_weights=masses)
            prior.update(bin_centers=centres.tolist(), bin_weights=masses.tolist())
        elif args.bmse == "gai":
            gmm = fit_gaussian_mixture(train_labels, n_components=args.bmse_gmm_k)
            kwargs = dict(gmm=gmm)
            prior.update(gmm.to_dict())
        comparator.balanced = BalancedMSELoss(args.bmse, init_sigma=args.bmse_init_sigma,
                                              freeze_sigma=args.bmse_fix_sigma, **kwargs).to(device)
        comparator.prior = prior
    if args.conr:
        comparator.view_loss = conr_view_loss(args.conr_beta, args.conr_omega, args.conr_tau, args.conr_e,
                                              two_views or _split_views)
    if getattr(args, "rnc", "none") == "encoder":
        comparator.view_loss = rnc_view_loss(args.rnc_tau)
        comparator.regression = False
    return comparator


def _split_views(views: torch.Tensor):
    if views.dim() < 2 or views.shape[1] != 2:
        raise ValueError(f"views: expected [B, 2, ...] (two views per sample), got {tuple(views.shape)}")
    return views[:, 0], views[:, 1]


def conr_view_loss(beta: float, omega: float, tau: float, e: float,
                   two_views: Callable = _split_views) -> ViewLoss:
    """beta * ConR over the two views, one forward pass per view (no targets: FDS does not smooth).
    two_views(views) -> (first, second) model inputs (STS-B: the same pair twice, two dropout draws)."""

    def view_loss(model, views, labels, weights):
        features, preds = [], []
        for view in two_views(views):
            pred, encoding = model(view)
            features.append(encoding.float())
            preds.append(pred.float())
        return beta * conr_loss(torch.cat(features), labels.repeat(2, 1), torch.cat(preds).detach(),
                                weights.repeat(2, 1), omega=omega, tau=tau, e=e)

    return view_loss


def rnc_view_loss(tau: float) -> ViewLoss:
    """The RnC loss of the encoder features of both views, passed through the model together."""

    def view_loss(model, views, labels, weights):
        first, second = _split_views(views)
        _, encoding = model(torch.cat([first, second]))
        return rnc_loss(encoding.float(), labels.repeat(2, 1), tau=tau)

    return view_loss

