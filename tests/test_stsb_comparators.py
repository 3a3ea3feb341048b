"""Balanced MSE and ConR in sts-b-dir/train.py: tiny end-to-end runs (tests/test_stsb_train.py's data)."""
import json
import shutil

import numpy as np
import torch
from test_stsb_train import base_args, data, one_thread, results_of, stsb_train, train  # noqa: F401

from ranksim.balanced_mse import fit_gaussian_mixture

HEAD = "sts-b_pred_layer."


def train_targets(data):  # noqa: F811
    lines = (data["data_dir"] / "train_new.tsv").read_text().splitlines()[1:]
    return np.array([float(line.split("\t")[-1]) for line in lines]) / 5


def resume_matches_straight(data, name, flags):  # noqa: F811
    """A 4-check run equals a 2-check run's directory (results.json removed) resumed to 4 checks."""
    straight = train(data, f"{name}_straight", *flags, max_vals=4)
    train(data, f"{name}_half", *flags, max_vals=2)
    interrupted = data["runs"] / f"{name}_interrupted"
    shutil.copytree(data["runs"] / f"{name}_half", interrupted)
    (interrupted / "results.json").unlink()
    resumed = stsb_train.main(base_args(data, "", 4)[:-3] + ["--no_progress", "--resume",
                                                              str(interrupted / "ckpt.pth.tar")] + flags)
    a = torch.load(data["runs"] / f"{name}_straight" / "ckpt.pth.tar", weights_only=True)
    b = torch.load(interrupted / "ckpt.pth.tar", weights_only=True)
    assert a["val_history"] == b["val_history"]
    assert resumed["metrics"] == straight["metrics"]
    return a


def test_gai_prior_resume_and_evaluate(data):  # noqa: F811
    ckpt = resume_matches_straight(data, "gai", ["--bmse", "gai", "--bmse_init_sigma", "0.5"])
    run_dir = data["runs"] / "gai_straight"
    prior = json.loads((run_dir / "bmse_prior.json").read_text())
    np.testing.assert_allclose(prior["means"], fit_gaussian_mixture(train_targets(data)).means, rtol=1e-12)
    assert ckpt["balanced_mse"]["noise_sigma"].item() != 0.5
    assert ckpt["optimizer"]["param_groups"][1]["lr"] == 1e-2
    evaluated = train(data, "gai_eval", "--bmse", "gai", "--evaluate", "--eval_model", str(run_dir / "ckpt.best.pth.tar"))
    assert evaluated["metrics"] == results_of(run_dir)["metrics"]


def test_bni_as_stage_two_retrains_only_the_head(data):  # noqa: F811
    train(data, "bni_stage1", max_vals=2)
    pretrained = data["runs"] / "bni_stage1" / "ckpt.best.pth.tar"
    train(data, "bni_rrt", "--bmse", "bni", "--retrain_fc", "--pretrained", str(pretrained), max_vals=2)
    before = torch.load(pretrained, weights_only=True)["state_dict"]
    after = torch.load(data["runs"] / "bni_rrt" / "ckpt.pth.tar", weights_only=True)
    for key in before:
        assert torch.equal(before[key], after["state_dict"][key]) != key.startswith(HEAD), key
    centres = after["balanced_mse"]["bin_centers"].numpy()
    np.testing.assert_allclose(centres, np.round(centres / 0.02) * 0.02, atol=1e-6)  # 0.1-point bins on score / 5


def test_conr_with_fds_and_ranksim_resumes_exactly_and_changes_training(data):  # noqa: F811
    flags = ["--conr", "--fds", "--regularization_weight", "3e-4", "--interpolation_lambda", "2"]
    resume_matches_straight(data, "conr", flags)
    plain = train(data, "conr_off", *flags[1:], max_vals=4)
    assert plain["metrics"] != results_of(data["runs"] / "conr_straight")["metrics"]
    assert results_of(data["runs"] / "conr_straight")["args"]["conr_omega"] == 0.04
