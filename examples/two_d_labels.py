"""RankSim with 2-D labels: regress a point (u, v) in the unit square from a 16-D noisy
observation of it, with train points crowded into one corner; vanilla vs RankSim (L2 label distance).

    python examples/two_d_labels.py                 # vanilla vs RankSim, 3 seeds, ~12 s of CPU time
    python examples/two_d_labels.py --sweep         # the gamma sweep (5 gammas + vanilla, 3 seeds)
    python examples/two_d_labels.py --seeds 0 --epochs 3   # smoke run

Data (synthetic, numpy seed 0 for every run): labels y = (u, v); train u, v ~ Beta(1, 3) each
(most points near (0, 0)), test points uniform on the square (every region equally, as the DIR
benchmarks' balanced test sets). Observation x = tanh(W [u, v, sin 3u, cos 3v]) + noise (W fixed
random 16 x 4, noise sd 0.05). Shot groups: the 5 x 5 grid of cells (``Binning.uniform(0, 1,
num_bins=5)`` per coordinate); a test point is many-shot when its cell holds more than 100 train
points, few-shot below 20 (the age datasets' thresholds), medium otherwise. Inputs standardised
with the train split's mean and sd.
Model: MLP 16 -> 64 -> 64 -> 2 with L1 loss; RankSim(gamma = DEFAULT_GAMMA, lambda = 2,
label_distance='l2') on the 64-wide features, so label similarity is minus the Euclidean distance
between label points. Reported error: mean Euclidean distance between predicted and true point.
Each seed fixes the initialisation, batch order and tie draws; the data stay fixed. Printed: the
error per shot group, RankSim's paired difference to vanilla with a 95 % interval, and the health
diagnostics of ranksim.diagnostics for both. The default gamma comes from ``--sweep``; its measured
table is in examples/README.md.
"""
import argparse

import numpy as np
import torch
from mlp import (  # examples/mlp.py (the script's folder is on sys.path)
    SWEEP_GAMMAS,
    health,
    predict,
    print_comparison,
    print_sweep,
    run_trials,
    standardise,
    train_mlp,
)

from ranksim import Binning, RankSim
from ranksim.metrics import GROUPS, shot_groups

GRID = Binning.uniform(0, 1, num_bins=5)
CELLS = Binning.uniform(0, 25, num_bins=25)  # one bin per grid cell id 0..24
DEFAULT_GAMMA = 0.1  # chosen by --sweep (examples/README.md)
UNIT = "Euclidean distance in label units"


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
    parser.add_argument("--regularization_weight", type=float, default=DEFAULT_GAMMA, help="RankSim weight gamma")
    parser.add_argument("--interpolation_lambda", type=float, default=2.0, help="RankSim interpolation strength lambda")
    parser.add_argument("--sweep", action="store_true", help="train vanilla and every --gammas value instead")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(SWEEP_GAMMAS), help="the sweep's gammas")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and leaves the other core free

    x_train, y_train, x_test, y_test = make_data()
    x_train, x_test = standardise(x_train, x_test)
    groups = shot_groups(cell_of(y_train), cell_of(y_test), CELLS)
    baseline = np.linalg.norm(y_test - y_train.mean(axis=0), axis=1).mean()
    print(f"train {len(y_train)} points (Beta(1, 3) per coordinate), test {len(y_test)} (uniform); "
          f"predicting the train mean point: error {baseline:.3f}")

    def trial(gamma, seed):
        regularizer = RankSim(gamma, args.interpolation_lambda, label_distance="l2") if gamma > 0 else None
        model = train_mlp(x_train, y_train, regularizer, seed, args.epochs, batch_size=128)
        distance = np.linalg.norm(predict(model, x_test) - y_test, axis=1)
        errors = {"all": float(distance.mean()),
                  **{g: float(distance[groups[g]].mean()) if groups[g].any() else None for g in GROUPS}}
        initial = train_mlp(x_train, y_train, None, seed, epochs=0)  # the same seed's untrained model
        return errors, health(model, x_train, y_train, x_test, y_test, gamma, args.interpolation_lambda, "l2",
                              initial=initial)

    if args.sweep:
        print_sweep(run_trials(trial, [0.0] + args.gammas, args.seeds), UNIT, digits=3)
        return
    runs = run_trials(trial, [0.0, args.regularization_weight], args.seeds)
    counts = {"all": len(y_test), **{g: int(groups[g].sum()) for g in GROUPS}}
    print_comparison(runs, args.regularization_weight, counts, UNIT, digits=3)


if __name__ == "__main__":
    main()
