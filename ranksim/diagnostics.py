"""Is RankSim working? Three numbers about the features RankSim regularizes, and warnings when they
show the known failures (docs/library.md, "Is RankSim working?").

B is the batch size, D the feature width, d the label dimension. Every function takes torch
tensors (any device, any float dtype; computed in float64 on the features' device, so a GPU run
copies nothing to the host but the result) or, for the first two, NumPy arrays.

* :func:`mean_cosine` (features [B, D]): the mean cosine similarity over all pairs i != j. Near 1
  the features have collapsed onto one direction: the differences left between them are tiny,
  their ranking (what RankSim compares with the labels') is noise, and RankSim's value stops falling.
* :func:`rank_agreement` (features [B, D], targets [B] / [B, d]): the mean over rows i of the
  Spearman correlation, over j != i, between label closeness (-|y_i - y_j|, or minus the L1 / L2
  distance between label vectors) and feature cosine similarity cos(f_i, f_j): what RankSim
  optimises, in [-1, 1], 1 when the two rankings agree in every row.
* :func:`gradient_ratio` (features that require grad, the task loss and the weighted RankSim term,
  both computed from them): ||d(gamma * RankSim)/d features|| / ||d task_loss / d features||, how
  hard RankSim pulls on the features relative to the task loss.
* :func:`health_warnings` and :func:`health_report`: the three numbers of one batch and one line
  per threshold crossed, each naming the fix.

The thresholds and the measurements behind them:
  * COLLAPSED_COSINE = 0.99. ResNet-50 on an H200 GPU, 8,192 synthetic age images (batch 64, lr
    2.5e-4, lambda 2, bf16, 4 epochs; one seed per gamma, a quick measurement), val features: vanilla 0.776, RankSim at gamma 1 and gamma 100
    0.9992 and 0.9991, their rank agreement 0.705 and 0.734 against vanilla's 0.947. The two
    collapsed runs lie far above the threshold, the healthy one far below.
  * DOMINATING_RATIO = 5. The MLP examples' gamma sweeps (examples/README.md, 3 seeds each): on
    the diabetes data the ratio after training was 0.63 at gamma 0.1 (MAE within noise of
    vanilla), 6.4 at gamma 0.3 (worse in some seeds) and 6.6 at gamma 1 (worse than predicting the
    train mean in every seed); at initialisation 2.4, 5.9 and 18. On the 2-D example 1.3 at gamma
    0.1 (no collapse) and 6.2 at gamma 1 (features collapsing). With unstandardised inputs
    RankSim at gamma 1 started at 6-50 times the L1 gradient and collapsed the features in every seed.
  * VANISHING_RATIO = 1e-3 (only while gamma > 0). An fp16 step that lets the loss scaler's factor
    (65536) reach only one of the two terms shrinks RankSim's gradient by 1/65536 ~ 1.5e-5
    relative to the task's: any ratio up to ~60 then reads below 1e-3.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

COLLAPSED_COSINE = 0.99
DOMINATING_RATIO = 5.0
VANISHING_RATIO = 1e-3
LABEL_DISTANCES = ("l1", "l2")

Array = Union[torch.Tensor, np.ndarray, Sequence[float]]


def _as_matrix(values: Array, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """values [B, ...] -> float64 [B, rest] on ``device`` (default: the tensor's own, the CPU for
    arrays); ValueError for an empty or non-finite input."""
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(np.asarray(values, dtype=np.float64))
    matrix = values.detach().to(device or values.device)
    if matrix.device.type == "mps":  # no float64 there
        matrix = matrix.cpu()
    matrix = matrix.to(torch.float64)
    if matrix.dim() == 0 or matrix.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch [B, ...], got shape {tuple(matrix.shape)}")
    matrix = matrix.reshape(matrix.shape[0], -1)
    finite = torch.isfinite(matrix)
    if matrix.shape[1] == 0 or not bool(finite.all()):
        raise ValueError(f"{name}: expected finite numbers of shape [B, ...], got shape {tuple(matrix.shape)} "
                         f"with {int((~finite).sum())} non-finite value(s)")
    return matrix


def _cosine_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B] cosine similarities (a zero feature vector has cosine 0 with everything)."""
    unit = torch.nn.functional.normalize(features, dim=1)
    return unit @ unit.T


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """[B, B] -> [B, B - 1]: row i without its entry j = i."""
    batch = matrix.shape[0]
    keep = ~torch.eye(batch, dtype=torch.bool, device=matrix.device)
    return matrix[keep].reshape(batch, batch - 1)


def mean_cosine(features: Array) -> float:
    """Mean cosine similarity of features [B, ...] (flattened to [B, D]) over all pairs i != j.

    Returns a float in [-1, 1]; 1 means every feature vector points the same way (collapse).
    ValueError for B < 2 (no pair) or non-finite features.
    """
    matrix = _as_matrix(features, "features")
    batch = matrix.shape[0]
    if batch < 2:
        raise ValueError(f"features: mean pairwise cosine needs at least 2 samples, got {batch}")
    return float(_off_diagonal(_cosine_matrix(matrix)).mean())  # the one host sync


def label_closeness(targets: Array, label_distance: str = "l1",
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """-dist(y_i, y_j) for targets [B] / [B, 1] / [B, d]: float64 [B, B] (RankSim's label similarity)."""
    if label_distance not in LABEL_DISTANCES:
        raise ValueError(f"label_distance={label_distance!r} is not one of {', '.join(LABEL_DISTANCES)}")
    labels = _as_matrix(targets, "targets", device)
    difference = labels[:, None, :] - labels[None, :, :]
    if label_distance == "l1":
        return -difference.abs().sum(dim=2)
    return -difference.square().sum(dim=2).sqrt()


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks of [n, m] values, 1..m, ties sharing their average rank (scipy's rankdata)."""
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values.contiguous(), right=False)  # entries smaller than each value
    up_to = torch.searchsorted(ordered, values.contiguous(), right=True)  # entries smaller or equal
    return (below + up_to + 1).to(torch.float64) / 2


def _row_spearman(first: torch.Tensor, second: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row Spearman of two [B, m] tensors (average ranks for ties) -> (rho [B], first constant
    [B] bool, second constant [B] bool); rho is 0 where a row is constant."""
    centred = [r - r.mean(dim=1, keepdim=True) for r in (_average_ranks(first), _average_ranks(second))]
    spreads = [c.square().sum(dim=1).sqrt() for c in centred]
    constant = [spread == 0 for spread in spreads]
    denominator = torch.where(constant[0] | constant[1], torch.ones_like(spreads[0]), spreads[0] * spreads[1])
    return (centred[0] * centred[1]).sum(dim=1) / denominator, constant[0], constant[1]


def rank_agreement(features: Array, targets: Array, label_distance: str = "l1") -> float:
    """Mean over rows i of Spearman_j!=i(label closeness -dist(y_i, y_j), cos(f_i, f_j)).

    features: [B, ...] (flattened to [B, D]); targets: [B], [B, 1] or [B, d] (any units: only ranks
    count); label_distance: 'l1' (default) or 'l2' between label vectors (the same for d = 1).
    Ties get average ranks. A row whose label closeness is constant (the other labels all equally
    far from y_i) has no ranking to agree with: it is left out of the mean. A row whose feature
    similarities are all equal (total collapse) carries no ranking: it counts as 0.
    Returns a float in [-1, 1]. ValueError when no row has a ranking (B < 3, or a single distinct
    label), for mismatched batch sizes and for non-finite inputs.
    """
    matrix = _as_matrix(features, "features")
    closeness = label_closeness(targets, label_distance, matrix.device)
    if closeness.shape[0] != matrix.shape[0]:
        raise ValueError(f"features and targets: batch sizes differ ({matrix.shape[0]} and "
                         f"{closeness.shape[0]}); pass one target per sample")
    batch = matrix.shape[0]
    if batch < 3:
        raise ValueError(f"rank agreement is undefined for a batch of {batch} sample(s): each row needs at "
                         "least 2 other samples to rank; pass 3 or more")
    rho, labels_constant, _ = _row_spearman(_off_diagonal(closeness), _off_diagonal(_cosine_matrix(matrix)))
    if bool(labels_constant.all()):
        distinct = len(torch.unique(closeness[0]))
        raise ValueError("rank agreement is undefined for this batch: in every row the other labels are all "
                         f"equally far away ({'a single distinct label' if distinct == 1 else 'no label ranking'}); "
                         "pass a batch with at least 3 samples and 2 distinct labels")
    return float(rho[~labels_constant].mean())  # the one host sync (boolean indexing: fine once per call)


def gradient_ratio(features: torch.Tensor, task_loss: torch.Tensor, ranksim_loss: torch.Tensor) -> float:
    """||d ranksim_loss / d features|| / ||d task_loss / d features|| (Frobenius norms).

    features: the tensor [B, ...] both losses were computed from (it must require grad: a leaf made
    with ``features.detach().requires_grad_()``, or the model's features inside a training step);
    task_loss, ranksim_loss: scalar tensors, the latter already weighted by gamma (``RankSim(gamma,
    ...)(features, targets)``). The graph is kept (retain_graph), so the step can still call
    backward afterwards; no parameter's .grad changes. Returns a float >= 0; math.inf when the task
    loss has zero gradient at the features and RankSim does not, 0.0 when both are zero.
    ValueError when features do not require grad or a loss does not depend on them.
    """
    if not isinstance(features, torch.Tensor) or not features.requires_grad:
        raise ValueError("features: must require grad and be the tensor both losses were computed from "
                         "(e.g. features = features.detach().requires_grad_() before the head and RankSim)")
    norms = []
    for name, loss in (("task_loss", task_loss), ("ranksim_loss", ranksim_loss)):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"{name}: expected a scalar tensor computed from the features")
        (grad,) = torch.autograd.grad(loss.reshape(()), features, retain_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(f"{name}: does not depend on the features passed; compute it from them")
        norms.append(float(grad.detach().float().norm()))
    task, ranksim = norms
    if task == 0:
        return math.inf if ranksim > 0 else 0.0
    return ranksim / task


def health_warnings(mean_cos: float, grad_ratio: Optional[float], gamma: float,
                    collapsed_cosine: float = COLLAPSED_COSINE, dominating_ratio: float = DOMINATING_RATIO,
                    vanishing_ratio: float = VANISHING_RATIO, where: str = "") -> List[str]:
    """One line per threshold crossed (none when healthy), each naming the fix.

    mean_cos: :func:`mean_cosine` of the features; grad_ratio: :func:`gradient_ratio` at weight
    ``gamma`` (None: not measured); gamma: RankSim's weight in this run (0: no RankSim, then only
    the collapse check applies); where: a prefix naming what was measured (e.g. 'val features: ').
    """
    lines = []
    if mean_cos > collapsed_cosine:
        fix = ("lower gamma (RankSim's weight, --regularization_weight); a smaller learning rate only "
               "delays the collapse" if gamma > 0 else "gamma is 0 in this run, so the task itself collapses "
               "them (a ranking regularizer would see noise)")
        lines.append(f"{where}features collapsed: mean pairwise cosine {mean_cos:.4f} > {collapsed_cosine:g}; "
                     f"their ranking is noise: {fix}")
    if gamma > 0 and grad_ratio is not None:
        if grad_ratio > dominating_ratio:
            lines.append(f"{where}RankSim's gradient at the features is {grad_ratio:.3g}x the task loss's "
                         f"(> {dominating_ratio:g}): it dominates the task and tends to collapse the features; "
                         f"lower gamma (now {gamma:g}) until the ratio is near 1")
        elif grad_ratio < vanishing_ratio:
            lines.append(f"{where}RankSim's gradient at the features is {grad_ratio:.3g}x the task loss's "
                         f"(< {vanishing_ratio:g}) at gamma {gamma:g}: RankSim has no effect; check fp16 loss "
                         "scaling (both terms must be scaled) or raise gamma")
    return lines


def health_report(features: torch.Tensor, targets: torch.Tensor, task_loss: Optional[torch.Tensor] = None,
                  ranksim_loss: Optional[torch.Tensor] = None, gamma: float = 0.0,
                  label_distance: str = "l1") -> Dict[str, object]:
    """The three numbers of one batch and the warnings they raise.

    features [B, ...], targets [B] / [B, d]; task_loss and ranksim_loss (optional, both or neither):
    scalar losses computed from ``features`` (which must then require grad), ranksim_loss weighted
    by ``gamma``. Returns {"mean_cosine": float, "rank_agreement": float, "grad_ratio": float or
    None, "warnings": [str]}. ValueError as the functions it calls.
    """
    if (task_loss is None) != (ranksim_loss is None):
        raise ValueError("task_loss and ranksim_loss: pass both (to measure the gradient ratio) or neither")
    ratio = gradient_ratio(features, task_loss, ranksim_loss) if task_loss is not None else None
    report = {"mean_cosine": mean_cosine(features),
              "rank_agreement": rank_agreement(features, targets, label_distance), "grad_ratio": ratio}
    report["warnings"] = health_warnings(report["mean_cosine"], ratio, gamma)
    return report
