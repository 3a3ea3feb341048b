"""demo/claim.py, the claim test on synthetic protocol shapes: its data shapes, the gap MAE and health cells
against hand-computed values, and its plumbing end to end at a tiny scale (one shape, 2 seeds, 2 epochs, 16 px)
with the real agedb-dir/train.py run in this process."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from folder_modules import age_program

from ranksim.harness.cli import UserError

REPO = Path(__file__).resolve().parents[1]


def load_claim():
    spec = importlib.util.spec_from_file_location("demo_claim", REPO / "demo" / "claim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


claim = load_claim()


def test_shapes_blind_spot_absent_and_interpolation_gap_thinned():
    params = claim.DEFAULTS
    blind = claim.split_ages("blindspot", params)
    assert not set(range(47, 54)) & set(blind["train"].tolist()) and not set(range(47, 54)) & set(blind["val"].tolist())
    assert sorted(set(blind["test"].tolist())) == list(range(20, 74))  # the test covers the gap
    assert np.all(np.bincount(blind["train"])[[a for a in range(20, 74) if not 47 <= a <= 53]] == 20)
    interp = np.bincount(claim.split_ages("interpolation", params)["train"], minlength=76)
    assert np.all(interp[44:57] == 2) and interp[20:76].min() == 2 and interp[[20, 75]].tolist() == [31, 31]
    expected_25 = round(40 * (1 + math.exp(-0.01 * 55 ** 2)) / (1 + math.exp(-0.01 * 55 ** 2)))  # a mode: the peak
    assert interp[25] == expected_25 == 40
    with pytest.raises(ValueError, match="protocol='middle'"):
        claim.train_counts("middle", params)


def test_gap_mae_and_health_cells():
    results = {"per_label": {"46": {"count": 2, "mae": 1.0}, "47": {"count": 3, "mae": 4.0}, "48": {"count": 1, "mae": 10.0}}}
    assert claim.gap_mae(results, (47, 48, 49)) == pytest.approx((3 * 4.0 + 10.0) / 4)
    with pytest.raises(ValueError, match="no test image of ages 60..61"):
        claim.gap_mae(results, (60, 61))
    with_health = [{"health": {"val": {"mean_cosine": v, "rank_agreement": 0.5}}} for v in (0.1, 0.3)]
    assert claim.health_cell(with_health, "mean_cosine") == f"0.200 ± {np.std([0.1, 0.3], ddof=1):.3f} (n=2)"
    assert claim.health_cell(with_health + [{}], "mean_cosine") == "n/a"  # a run without health numbers


def test_claim_end_to_end_tiny_then_reused(tmp_path, capsys):
    argv = ["--seeds", "0,1", "--epochs", "2", "--protocols", "blindspot", "--img_size", "16", "--per_age", "3",
            "--test_per_age", "1", "--data_root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    report = claim.main(argv, train_main=age_program().main)
    data = pd.read_csv(tmp_path / "data" / "blindspot" / "agedb.csv")
    assert (data["split"] == "train").sum() == 3 * 47 and not data.loc[data["split"] == "train", "age"].between(47, 53).any()
    lines = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| blind spot")}
    # the gap MAE cell equals the per-label MAE over ages 47..53, recomputed here from each run's results.json
    train_mean = data.loc[data["split"] == "train", "age"].mean()
    in_gap = data[(data["split"] == "test") & data["age"].between(47, 53)]
    assert lines["MAE in the gap"].split(" | ")[2] == f"{np.mean(np.abs(in_gap['age'] - train_mean)):.2f}"
    for column, method in ((3, "vanilla"), (4, "ranksim")):
        values = []
        for seed in (0, 1):
            per_label = json.loads((tmp_path / "runs" / f"blindspot_{method}_seed{seed}" / "results.json").read_text())["per_label"]
            values.append(np.mean([per_label[str(a)]["mae"] for a in range(47, 54)]))  # one test image per age
        cell = lines["MAE in the gap"].split(" | ")[column]
        assert cell == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=2)"
    assert "(95% CI, n=2)" in lines["MAE in the gap"] and "2 seeds (0, 1)" in report
    assert "| blindspot | RankSim |" in report and (tmp_path / "runs" / "claim_table.md").read_text() == report
    # a second call finds the finished runs and trains nothing
    capsys.readouterr()

    def no_training(argv):
        raise AssertionError("trained again")

    assert claim.main(argv, train_main=no_training) == report
    assert capsys.readouterr().out.count("using the finished run") == 4


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,0"], "--seeds 0,0: give distinct"),
    (["--protocols", "extrapolation"], "--protocols extrapolation: choose from blindspot, interpolation"),
    (["--epochs", "1"], "--epochs 1: need at least 2"),
])
def test_bad_options_are_one_line_errors(argv, message, tmp_path):
    with pytest.raises(UserError, match=message) as err:
        claim.main(argv + ["--runs", str(tmp_path / "runs")], train_main=lambda a: None)
    assert "\n" not in str(err.value) and not (tmp_path / "runs").exists()
