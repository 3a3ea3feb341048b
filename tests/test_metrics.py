"""Shot groups and test metrics against NumPy / SciPy computed here and the published split sizes."""
import json
import warnings

import numpy as np
import pytest
import torch
from published_labels import agedb_labels, stsb_labels
from scipy import stats

from ranksim.metrics import (
    age_shot_groups,
    format_metrics_table,
    per_label_mae,
    regression_metrics,
    stsb_shot_groups,
)
from ranksim.weighting import stsb_bin_of


def sizes(groups):
    return tuple(int(groups[g].sum()) for g in ("many", "medium", "few"))


def assert_partition(groups, n):
    total = groups["many"].astype(int) + groups["medium"].astype(int) + groups["few"].astype(int)
    np.testing.assert_array_equal(total, np.ones(n, dtype=int))


# ---------------------------------------------------------------- shot groups

def test_agedb_published_test_groups():
    train, test = agedb_labels("train"), agedb_labels("test")
    assert (len(train), len(test)) == (12208, 2140)
    groups = age_shot_groups(train, test)
    assert sizes(groups) == (1530, 448, 162)
    assert_partition(groups, len(test))


def test_age_groups_thresholds_by_hand():
    # train counts: age 10 -> 101, 11 -> 100, 12 -> 20, 13 -> 19, 14 -> 0 (unseen)
    train = np.repeat([10, 11, 12, 13], [101, 100, 20, 19]).astype(float) + 0.25  # int() truncates
    test = np.array([10, 11, 12, 13, 14, 10.9, -5])
    groups = age_shot_groups(torch.tensor(train), test.reshape(-1, 1))
    np.testing.assert_array_equal(groups["many"], [1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(groups["medium"], [0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(groups["few"], [0, 0, 0, 1, 1, 0, 1])
    assert all(groups[g].dtype == bool for g in groups)
    assert sizes(age_shot_groups([], [3, 4])) == (0, 0, 2)  # no train labels: everything few


def test_stsb_published_test_groups():
    test = stsb_labels("test")
    assert len(test) == 1000
    groups = stsb_shot_groups(test)
    assert sizes(groups) == (775, 175, 50)
    assert_partition(groups, len(test))


def test_stsb_groups_by_hand():
    # bins: 0.0->0 many, 0.1->1 few, 0.2->2 medium, 2.7->27 medium, 2.8->28 many, 2.9->29 few,
    # 3.5->35 medium, 3.6->36 many, 4.7->47 few, 4.9->49 many, 5.0->49 many, 0.45->4 medium
    scores = [0.0, 0.1, 0.2, 2.7, 2.8, 2.9, 3.5, 3.6, 4.7, 4.9, 5.0, 0.45]
    groups = stsb_shot_groups(scores)
    expected = ["many", "few", "medium", "medium", "many", "few", "medium", "many", "few", "many", "many",
                "medium"]
    for name in ("many", "medium", "few"):
        np.testing.assert_array_equal(groups[name], [e == name for e in expected])


# ---------------------------------------------------------------- metrics

def synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 60, 5000) // rng.integers(1, 4, 5000)  # skewed towards small ages
    labels = rng.integers(0, 70, n).astype(np.float64)
    preds = labels + rng.normal(0, 5, n)
    return preds, labels, age_shot_groups(train, labels)


def test_regression_metrics_match_numpy_scipy():
    preds, labels, groups = synthetic()
    assert min(sizes(groups)) > 2
    metrics = regression_metrics(preds, labels, groups, correlations=True)
    masks = {"all": np.ones(len(labels), bool), **groups}
    for row, mask in masks.items():
        p, y = preds[mask], labels[mask]
        got = metrics[row]
        assert got["count"] == mask.sum()
        assert got["mse"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, y)) / len(p), rel=1e-12)
        assert got["mae"] == pytest.approx(np.abs(p - y).sum() / len(p), rel=1e-12)
        assert got["gmean"] == pytest.approx(stats.gmean(np.abs(p - y)), rel=1e-10)
        assert got["pearson"] == pytest.approx(np.corrcoef(p, y)[0, 1], rel=1e-10)
        assert got["spearman"] == pytest.approx(stats.spearmanr(p, y)[0], rel=1e-10)
        # spearman = pearson of the ranks
        assert got["spearman"] == pytest.approx(np.corrcoef(stats.rankdata(p), stats.rankdata(y))[0, 1], rel=1e-10)
    json.dumps(metrics)  # plain Python numbers


def test_tensor_inputs_of_shape_n_by_1_give_the_same_numbers():
    preds, labels, groups = synthetic(seed=1)
    ref = regression_metrics(preds, labels, groups, correlations=True)
    got = regression_metrics(torch.tensor(preds).reshape(-1, 1), torch.tensor(labels).reshape(-1, 1), groups,
                             correlations=True)
    assert got == ref
    assert "pearson" not in regression_metrics(preds, labels, groups)["all"]


def test_gm_eps_modes():
    labels = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    preds = np.array([1.0, 2.5, 2.0, 4.0, 7.0])  # two errors are exactly 0
    groups = {"many": np.array([1, 1, 0, 0, 0], bool), "medium": np.array([0, 0, 1, 1, 0], bool),
              "few": np.array([0, 0, 0, 0, 1], bool)}
    err = np.abs(preds - labels)
    eps = 1e-10
    with np.errstate(divide="ignore"):
        plain = regression_metrics(preds, labels, groups)
        assert plain["all"]["gmean"] == 0.0 == stats.gmean(err)  # log(0): GM 0, as SciPy
    every = regression_metrics(preds, labels, groups, gm_eps=eps, gm_eps_mode="all")
    zeros = regression_metrics(preds, labels, groups, gm_eps=eps, gm_eps_mode="zeros")
    overall = regression_metrics(preds, labels, groups, gm_eps=eps, gm_eps_mode="overall")
    for row, mask in {"all": np.ones(5, bool), **groups}.items():
        e = err[mask]
        assert every[row]["gmean"] == pytest.approx(stats.gmean(e + eps), rel=1e-12)
        assert zeros[row]["gmean"] == pytest.approx(stats.gmean(np.where(e == 0, eps, e)), rel=1e-12)
    # 'zeros' leaves non-zero errors untouched; 'all' shifts them by eps
    assert zeros["few"]["gmean"] == 2.0 and every["few"]["gmean"] == 2.0 + eps
    # 'overall' (IMDB-WIKI): eps on the "all" row only; the many group keeps its zero error -> GM 0
    assert overall["all"]["gmean"] == pytest.approx(stats.gmean(err + eps), rel=1e-12)
    assert overall["many"]["gmean"] == 0.0 and overall["medium"]["gmean"] == 0.0
    assert overall["few"]["gmean"] == 2.0


def test_undefined_numbers_are_none_not_invented():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([1.5, 2.5, 2.0, 2.0])
    groups = {"many": np.array([1, 1, 1, 0], bool), "medium": np.zeros(4, bool), "few": np.array([0, 0, 0, 1], bool)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN / constant-input warnings either
        m = regression_metrics(preds, labels, groups, correlations=True)
        constant = regression_metrics(np.full(4, 2.0), labels, groups, correlations=True)
    assert m["medium"] == {"count": 0, "mse": None, "mae": None, "gmean": None, "pearson": None, "spearman": None}
    assert m["few"]["count"] == 1 and m["few"]["mae"] == 2.0 and m["few"]["pearson"] is None
    assert m["many"]["pearson"] == pytest.approx(np.corrcoef(preds[:3], labels[:3])[0, 1])
    assert constant["all"]["pearson"] is None and constant["all"]["spearman"] is None
    assert constant["all"]["mae"] == pytest.approx(1.0)
    table = format_metrics_table(m)
    assert table.splitlines()[4].split() == ["medium", "0", "-", "-", "-", "-", "-"]


def test_regression_metrics_errors():
    preds, labels, groups = synthetic(n=10)
    with pytest.raises(ValueError, match="same length"):
        regression_metrics(preds[:9], labels, groups)
    with pytest.raises(ValueError, match="groups"):
        regression_metrics(preds, labels, {"many": groups["many"]})
    with pytest.raises(ValueError, match=r"groups\['few'\]"):
        regression_metrics(preds, labels, {**groups, "few": groups["few"][:5]})
    with pytest.raises(ValueError, match="gm_eps_mode='zero'"):
        regression_metrics(preds, labels, groups, gm_eps_mode="zero")
    with pytest.raises(ValueError, match="preds"):
        regression_metrics(np.zeros((10, 2)), labels, groups)


def test_per_label_mae_matches_loop():
    preds, labels, _ = synthetic(n=300, seed=2)
    got = per_label_mae(preds, labels, None)
    ref = {}
    for p, y in zip(preds, labels):
        ref.setdefault(int(y), []).append(abs(p - y))
    assert list(got) == [str(k) for k in sorted(ref)]  # ascending numeric order ("2" before "10")
    for k, errs in ref.items():
        assert got[str(k)]["count"] == len(errs)
        assert got[str(k)]["mae"] == pytest.approx(sum(errs) / len(errs), rel=1e-12)
    json.dumps(got)


def test_per_label_mae_with_stsb_bins():
    labels = np.array([0.0, 0.05, 0.3, 5.0, 4.95])
    preds = np.array([0.5, 0.05, 1.3, 4.0, 4.95])
    got = per_label_mae(torch.tensor(preds), labels, stsb_bin_of)
    assert got == {"0": {"count": 2, "mae": 0.25}, "3": {"count": 1, "mae": pytest.approx(1.0)},
                   "49": {"count": 2, "mae": 0.5}}


def test_format_metrics_table():
    preds, labels, groups = synthetic(seed=3)
    metrics = regression_metrics(preds, labels, groups)
    lines = format_metrics_table(metrics).splitlines()
    assert lines[0].split() == ["Shot", "Count", "MSE", "MAE", "GM"]
    assert [line.split()[0] for line in lines[2:]] == ["all", "many", "medium", "few"]
    row = lines[2].split()
    assert row[1] == str(len(labels)) and float(row[3]) == pytest.approx(metrics["all"]["mae"], abs=5e-5)
    with_corr = format_metrics_table(regression_metrics(preds, labels, groups, correlations=True))
    assert with_corr.splitlines()[0].split()[-2:] == ["Pearson", "Spearman"]
