"""RankSim health in the training programs (ranksim/harness/health.py): the results.json schema, the
log line, TensorBoard scalars and warnings; the recorded numbers against an independent recomputation
from the saved checkpoint; and the health pass leaving training bit-identical. Tiny in-process runs
(16 px ResNet-18, 48 train images; STS-B: 3 checks of 10 iterations)."""
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_modules import age_program, load_folder_module

from ranksim.diagnostics import mean_cosine, rank_agreement
from ranksim.harness.checkpoint import strip_module_prefix
from ranksim.harness.data.age import AgeCSVDataset
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.health import RunHealth, fixed_indices
from ranksim.harness.models.resnet import resnet18

REPO = Path(__file__).resolve().parents[1]
age_main = age_program().main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: tiny models run faster on one thread than fighting for two
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("health_age")
    make_synthetic_age_dataset(root, n_train=48, n_val=16, n_test=16, img_size=16, seed=0)
    return root


def age_args(data, store, name, epochs, *extra):
    return ["--data_dir", str(data), "--img_size", "16", "--model", "resnet18", "--batch_size", "16", "--workers",
            "0", "--store_root", str(store), "--store_name", name, "--epoch", str(epochs), *extra]


def check_record(record, epoch, ranksim_on):
    assert set(record) >= {"epoch", "train", "val", "warnings"} and record["epoch"] == epoch
    assert set(record["train"]) == {"mean_cosine", "rank_agreement", "grad_ratio"}
    assert set(record["val"]) == {"mean_cosine", "rank_agreement"}
    for part in (record["train"], record["val"]):
        assert -1 <= part["mean_cosine"] <= 1 and -1 <= part["rank_agreement"] <= 1
    assert (record["train"]["grad_ratio"] >= 0) if ranksim_on else (record["train"]["grad_ratio"] is None)
    assert isinstance(record["warnings"], list)


def test_age_run_records_health_that_the_checkpoint_reproduces_and_warns(data, tmp_path, capsys):
    # gamma 1e-9: RankSim's gradient vanishes next to the task's, as with fp16's missing loss scale
    results = age_main(age_args(data, tmp_path, "tiny_gamma", 1, "--regularization_weight", "1e-9"))
    check_record(results["health"], 1, ranksim_on=True)
    assert results["health_history"] == [results["health"]]
    run_dir = tmp_path / "tiny_gamma"
    assert json.loads((run_dir / "results.json").read_text())["health"] == results["health"]
    log = (run_dir / "training.log").read_text()
    assert "health epoch 1: train batch mean cosine" in log
    assert results["health"]["train"]["grad_ratio"] < 1e-3
    warning = [line for line in results["health"]["warnings"] if "no effect" in line]
    assert len(warning) == 1 and "fp16" in warning[0]
    assert f"health warning: {warning[0]}" in capsys.readouterr().err and f"health warning: {warning[0]}" in log

    # Independently: the last epoch's weights, the val images and the fixed train batch without augmentation.
    model = resnet18(return_encoding=True)
    model.load_state_dict(strip_module_prefix(torch.load(run_dir / "ckpt.pth.tar",
                                                         weights_only=True)["state_dict"]))
    model.eval()
    table = AgeCSVDataset.read_table(str(data))
    without_augmentation = AgeCSVDataset(str(data), table, 16, "val").transform
    for split, indices in (("val", np.arange(16)), ("train", fixed_indices(48, 16))):
        dataset = AgeCSVDataset(str(data), table, 16, split)
        dataset.transform = without_augmentation
        images = torch.stack([dataset[int(i)][0] for i in indices])
        with torch.no_grad():
            features = model.backbone(images)
        recorded = results["health"][split]
        assert recorded["mean_cosine"] == pytest.approx(mean_cosine(features), abs=1e-5)
        assert recorded["rank_agreement"] == pytest.approx(rank_agreement(features, dataset.labels[indices]), abs=1e-5)


def test_health_pass_leaves_training_bit_identical(data, tmp_path, monkeypatch):
    ranksim = ("--regularization_weight", "100", "--interpolation_lambda", "2")
    with_health = age_main(age_args(data, tmp_path, "with", 2, *ranksim))
    assert [r["epoch"] for r in with_health["health_history"]] == [1, 2]
    for record in with_health["health_history"]:
        check_record(record, record["epoch"], ranksim_on=True)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "with"))
    events.Reload()
    assert [e.step for e in events.Scalars("health/val_rank_agreement")] == [1, 2]
    assert {"health/train_mean_cosine", "health/train_grad_ratio", "health/val_mean_cosine"} <= set(
        events.Tags()["scalars"])

    monkeypatch.setattr(RunHealth, "capture_val", lambda self: contextlib.nullcontext([]))
    monkeypatch.setattr(RunHealth, "check", lambda self, *args, **kwargs: None)
    without = age_main(age_args(data, tmp_path, "without", 2, *ranksim))
    assert "health" not in without and without["metrics"] == with_health["metrics"]
    states = [torch.load(tmp_path / name / "ckpt.pth.tar", weights_only=True)["state_dict"]
              for name in ("with", "without")]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_stsb_vanilla_run_records_health_at_every_check(tmp_path):
    stsb_dir = REPO / "sts-b-dir"
    stsb_train = load_folder_module("stsb_train_health", stsb_dir / "train.py")
    synthetic = load_folder_module("stsb_synthetic_health", stsb_dir / "data" / "make_synthetic_sts_b.py")
    data_dir = synthetic.write_synthetic_splits(tmp_path / "STS-B", seed=0)
    glove = synthetic.write_synthetic_glove(tmp_path / "glove.txt", 8, seed=0)
    results = stsb_train.main(["--data_dir", str(data_dir), "--word_embs_file", str(glove), "--d_word", "8",
                               "--d_hid", "16", "--val_interval", "10", "--max_vals", "3", "--lr", "1e-2",
                               "--store_root", str(tmp_path / "runs"), "--store_name", "vanilla", "--no_progress"])
    history = results["health_history"]
    assert [(r["check"], r["iteration"]) for r in history] == [(1, 10), (2, 20), (3, 30)]
    for record in history:
        check_record(record, record["epoch"], ranksim_on=False)
    assert results["health"] == history[-1]
    log = (tmp_path / "runs" / "vanilla" / "training.log").read_text()
    assert log.count("health epoch") == 3 and log.count("grad ratio null (gamma 0)") == 3


class _DropsTheLossScale(torch.autograd.Function):
    """A RankSim term whose backward ignores the size of its incoming gradient, as an fp16 bug would:
    under a loss scale of 65536 its gradient then comes out 65536 times too small."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.ones_like(grad)


# The real regularizer (called with gamma=, as the programs do) keeps the scale: no warning at 65536.
@pytest.mark.parametrize("scale, drops_scale, warns", [(65536.0, True, True), (None, True, False),
                                                       (65536.0, False, False)])
def test_fp16_loss_scale_lost_by_ranksim_reads_as_a_vanishing_ratio(monkeypatch, scale, drops_scale, warns):
    import types

    import ranksim.harness.health as health_module

    real = health_module.batchwise_ranking_regularizer
    if drops_scale:
        monkeypatch.setattr(health_module, "batchwise_ranking_regularizer",
                            lambda *args, **kwargs: _DropsTheLossScale.apply(real(*args, **kwargs)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    inputs, ages = torch.randn(16, 3), torch.arange(16.0).reshape(16, 1)
    run = types.SimpleNamespace(ctx=types.SimpleNamespace(is_main=True), log=lambda message: None,
                                scalars=lambda values, step: None,
                                logger=types.SimpleNamespace(record_error=lambda error, prefix: None))
    health = RunHealth(run, model[2], 1.0, 2.0, lambda: (inputs, ages, ages, torch.ones(16, 1)),
                       lambda preds, targets, weights: (preds - targets).abs().mean(), np.arange(16.0), range(16))
    options = types.SimpleNamespace(autocast=lambda device: contextlib.nullcontext(), images=lambda x: x,
                                    scaler=scale and types.SimpleNamespace(get_scale=lambda: scale))
    with health.capture_val() as features:
        model(inputs)
    record = health.check(model, options, features, epoch=1)
    vanishing = [line for line in record["warnings"] if "no effect" in line]
    assert bool(vanishing) == warns and (record["train"]["grad_ratio"] < 1e-3) == warns
