"""What the two examples share: a small MLP regressor trained with or without RankSim, input
standardisation, RankSim's health diagnostics (ranksim.diagnostics), the gamma sweep and the
per-seed summaries. Not an example itself (run tabular_diabetes.py or two_d_labels.py)."""
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranksim import RankSim
from ranksim.diagnostics import (
    COLLAPSED_COSINE,
    DOMINATING_RATIO,
    gradient_ratio,
    mean_cosine,
    rank_agreement,
)
from ranksim.stats import paired_difference

# The sweep's gamma values: 5 values over 4 decades, with vanilla (gamma 0) as the reference.
SWEEP_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
HEALTH_BATCH = 64  # train samples (the first ones) on which the gradient ratio is measured


class MLP(nn.Module):
    """in_dim -> hidden -> hidden (the features RankSim regularizes) -> out_dim."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x):
        features = self.backbone(x)
        return self.head(features), features


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both inputs [N, in_dim] scaled by the train split's per-column mean and sd. Why: inputs of a
    tiny spread (the diabetes columns have sd ~0.05) give features that start nearly collinear,
    which RankSim's ranking of their cosines cannot use."""
    mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x_train - mean) / sd, (x_test - mean) / sd


def train_mlp(x: np.ndarray, y: np.ndarray, ranksim: Optional[RankSim], seed: int, epochs: int,
              batch_size: int = 64, lr: float = 1e-3) -> MLP:
    """L1 regression in label units, as the paper trains on ages in years (+ RankSim on the
    backbone's features). The head's bias starts at the train mean, so no step is spent moving it
    there. x: [N, in_dim], y: [N] or [N, d]; seed fixes the initialisation, the batch order and
    RankSim's tie draws."""
    torch.manual_seed(seed)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.float32).reshape(len(y), -1)
    model = MLP(x_t.shape[1], y_t.shape[1])
    with torch.no_grad():
        model.head.bias.copy_(y_t.mean(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_t)).split(batch_size):
            prediction, features = model(x_t[batch])
            loss = F.l1_loss(prediction, y_t[batch])
            if ranksim is not None:
                loss = loss + ranksim(features, y_t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def predict(model: MLP, x: np.ndarray) -> np.ndarray:
    """Predictions in label units: [N, d]."""
    prediction, _ = model(torch.as_tensor(x, dtype=torch.float32))
    return prediction.numpy()


def health(model: MLP, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
           gamma: float, interp_lambda: float, label_distance: str = "l1",
           initial: Optional[MLP] = None) -> Dict[str, Optional[float]]:
    """ranksim.diagnostics of a trained model: mean cosine and rank agreement of the test features,
    and the gradient ratio gamma * RankSim : L1 at the features of the first HEALTH_BATCH train
    samples (None for vanilla, gamma 0); with ``initial`` (the same seed's untrained model) also
    that ratio at initialisation, "grad_ratio_init" (what to look at when choosing gamma)."""
    if initial is not None:
        report = health(model, x_train, y_train, x_test, y_test, gamma, interp_lambda, label_distance)
        report["grad_ratio_init"] = _ratio(initial, x_train, y_train, gamma, interp_lambda, label_distance)
        return report
    with torch.no_grad():
        _, test_features = model(torch.as_tensor(x_test, dtype=torch.float32))
    return {"mean_cosine": mean_cosine(test_features), "rank_agreement": rank_agreement(test_features, y_test,
                                                                                       label_distance),
            "grad_ratio": _ratio(model, x_train, y_train, gamma, interp_lambda, label_distance)}


def _ratio(model: MLP, x_train: np.ndarray, y_train: np.ndarray, gamma: float, interp_lambda: float,
           label_distance: str) -> Optional[float]:
    """gradient_ratio of gamma * RankSim to L1 at the features of the first HEALTH_BATCH train samples."""
    if gamma > 0:
        x_batch = torch.as_tensor(x_train[:HEALTH_BATCH], dtype=torch.float32)
        y_batch = torch.as_tensor(y_train[:HEALTH_BATCH], dtype=torch.float32).reshape(len(x_batch), -1)
        features = model.backbone(x_batch).detach().requires_grad_()
        task = F.l1_loss(model.head(features), y_batch)
        regularizer = RankSim(gamma, interp_lambda, label_distance)(features, y_batch, torch.Generator().manual_seed(0))
        return gradient_ratio(features, task, regularizer)
    return None


# One training and evaluation: (gamma, seed) -> ({"all"|"many"|"medium"|"few": error or None}, health dict)
Trial = Callable[[float, int], Tuple[Dict[str, Optional[float]], Dict[str, Optional[float]]]]


def _cell(values: Sequence[Optional[float]], digits: int = 2, fmt: str = "f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}{fmt}}"
    return f"{np.mean(values):.{digits}{fmt}} +- {np.std(values, ddof=1):.{digits}{fmt}}"


def run_trials(trial: Trial, gammas: Sequence[float], seeds: Sequence[int]) -> Dict[float, dict]:
    """{gamma: {"errors": {group: [one per seed]}, "health": {name: [one per seed]}}}, gamma 0 = vanilla."""
    runs = {}
    for gamma in gammas:
        errors, diagnostics = {}, {}
        for seed in seeds:
            error, report = trial(gamma, seed)
            for key, value in error.items():
                errors.setdefault(key, []).append(value)
            for key, value in report.items():
                diagnostics.setdefault(key, []).append(value)
        runs[gamma] = {"errors": errors, "health": diagnostics}
    return runs


def print_sweep(runs: Dict[float, dict], unit: str, digits: int = 2) -> None:
    """The sweep table: per gamma the overall and few-shot error (mean +- sd over seeds), the paired
    overall difference to vanilla with its 95 % interval, and the health diagnostics."""
    seeds = len(runs[0.0]["errors"]["all"])
    print(f"\ngamma sweep: error ({unit}), mean +- sd over {seeds} seed(s); RankSim - vanilla paired over the "
          "same seeds, 95 % Student-t interval; test-feature mean cosine and rank agreement; grad ratio = "
          "gamma * RankSim : L1 at the features of a train batch, at initialisation and after training")
    print(f"{'gamma':>7} {'all':>14} {'few':>14} {'RankSim - vanilla (all)':>34} {'mean cos':>16} "
          f"{'rank agr':>14} {'ratio at init':>16} {'ratio at end':>16}")
    for gamma, run in runs.items():
        if gamma == 0:
            paired = "(reference)"
        else:
            difference = paired_difference(run["errors"]["all"], runs[0.0]["errors"]["all"])
            paired = difference.format(digits) if difference.n > 1 else f"{difference.mean:+.{digits}f} (n=1)"
        print(f"{'vanilla' if gamma == 0 else f'{gamma:g}':>7} {_cell(run['errors']['all'], digits):>14} "
              f"{_cell(run['errors']['few'], digits):>14} {paired:>34} {_cell(run['health']['mean_cosine'], 4):>16} "
              f"{_cell(run['health']['rank_agreement']):>14} {_cell(run['health']['grad_ratio_init'], 2, 'g'):>16} "
              f"{_cell(run['health']['grad_ratio'], 2, 'g'):>16}")
    print(f"Collapse: mean cos > {COLLAPSED_COSINE}; RankSim dominating: grad ratio > {DOMINATING_RATIO:g}. "
          "An interval that includes 0 is no evidence either way.")


def print_comparison(runs: Dict[float, dict], gamma: float, counts: Dict[str, int], unit: str,
                     digits: int = 2) -> None:
    """Vanilla vs RankSim at ``gamma``: per shot group the error (mean +- sd over seeds), the paired
    difference with its 95 % interval and what it supports; then both methods' health diagnostics."""
    vanilla, ranksim = runs[0.0], runs[gamma]
    seeds = len(vanilla["errors"]["all"])
    print(f"\nError ({unit}), mean +- sd over {seeds} seed(s); test samples per group in brackets; "
          f"RankSim gamma = {gamma:g}")
    print(f"{'group':<14}{'vanilla':>16}{'RankSim':>16}   RankSim - vanilla (paired, 95 % interval)")
    for group, count in counts.items():
        pairs = [(r, v) for r, v in zip(ranksim["errors"][group], vanilla["errors"][group]) if v is not None]
        verdict = "-"
        if len(pairs) > 1:
            difference = paired_difference(*zip(*pairs))
            verdict = difference.format(digits) + (": " + ("lower" if difference.mean < 0 else "higher")
                                              if difference.excludes_zero else ": within noise")
        elif pairs:
            verdict = f"{pairs[0][0] - pairs[0][1]:+.{digits}f} (one seed: no conclusion)"
        print(f"{group + f' [{count}]':<14}{_cell(vanilla['errors'][group], digits):>16}"
              f"{_cell(ranksim['errors'][group], digits):>16}   {verdict}")
    print("\nHealth (ranksim.diagnostics): test-feature mean cosine and rank agreement, gradient ratio on a train batch")
    for name, run in (("vanilla", vanilla), (f"RankSim {gamma:g}", ranksim)):
        print(f"  {name:<14} mean cosine {_cell(run['health']['mean_cosine'], 4)}, rank agreement "
              f"{_cell(run['health']['rank_agreement'])}, grad ratio at init "
              f"{_cell(run['health']['grad_ratio_init'], 2, 'g')}, at end {_cell(run['health']['grad_ratio'], 2, 'g')}")
    mean_cos = [v for v in ranksim["health"]["mean_cosine"] if v is not None]
    if mean_cos and max(mean_cos) > COLLAPSED_COSINE:
        print(f"  warning: RankSim's features collapsed (mean cosine > {COLLAPSED_COSINE}) in some seed: lower gamma")
    print(f"A difference whose interval includes 0 is not evidence either way (n = {seeds} seeds).")
