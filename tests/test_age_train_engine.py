"""Training-loop pieces: the RankSim term is wired to the backbone features, divergence stops before
the step, the FDS pass, the lr schedule, RRT freezing, loaders and run names."""
import argparse
import copy

import pytest
import torch
import torch.nn as nn

from ranksim.harness.age_program import AGEDB_DEFAULTS, build_loaders, build_parser, lr_at, run_name
from ranksim.harness.loop import (
    DivergenceError,
    freeze_all_but_head,
    ranksim_regularizer,
    set_train_mode,
    train_one_epoch,
    update_fds_statistics,
)
from ranksim.harness.models.resnet import resnet18
from ranksim.losses import weighted_l1_loss
from ranksim.regularizer import batchwise_ranking_regularizer


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.tensor([3.0, 10.0, 10.0, 25.0, 40.0, 41.0, 60.0, 90.0])[:n].reshape(-1, 1)
    w = torch.rand(n, 1, generator=g) + 0.5
    return x, y, w


def test_one_step_with_ranksim_equals_hand_written_objective():
    torch.manual_seed(0)
    model = resnet18(return_encoding=True)
    reference = copy.deepcopy(model)
    x, y, w = batch()
    gamma, lam = 100.0, 2.0

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1)  # tie reduction draws random numbers: same stream for both
    train_one_epoch(model, [(x, y, w)], opt, weighted_l1_loss, torch.device("cpu"), epoch=0,
                    regularizer=ranksim_regularizer(gamma, lam), show_progress=False)

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01)
    reference.train()
    torch.manual_seed(1)
    pred, encoding = reference(x, y, 0)
    loss = weighted_l1_loss(pred, y, w) + gamma * batchwise_ranking_regularizer(encoding, y, lam)
    ref_opt.zero_grad()
    loss.backward()
    ref_opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name

    # ... and the regularizer really moves the backbone: without it the step differs.
    torch.manual_seed(0)
    no_reg = resnet18(return_encoding=True)
    opt = torch.optim.SGD(no_reg.parameters(), lr=0.01)
    train_one_epoch(no_reg, [(x, y, w)], opt, weighted_l1_loss, torch.device("cpu"), epoch=0,
                    regularizer=None, show_progress=False)
    assert not torch.allclose(no_reg.conv1.weight, model.conv1.weight)


def test_ranksim_off_when_gamma_zero():
    assert ranksim_regularizer(0.0, 2.0) is None
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.arange(6.0).reshape(-1, 1)
    assert torch.allclose(ranksim_regularizer(3.0, 2.0)(x, y), 3.0 * batchwise_ranking_regularizer(x, y, 2.0))


def test_divergence_raises_before_the_optimizer_step():
    model = resnet18()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def nan_loss(pred, y, w):
        return (pred * float("nan")).mean()

    with pytest.raises(DivergenceError, match=r"diverged at epoch 4, step 1: loss = nan"):
        train_one_epoch(model, [batch()], opt, nan_loss, torch.device("cpu"), epoch=3, show_progress=False)
    after = model.state_dict()
    for key, value in before.items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):  # forward-only BN stats
            assert torch.equal(value, after[key]), key

    def huge_loss(pred, y, w):
        return weighted_l1_loss(pred, y, w) + 1e9

    with pytest.raises(DivergenceError, match=r"loss = 1e\+09"):
        train_one_epoch(model, [batch()], opt, huge_loss, torch.device("cpu"), epoch=0, show_progress=False)


def test_fds_pass_feeds_every_batch_of_the_epoch_to_fds():
    torch.manual_seed(0)
    model = resnet18(fds=True, bucket_start=0, start_smooth=1)
    reference = copy.deepcopy(model)
    batches = [batch(0), batch(1), batch(2, n=5)]
    update_fds_statistics(model, batches, torch.device("cpu"), epoch=1, show_progress=False)

    reference.train()
    with torch.no_grad():
        feats = [reference(x, y, 1)[1] for x, y, _ in batches]
    labels = torch.cat([y for _, y, _ in batches])
    reference.FDS.update_last_epoch_stats(1)
    reference.FDS.update_running_stats(torch.cat(feats), labels, 1)
    for key, value in reference.FDS.state_dict().items():
        assert torch.allclose(model.FDS.state_dict()[key], value, atol=1e-6), key
    assert model.FDS.num_samples_tracked.sum().item() == 21 and model.FDS.epoch.item() == 1


def test_lr_schedule_is_a_function_of_the_epoch():
    assert lr_at(0, 1e-3, [60, 80]) == 1e-3
    assert lr_at(59, 1e-3, [60, 80]) == 1e-3
    assert lr_at(60, 1e-3, [60, 80]) == pytest.approx(1e-4)
    assert lr_at(80, 1e-3, [60, 80]) == pytest.approx(1e-5)
    assert lr_at(100, 1e-3, []) == 1e-3


def test_rrt_freezes_backbone_parameters_and_batchnorm_statistics():
    model = resnet18()
    freeze_all_but_head(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["linear.weight", "linear.bias"]
    set_train_mode(model, frozen_backbone=True)
    assert model.training and all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    set_train_mode(model, frozen_backbone=False)
    assert all(m.training for m in model.modules())


def test_loaders_drop_only_a_single_trailing_train_sample():
    class Items(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return torch.zeros(1), torch.zeros(1), torch.ones(1)

    for n, batches in ((17, 2), (18, 3), (16, 2)):
        loaders = build_loaders({"train": Items(n), "val": Items(n), "test": Items(n)}, 8, 0, torch.device("cpu"))
        assert len(loaders["train"]) == batches
        assert len(loaders["val"]) == (n + 7) // 8  # evaluation never drops samples


def test_run_name_encodes_the_settings():
    args = build_parser(AGEDB_DEFAULTS).parse_args(
        ["--reweight", "sqrt_inv", "--lds", "--fds", "--regularization_weight", "100", "--interpolation_lambda", "2",
         "--lr", "2.5e-4", "--batch_size", "64", "--loss", "focal_l1"])
    name = run_name(args)
    for part in ("agedb_resnet50_sqrt_inv_lds_gau_9_1.0_fds_gau_9_1.0_0_1_0.9_ranksim_100.0_2.0",
                 "_adam_focal_l1_0.00025_64_"):
        assert part in name
    assert isinstance(args, argparse.Namespace) and name != run_name(build_parser(AGEDB_DEFAULTS).parse_args([]))


def test_train_step_bench_quick_runs():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["8"]]
    assert [row[1] for row in rows] == ["none", "library", "loop"]
    assert all(float(row[3]) > 0 for row in rows)
