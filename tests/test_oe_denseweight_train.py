"""Ordinal Entropy (--oe) and DenseWeight (--reweight denseweight) in the training programs.

Tiny runs on the synthetic data of tests/test_age_train.py and tests/test_stsb_train.py (one epoch /
one validation check); the OE term is watched through a spy on the programs' own ``ordinal_entropy``.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from folder_modules import age_program
from test_age_train import common_args, data, store  # noqa: F401
from test_stsb_train import data as stsb_data  # noqa: F401
from test_stsb_train import one_thread, stsb_train  # noqa: F401

from ranksim import DenseWeight, ordinal_entropy
from ranksim.harness.age_flags import run_name
from ranksim.harness.cli import UserError
from ranksim.harness.stsb_flags import run_name as stsb_run_name

AGE = age_program()
BATCH = 16  # common_args' --batch_size


def spy_on_oe(monkeypatch, program):
    """Replace the program's ordinal_entropy by one that records its inputs and returns the real value."""
    calls = []

    def spy(features, labels, lambda_d, lambda_t):
        calls.append((tuple(features.shape), features.requires_grad, labels.detach().clone(), lambda_d, lambda_t))
        return ordinal_entropy(features, labels, lambda_d, lambda_t)

    monkeypatch.setattr(program, "ordinal_entropy", spy)
    return calls


def age_train_labels(data):  # noqa: F811
    table = pd.read_csv(data / "agedb.csv")
    return table.loc[table["split"] == "train", "age"].to_numpy(dtype=np.float32)


DW_OE = ["--reweight", "denseweight", "--dw_alpha", "0.5", "--oe", "--oe_lambda_d", "2", "--oe_lambda_t", "0.5",
         "--fds", "--regularization_weight", "10"]


def test_age_oe_on_the_features_with_denseweight_fds_and_ranksim(monkeypatch, data, store):  # noqa: F811
    calls = spy_on_oe(monkeypatch, AGE)
    with_oe = AGE.main(common_args(data, store, "dw_oe", epochs=1) + DW_OE)
    labels = age_train_labels(data)
    assert len(calls) == len(labels) // BATCH  # once per step
    shapes, grads, _, lambda_d, lambda_t = zip(*calls)
    assert set(shapes) == {(BATCH, 512)} and all(grads)  # ResNet-18's features, trained through OE
    assert set(lambda_d) == {2.0} and set(lambda_t) == {0.5}
    seen = torch.cat([c[2].flatten() for c in calls]).sort().values.numpy()
    np.testing.assert_array_equal(seen, np.sort(labels))  # every train label once per epoch, as targets
    # the train samples carry DenseWeight's weights of the train labels (the program logs their range)
    weights = DenseWeight(alpha=0.5).fit(labels)(labels)
    log = (store / "dw_oe" / "training.log").read_text()
    assert f"train weights min {weights.min():.3g} max {weights.max():.3g}" in log
    assert with_oe["args"]["reweight"] == "denseweight" and with_oe["args"]["oe"]
    monkeypatch.undo()
    without = AGE.main(common_args(data, store, "dw_no_oe", epochs=1) + DW_OE[:4] + DW_OE[9:])
    assert without["metrics"]["all"]["mae"] != with_oe["metrics"]["all"]["mae"]  # the term changes training


def test_run_names_carry_the_methods():
    args = AGE.parse_args(["--reweight", "denseweight", "--dw_alpha", "0.5", "--oe"], AGE.DEFAULTS)
    assert "_denseweight_" in run_name(args) and "_dw_0.5_oe_1.0_1.0_" in run_name(args)
    stsb = stsb_train.parse_args(["--reweight", "denseweight", "--oe", "--oe_lambda_t", "0"])
    assert "_denseweight_dw_1.0_oe_1.0_0.0_" in stsb_run_name(stsb)


@pytest.mark.parametrize("extra, message", [
    (["--reweight", "denseweight", "--dw_alpha", "-1"], "--dw_alpha -1.0: must be a finite number >= 0"),
    (["--reweight", "denseweight", "--lds"], "DenseWeight (--reweight denseweight) has its own density"),
    (["--oe", "--oe_lambda_d", "nan"], "--oe_lambda_d nan: must be a finite number >= 0"),
    (["--oe", "--rnc", "encoder"], "drop --oe"),
    (["--dw_alpha", "0.5"], "--dw_alpha 0.5: only read with --reweight denseweight"),
    (["--oe_lambda_t", "2"], "--oe_lambda_t 2.0: only read with --oe"),
])
def test_flag_errors_are_one_line_and_create_nothing(extra, message, data, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        AGE.main(common_args(data, tmp_path, "bad") + extra)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_oe_is_refused_under_torchrun(monkeypatch, data, tmp_path):  # noqa: F811
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    argv = common_args(data, tmp_path, "bad") + ["--oe"]
    with pytest.raises(UserError, match="--oe: not supported under torchrun"):
        AGE.check_args(AGE.parse_args(argv, AGE.DEFAULTS), argv, AGE.DEFAULTS)


def test_stsb_denseweight_weights_come_from_the_raw_scores():
    scores = np.array([0.0, 0.4, 1.2, 2.5, 2.5, 3.8, 3.8, 3.8, 4.0, 5.0])
    args = stsb_train.parse_args(["--reweight", "denseweight", "--dw_alpha", "1.5"])
    np.testing.assert_array_equal(stsb_train.train_weights(args, scores), DenseWeight(alpha=1.5).fit(scores)(scores))


def test_stsb_oe_on_the_pair_features_and_raw_scores(monkeypatch, stsb_data):  # noqa: F811
    calls = spy_on_oe(monkeypatch, stsb_train)
    flags = ["--oe", "--reweight", "denseweight", "--fds", "--regularization_weight", "3e-4"]
    trained = stsb_train.main(["--data_dir", str(stsb_data["data_dir"]), "--word_embs_file", str(stsb_data["glove"]),
                               "--d_word", "8", "--d_hid", "16", "--val_interval", "5", "--max_vals", "1",
                               "--store_root", str(stsb_data["runs"]), "--store_name", "oe_dw", "--no_progress"]
                              + flags)
    assert len(calls) == 5 and trained["args"]["oe"]
    shape, grad, labels, lambda_d, lambda_t = calls[0]
    assert shape == (16, 8 * 16) and grad and (lambda_d, lambda_t) == (1.0, 1.0)  # [u, v, |u-v|, u*v]
    assert 1 < labels.max() <= 5  # the raw scores 0-5 (the model's targets are score / 5)
