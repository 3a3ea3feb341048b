"""Training-loop pieces: the RankSim term is wired to the backbone features, divergence stops before
the step, the FDS pass, the lr schedule, RRT freezing, loaders and run names."""
import argparse
import copy

import pytest
import torch
import torch.nn as nn
from folder_modules import age_program, age_train_one_epoch

from ranksim.harness.age_flags import build_parser, run_name
from ranksim.harness.data.loaders import build_loaders
from ranksim.harness.loop import DivergenceError, freeze_all_but_head, set_train_mode, update_fds_statistics
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
    age_train_one_epoch(model, [(x, y, w)], opt, weighted_l1_loss, epoch=0,
                        flags=["--regularization_weight", str(gamma), "--interpolation_lambda", str(lam)])

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
    age_train_one_epoch(no_reg, [(x, y, w)], opt, weighted_l1_loss, epoch=0)
    assert not torch.allclose(no_reg.conv1.weight, model.conv1.weight)


def test_ranksim_term_is_reported_only_when_on():
    x, y, w = batch()
    torch.manual_seed(0)
    _, off = age_train_one_epoch(resnet18(return_encoding=True), [(x, y, w)], None_optimizer(), weighted_l1_loss)
    torch.manual_seed(0)
    model = resnet18(return_encoding=True)
    reference = copy.deepcopy(model).train()
    torch.manual_seed(1)
    _, on = age_train_one_epoch(model, [(x, y, w)], None_optimizer(), weighted_l1_loss,
                                flags=["--regularization_weight", "3", "--interpolation_lambda", "2"])
    torch.manual_seed(1)
    expected = 3.0 * batchwise_ranking_regularizer(reference(x, y, 0)[1], y, 2.0)
    assert off == 0.0 and on == pytest.approx(expected.item(), rel=1e-5)


class None_optimizer:  # noqa: N801  (a stand-in that keeps the weights: the step's values alone are checked)
    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        pass


def test_divergence_raises_before_the_optimizer_step():
    model = resnet18(return_encoding=True)  # as train.py builds it
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def nan_loss(pred, y, w):
        return (pred * float("nan")).mean()

    with pytest.raises(DivergenceError, match=r"diverged at epoch 4, step 1: loss = nan"):
        age_train_one_epoch(model, [batch()], opt, nan_loss, epoch=3)
    after = model.state_dict()
    for key, value in before.items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):  # forward-only BN stats
            assert torch.equal(value, after[key]), key

    def huge_loss(pred, y, w):
        return weighted_l1_loss(pred, y, w) + 1e9

    with pytest.raises(DivergenceError, match=r"loss = 1e\+09"):
        age_train_one_epoch(model, [batch()], opt, huge_loss, epoch=0)


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
    program = age_program()

    def lr_at(epoch, flags):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5, "fixed_lr": True})
        lr = program.set_learning_rate(optimizer, program.parse_args(flags, program.DEFAULTS), epoch)
        assert optimizer.param_groups[0]["lr"] == lr and optimizer.param_groups[1]["lr"] == 0.5  # sigma's group kept
        return lr

    steps = ["--lr", "1e-3", "--schedule", "60", "80"]
    assert lr_at(0, steps) == 1e-3 and lr_at(59, steps) == 1e-3
    assert lr_at(60, steps) == pytest.approx(1e-4) and lr_at(80, steps) == pytest.approx(1e-5)
    assert lr_at(100, ["--lr", "1e-3", "--schedule"]) == 1e-3
    cosine = ["--lr", "1e-3", "--lr_cosine", "--epoch", "10"]  # from 1e-3 towards 1e-6, half-way at epoch 5
    assert lr_at(0, cosine) == pytest.approx(1e-3) and lr_at(5, cosine) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(10, cosine) == pytest.approx(1e-6)


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
    args = build_parser(age_program().DEFAULTS).parse_args(
        ["--reweight", "sqrt_inv", "--lds", "--fds", "--regularization_weight", "100", "--interpolation_lambda", "2",
         "--lr", "2.5e-4", "--batch_size", "64", "--loss", "focal_l1"])
    name = run_name(args)
    for part in ("agedb_resnet50_sqrt_inv_lds_gau_9_1.0_fds_gau_9_1.0_0_1_0.9_ranksim_100.0_2.0",
                 "_adam_focal_l1_0.00025_64_"):
        assert part in name
    assert isinstance(args, argparse.Namespace) and name != run_name(build_parser(age_program().DEFAULTS).parse_args([]))


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
