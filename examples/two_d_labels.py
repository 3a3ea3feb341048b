"""RankSim with 2-D labels: regress a point (u, v) in the unit square from a 16-D noisy
observation of it, with train points crowded into one corner; vanilla vs RankSim (L2 label distance).

    python examples/two_d_labels.py                 # 3 seeds, well under a minute on a 2-core CPU
    python examples/two_d_labels.py --seeds 0 --epochs 3   # smoke run

Data (synthetic, numpy seed 0 for every run): labels y = (u, v); train u, v ~ Beta(1, 3) each
(most points near (0, 0)), test points uniform on the square (every region equally, as the DIR
benchmarks' balanced test sets). Observation x = tanh(W [u, v, sin 3u, cos 3v]) + noise (W fixed
random 16 x 4, noise sd 0.05). Shot groups: the 5 x 5 grid of cells (``Binning.uniform(0, 1,
num_bins=5)`` per coordinate); a test point is many-shot when its cell holds more than 100 train
points, few-shot below 20 (the age datasets' thresholds), medium otherwise.
Model: MLP 16 -> 64 -> 64 -> 2 with L1 loss; RankSim(gamma = 1, lambda = 2, label_distance='l2') on
the 64-wide features, so label similarity is minus the Euclidean distance between label points.
Reported error: mean Euclidean distance between predicted and true point. Each seed fixes the
initialisation, batch order and tie draws; the data stay fixed.
"""
import argparse

import numpy as np
import torch
from mlp import predict, print_comparison, train_mlp  # examples/mlp.py (the script's folder is on sys.path)

from ranksim import Binning, RankSim
from ranksim.metrics import GROUPS, shot_groups

GRID = Binning.uniform(0, 1, num_bins=5)
CELLS = Binning.uniform(0, 25, num_bins=25)  # one bin per grid cell id 0..24


def make_data(n_train: int = 1000, n_test: int = 500):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(4, 16))

    def observe(y):
        signals = np.stack([y[:, 0], y[:, 1], np.sin(3 * y[:, 0]), np.cos(3 * y[:, 1])], axis=1)
        return np.tanh(signals @ mixing) + 0.05 * rng.normal(size=(len(y), 16))

    y_train = rng.beta(1, 3, size=(n_train, 2))
    y_test = rng.uniform(size=(n_test, 2))
    return observe(y_train), y_train, observe(y_test), y_test


def cell_of(y: np.ndarray) -> np.ndarray:
    return GRID.bin_of(y[:, 0]) * GRID.num_bins + GRID.bin_of(y[:, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    # The flag names of the benchmark programs' train.py (RankSim's gamma and lambda).
    parser.add_argument("--regularization_weight", type=float, default=1.0, help="RankSim weight gamma")
    parser.add_argument("--interpolation_lambda", type=float, default=2.0, help="RankSim interpolation strength lambda")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and leaves the other core free

    x_train, y_train, x_test, y_test = make_data()
    groups = shot_groups(cell_of(y_train), cell_of(y_test), CELLS)
    regularizers = {"vanilla": None,
                    "ranksim": RankSim(args.regularization_weight, args.interpolation_lambda, label_distance="l2")}
    errors = {method: {g: [] for g in ("all",) + GROUPS} for method in regularizers}
    for seed in args.seeds:
        for method, regularizer in regularizers.items():
            model = train_mlp(x_train, y_train, regularizer, seed, args.epochs, batch_size=128)
            distance = np.linalg.norm(predict(model, x_test) - y_test, axis=1)
            errors[method]["all"].append(float(distance.mean()))
            for group in GROUPS:
                errors[method][group].append(float(distance[groups[group]].mean()) if groups[group].any() else None)
    counts = {"all": len(y_test), **{g: int(groups[g].sum()) for g in GROUPS}}
    print(f"train {len(y_train)} points (Beta(1, 3) per coordinate), test {len(y_test)} (uniform)")
    print_comparison(errors, counts, unit="Euclidean distance in label units")


if __name__ == "__main__":
    main()
