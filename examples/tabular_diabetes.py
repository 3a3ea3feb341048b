"""RankSim on a real tabular regression: scikit-learn's diabetes data (442 patients, 10 features,
target: disease progression one year later, 25-346), made imbalanced, vanilla vs RankSim.

    python examples/tabular_diabetes.py             # vanilla vs RankSim, 3 seeds, ~10 s of CPU time
    python examples/tabular_diabetes.py --sweep     # the gamma sweep below (5 gammas + vanilla, 3 seeds)
    python examples/tabular_diabetes.py --seeds 0 --epochs 5   # smoke run

Data (``sklearn.datasets.load_diabetes``, shipped with scikit-learn, no download):
  * split: a fixed permutation (numpy seed 0) puts 75 % of the patients in train, 25 % in test;
  * imbalance: each TRAIN patient is kept with probability exp(-(y - 25) / 80) (numpy seed 1, the
    same for every run): all low targets stay, about 1 in 5 at y = 150 and 1 in 30 at y = 300.
    The test split is left as it is, so high targets are rare in train but present in test;
  * inputs standardised with the train split's mean and sd (the raw columns have sd ~0.05, which
    makes the features start nearly collinear: RankSim then collapses them, see examples/README.md);
  * shot groups: bins of width 25 on [25, 350] (``Binning.uniform``); a test patient is many-shot
    when its bin holds more than 15 train patients, few-shot below 5, medium otherwise
    (``shot_groups``; the thresholds are scaled down from the age datasets' 100 / 20 to this size).
Model: MLP 10 -> 64 -> 64 -> 1, L1 loss on the targets in their units, Adam 1e-3, batch 64;
RankSim (gamma = DEFAULT_GAMMA, lambda = 2) on the 64-wide features. Every seed (``--seeds``) fixes
the initialisation, batch order and tie draws; the split and the subsampling stay fixed.
Printed: MAE per shot group, RankSim's paired difference to vanilla with a 95 % interval, and the
health diagnostics of ranksim.diagnostics for both (docs/library.md). The default gamma comes from
``--sweep``; its measured table is in examples/README.md.
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
from sklearn.datasets import load_diabetes

from ranksim import Binning, RankSim
from ranksim.metrics import GROUPS, regression_metrics, shot_groups

BINNING = Binning.uniform(25, 350, bin_width=25)
MANY_SHOT, FEW_SHOT = 15, 5
DEFAULT_GAMMA = 0.1  # chosen by --sweep (examples/README.md)
UNIT = "MAE, progression score"


def imbalanced_split():
    """(x_train, y_train, x_test, y_test): the fixed split and subsampling of the module docstring
    (inputs as loaded, not yet standardised)."""
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    n_train = int(0.75 * len(y))
    train, test = order[:n_train], order[n_train:]
    keep = np.random.default_rng(1).random(len(train)) < np.exp(-(y[train] - 25) / 80)
    train = train[keep]
    return x[train], y[train], x[test], y[test]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    # The flag names of the benchmark programs' train.py (RankSim's gamma and lambda).
    parser.add_argument("--regularization_weight", type=float, default=DEFAULT_GAMMA, help="RankSim weight gamma")
    parser.add_argument("--interpolation_lambda", type=float, default=2.0, help="RankSim interpolation strength lambda")
    parser.add_argument("--sweep", action="store_true", help="train vanilla and every --gammas value instead")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(SWEEP_GAMMAS), help="the sweep's gammas")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and leaves the other core free

    x_train, y_train, x_test, y_test = imbalanced_split()
    x_train, x_test = standardise(x_train, x_test)
    groups = shot_groups(y_train, y_test, BINNING, many_threshold=MANY_SHOT, few_threshold=FEW_SHOT)
    print(f"train {len(y_train)} patients after subsampling (targets >= 150: {int((y_train >= 150).sum())}), "
          f"test {len(y_test)}; predicting the train mean: MAE {np.abs(y_test - y_train.mean()).mean():.2f}")

    def trial(gamma, seed):
        regularizer = RankSim(gamma, args.interpolation_lambda) if gamma > 0 else None
        model = train_mlp(x_train, y_train, regularizer, seed, args.epochs)
        metrics = regression_metrics(predict(model, x_test)[:, 0], y_test, groups)
        errors = {group: metrics[group]["mae"] for group in ("all",) + GROUPS}
        initial = train_mlp(x_train, y_train, None, seed, epochs=0)  # the same seed's untrained model
        return errors, health(model, x_train, y_train, x_test, y_test, gamma, args.interpolation_lambda,
                              initial=initial)

    if args.sweep:
        print_sweep(run_trials(trial, [0.0] + args.gammas, args.seeds), UNIT)
        return
    runs = run_trials(trial, [0.0, args.regularization_weight], args.seeds)
    counts = {"all": len(y_test), **{g: int(groups[g].sum()) for g in GROUPS}}
    print_comparison(runs, args.regularization_weight, counts, UNIT)


if __name__ == "__main__":
    main()
