"""What the two examples share: a small MLP regressor trained with or without RankSim, and a
per-seed summary. Not an example itself (run tabular_diabetes.py or two_d_labels.py)."""
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranksim import RankSim


class MLP(nn.Module):
    """in_dim -> hidden -> hidden (the features RankSim regularizes) -> out_dim."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x):
        features = self.backbone(x)
        return self.head(features), features


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


def print_comparison(maes: Dict[str, Dict[str, List[Optional[float]]]], counts: Dict[str, int], unit: str) -> None:
    """Table of MAE mean +- sample sd over seeds per group and method, and per group in how many
    seeds RankSim beat vanilla. maes[method][group] = one MAE per seed (None: empty group)."""
    seeds = len(maes["vanilla"]["all"])
    print(f"\nMAE ({unit}), mean +- sd over {seeds} seed(s); test samples per group in brackets")
    print(f"{'group':<16}{'vanilla':>18}{'RankSim':>18}   RankSim lower in")
    for group, count in counts.items():
        cells = []
        for method in ("vanilla", "ranksim"):
            values = [v for v in maes[method][group] if v is not None]
            sd = f" +- {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.2f}{sd}" if values else "-")
        wins = sum(r < v for v, r in zip(maes["vanilla"][group], maes["ranksim"][group]) if v is not None)
        print(f"{group + f' [{count}]':<16}{cells[0]:>18}{cells[1]:>18}   {wins}/{seeds} seeds")
    print(f"A difference smaller than the sd, or not in (nearly) all {seeds} seeds, is not evidence either way.")
