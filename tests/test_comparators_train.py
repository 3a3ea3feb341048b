"""Balanced MSE, ConR and Rank-N-Contrast in the age training program: tiny end-to-end runs.

Reuses tests/test_age_train.py's synthetic data and helpers (16 px images, ResNet-18, 3 steps per
epoch, --workers 0 so that a resumed run repeats the uninterrupted one exactly). In-process main().
"""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from folder_modules import age_program
from test_age_train import (  # noqa: F401
    ENV,
    REPO,
    AgeDB,
    assert_same_metrics,
    common_args,
    data,
    load_ckpt,
    main,
    ok,
    run_train,
    store,
)

from ranksim.balanced_mse import fit_gaussian_mixture
from ranksim.harness.cli import UserError
from ranksim.harness.comparators import conr_view_loss


def train(data, store, name, extra, epochs=2):  # noqa: F811
    return main(common_args(data, store, name, epochs=epochs) + extra)


def train_labels(data):  # noqa: F811
    table = pd.read_csv(data / "agedb.csv")
    return table.loc[table["split"] == "train", "age"].to_numpy(dtype=np.float32)


def backbone(state):
    return {k: v for k, v in state.items() if "linear" not in k}


@pytest.fixture(scope="module")
def gai(data, store):  # noqa: F811
    return train(data, store, "gai", ["--bmse", "gai", "--bmse_init_sigma", "3"])


def test_gai_prior_saved_sigma_learned_in_its_own_group(gai, data, store):  # noqa: F811
    run_dir = store / "gai"
    prior = json.loads((run_dir / "bmse_prior.json").read_text())
    expected = fit_gaussian_mixture(train_labels(data), n_components=8)
    np.testing.assert_allclose(prior["means"], expected.means, rtol=1e-12)
    ckpt = load_ckpt(run_dir / "ckpt.pth.tar")
    state = ckpt["balanced_mse"]
    np.testing.assert_allclose(state["gmm_vars"].numpy(), expected.variances, rtol=1e-6)
    assert state["noise_sigma"].item() != 3.0  # learned
    groups = ckpt["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == 1e-2 and groups[1]["fixed_lr"]
    # the balanced metric is its own key: the mean of the per-label MAEs
    assert set(gai["balanced_mae"]) == {"all", "many", "medium", "few"}
    per_label = [row["mae"] for row in gai["per_label"].values()]
    assert gai["balanced_mae"]["all"] == pytest.approx(np.mean(per_label), rel=1e-12)
    assert "bmse sigma" in (run_dir / "training.log").read_text()


def test_gai_resume_and_evaluate_repeat_the_uninterrupted_run(gai, data, store):  # noqa: F811
    train(data, store, "gai_half", ["--bmse", "gai", "--bmse_init_sigma", "3"], epochs=1)
    resumed = train(data, store, "gai_resumed", ["--bmse", "gai", "--bmse_init_sigma", "3", "--resume",
                                                 str(store / "gai_half" / "ckpt.pth.tar")])
    assert_same_metrics(resumed["metrics"], gai["metrics"], rel=1e-6)
    sigma = [load_ckpt(store / n / "ckpt.pth.tar")["balanced_mse"]["noise_sigma"] for n in ("gai", "gai_resumed")]
    assert sigma[0].item() == pytest.approx(sigma[1].item(), rel=1e-6)
    evaluated = train(data, store, "gai_eval", ["--bmse", "gai", "--evaluate", "--resume",
                                                str(store / "gai" / "ckpt.best.pth.tar")])
    assert_same_metrics(evaluated["metrics"], gai["metrics"], rel=1e-9)
    assert evaluated["balanced_mae"] == pytest.approx(gai["balanced_mae"])


@pytest.mark.parametrize("variant", ["bmc", "bni"])
def test_balanced_mse_as_stage_two_retrains_only_the_head(gai, data, store, variant):  # noqa: F811
    pretrained = store / "gai" / "ckpt.best.pth.tar"
    train(data, store, f"{variant}_rrt", ["--bmse", variant, "--retrain_fc", "--pretrained", str(pretrained),
                                         "--lr", "1e-4", "--bmse_fix_sigma"], epochs=1)
    before = load_ckpt(pretrained)["state_dict"]
    after = load_ckpt(store / f"{variant}_rrt" / "ckpt.pth.tar")
    for key, value in backbone(before).items():
        assert torch.equal(value, after["state_dict"][key]), key
    assert not torch.equal(before["module.linear.weight"], after["state_dict"]["module.linear.weight"])
    assert after["balanced_mse"]["noise_sigma"].item() == 1.0  # frozen: no sigma group
    assert len(after["optimizer"]["param_groups"]) == 1


@pytest.fixture(scope="module")
def conr(data, store):  # noqa: F811
    return train(data, store, "conr", ["--conr", "--fds", "--reweight", "sqrt_inv", "--regularization_weight", "10"])


def test_conr_with_ranksim_and_fds_resume_and_evaluate(conr, data, store):  # noqa: F811
    assert conr["args"]["conr"] and conr["args"]["conr_beta"] == 4.0 and conr["args"]["conr_tau"] == 0.2
    train(data, store, "conr_half", ["--conr", "--fds", "--reweight", "sqrt_inv", "--regularization_weight", "10"],
          epochs=1)
    resumed = train(data, store, "conr_resumed", ["--conr", "--fds", "--reweight", "sqrt_inv",
                                                  "--regularization_weight", "10", "--resume",
                                                  str(store / "conr_half" / "ckpt.pth.tar")])
    assert_same_metrics(resumed["metrics"], conr["metrics"], rel=1e-6)
    evaluated = train(data, store, "conr_eval", ["--fds", "--evaluate", "--resume",
                                                 str(store / "conr" / "ckpt.best.pth.tar")])
    assert_same_metrics(evaluated["metrics"], conr["metrics"], rel=1e-9)
    # the FDS statistics come from plain images, once per epoch over the train split
    state = load_ckpt(store / "conr" / "ckpt.pth.tar")["state_dict"]
    assert state["module.FDS.num_samples_tracked"].sum().item() == 2 * len(train_labels(data))


def test_conr_changes_training(conr, data, store):  # noqa: F811
    plain = train(data, store, "conr_off", ["--fds", "--reweight", "sqrt_inv", "--regularization_weight", "10"])
    assert plain["metrics"]["all"]["mae"] != conr["metrics"]["all"]["mae"]


def test_conr_views_are_separate_passes_without_targets():
    calls = []

    def model(x, *rest):
        calls.append((x.shape[0], rest))
        return x.flatten(1)[:, :1], x.flatten(1)

    views = torch.randn(3, 2, 4, 2, 2)
    term = conr_view_loss(4.0, 1.0, 0.2, 0.01)(model, views, torch.tensor([[1.0], [5.0], [9.0]]), torch.ones(3, 1))
    assert calls == [(3, ()), (3, ())]  # one pass per view, no targets/epoch: FDS never smooths them
    assert torch.isfinite(term)


@pytest.fixture(scope="module")
def rnc(data, store):  # noqa: F811
    return train(data, store, "rnc", ["--rnc", "encoder", "--lr", "0.05"], epochs=2)


def test_rnc_stage_defaults_and_frozen_head(rnc, data, store):  # noqa: F811
    args = rnc["args"]
    assert (args["optimizer"], args["weight_decay"], args["lr_cosine"], args["schedule"]) == ("sgd", 1e-4, True, [])
    assert args["lr"] == 0.05 and args["batch_size"] == 16  # given flags win over the stage defaults
    ckpt = load_ckpt(store / "rnc" / "ckpt.best.pth.tar")
    assert ckpt["epoch"] == 2  # the last epoch is the stage's result
    # stage 2: only the head trains on the frozen encoder, with the reference's stage-2 defaults
    linear = train(data, store, "rnc_linear", ["--rnc", "linear", "--pretrained",
                                               str(store / "rnc" / "ckpt.best.pth.tar")], epochs=1)
    assert linear["args"]["retrain_fc"] and linear["args"]["loss"] == "l1" and linear["args"]["lr"] == 0.05
    after = load_ckpt(store / "rnc_linear" / "ckpt.pth.tar")["state_dict"]
    for key, value in backbone(ckpt["state_dict"]).items():
        assert torch.equal(value, after[key]), key


def test_rnc_encoder_changes_the_encoder_and_resumes_exactly(data, store):  # noqa: F811
    flags = ["--rnc", "encoder", "--lr", "0.05", "--no-lr_cosine"]
    full = train(data, store, "rnc_const", flags, epochs=2)
    train(data, store, "rnc_half", flags, epochs=1)
    resumed = train(data, store, "rnc_resumed", flags + ["--resume", str(store / "rnc_half" / "ckpt.pth.tar")])
    assert_same_metrics(resumed["metrics"], full["metrics"], rel=1e-6)
    a = load_ckpt(store / "rnc_const" / "ckpt.pth.tar")["state_dict"]
    b = load_ckpt(store / "rnc_resumed" / "ckpt.pth.tar")["state_dict"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    half = load_ckpt(store / "rnc_half" / "ckpt.pth.tar")["state_dict"]
    assert not torch.equal(half["module.conv1.weight"], a["module.conv1.weight"])


@pytest.mark.parametrize("extra, message", [
    (["--bmse", "gai", "--reweight", "sqrt_inv"], "drop --reweight"),
    (["--rnc", "encoder", "--fds"], "drop --fds"),
    (["--rnc", "linear"], "--pretrained"),
    (["--conr", "--conr_tau", "0"], "tau > 0"),
])
def test_comparator_flag_errors_create_nothing(extra, message, data, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match=message):
        train(data, tmp_path, "bad", extra)
    assert not any(tmp_path.iterdir())


def test_methods_bench_quick_run():
    proc = subprocess.run([sys.executable, "bench/methods.py", "--quick", "--device", "cpu", "--threads", "1"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("vanilla", "rnc"))]
    assert [r[0] for r in rows] == ["vanilla", "rnc"] and rows[0][2] == "1.00x"



def test_imdb_wiki_train_py_runs_the_methods_and_evaluates(data, store):  # noqa: F811
    """The IMDB-WIKI-DIR program (same code, its own defaults): Balanced MSE + ConR through the script,
    then RnC's two stages and an evaluation in-process."""
    base = ["--data_dir", str(data), "--img_size", "16", "--model", "resnet18", "--batch_size", "16", "--workers",
            "0", "--store_root", str(store), "--epoch", "1"]
    ok(run_train(base + ["--store_name", "imdb_bni_conr", "--bmse", "bni", "--conr"], folder="imdb-wiki-dir"))
    trained = json.loads((store / "imdb_bni_conr" / "results.json").read_text())
    assert trained["dataset"] == "imdb_wiki" and trained["args"]["bmse"] == "bni" and trained["args"]["conr"]
    run = lambda *extra: age_program("imdb-wiki-dir").main(base + list(extra))  # noqa: E731
    run("--store_name", "imdb_rnc", "--rnc", "encoder", "--lr", "0.05")
    linear = run("--store_name", "imdb_rnc_linear", "--rnc", "linear", "--pretrained",
                 str(store / "imdb_rnc" / "ckpt.best.pth.tar"))
    evaluated = run("--store_name", "imdb_rnc_eval", "--evaluate", "--resume",
                    str(store / "imdb_rnc_linear" / "ckpt.best.pth.tar"))
    assert linear["dataset"] == evaluated["dataset"] == "imdb_wiki"
    assert_same_metrics(evaluated["metrics"], linear["metrics"], rel=1e-9)
