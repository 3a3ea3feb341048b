"""ResNet regressor: published parameter layout, init, forward contract with FDS / RankSim (docs/published_behaviour.md §3, §7)."""
import math

import pytest
import torch
import torchvision

from ranksim.fds import FDS
from ranksim.harness.models.resnet import resnet18, resnet50

FDS_BUFFERS = ("epoch", "running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
               "smoothed_mean_last_epoch", "smoothed_var_last_epoch", "num_samples_tracked")


def published_layout(tv_model, feature_dim, fds_buckets=None):
    """Expected {name: shape}: torchvision's names with the head `fc` renamed `linear` ([1, D] / [1]),
    plus the FDS buffers (docs/published_behaviour.md §3) when fds_buckets is given."""
    layout = {}
    for name, tensor in tv_model.state_dict().items():
        if name.startswith("fc."):
            name = "linear." + name[3:]
        layout[name] = tuple(tensor.shape)
    if fds_buckets is not None:
        layout.update({"FDS.epoch": (1,), "FDS.num_samples_tracked": (fds_buckets,)})
        for buf in FDS_BUFFERS[1:-1]:
            layout[f"FDS.{buf}"] = (fds_buckets, feature_dim)
    return layout


@pytest.mark.parametrize("ours, theirs, dim", [(resnet50, torchvision.models.resnet50, 2048),
                                               (resnet18, torchvision.models.resnet18, 512)])
def test_state_dict_names_and_shapes_match_published_layout(ours, theirs, dim):
    model = ours(fds=True, bucket_num=100, bucket_start=3)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_layout(theirs(num_classes=1), dim, fds_buckets=97)
    # without FDS there is no FDS key at all
    plain = {k: tuple(v.shape) for k, v in ours().state_dict().items()}
    assert plain == published_layout(theirs(num_classes=1), dim)


def test_resnet50_parameter_count_and_feature_dim():
    model = resnet50()
    n_params = sum(p.numel() for p in model.parameters())
    # torchvision's ResNet-50 with a 1-output head; and by hand: 25,557,032 - 2048*999 - 999
    assert n_params == sum(p.numel() for p in torchvision.models.resnet50(num_classes=1).parameters())
    assert n_params == 25_557_032 - 2048 * 999 - 999
    assert model.feature_dim == 2048 and model.linear.in_features == 2048


def test_init_follows_spec():
    torch.manual_seed(0)
    model = resnet50()
    conv = model.layer4[0].conv2  # 3x3x512 -> std sqrt(2 / (9 * 512))
    assert conv.weight.mean().abs().item() < 1e-3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 512)), rel=0.02)
    conv1 = model.conv1  # 7x7x64
    assert conv1.weight.std().item() == pytest.approx(math.sqrt(2.0 / (49 * 64)), rel=0.05)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_bottleneck_carries_stride_in_3x3_conv():
    model = resnet50()
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_forward_outputs_per_mode():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = resnet18()
    model.eval()
    pred = model(x)
    assert isinstance(pred, torch.Tensor) and pred.shape == (4, 1)
    model.train()
    assert isinstance(model(x), torch.Tensor)  # neither FDS nor RankSim: prediction only
    model.return_encoding = True
    pred, encoding = model(x)
    assert pred.shape == (4, 1) and encoding.shape == (4, 512)
    assert torch.allclose(pred, model.linear(encoding))
    model.eval()
    assert isinstance(model(x), torch.Tensor)  # evaluation never returns the features


def test_fds_smoothing_in_training_only_from_start_smooth():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    targets = torch.tensor([[5.0], [5.0], [20.0], [30.0], [30.0], [60.0]])
    model = resnet18(fds=True, bucket_num=100, bucket_start=3, start_smooth=1, ks=5, sigma=2)
    # Give FDS non-trivial statistics: one update pass with random features.
    model.FDS.update_last_epoch_stats(1)
    model.FDS.update_running_stats(torch.randn(60, 512) * 3 + 1, torch.arange(60.0).reshape(-1, 1) % 70, 1)
    model.FDS.update_last_epoch_stats(2)
    model.FDS.update_running_stats(torch.randn(60, 512), torch.arange(60.0).reshape(-1, 1) % 70, 2)
    model.train()
    with torch.no_grad():
        raw = model.backbone(x)
        # before start_smooth: the raw features, returned next to the prediction
        pred, encoding = model(x, targets, epoch=0)
        assert torch.allclose(encoding, raw, atol=1e-6)
        # from start_smooth on: the features FDS.smooth produces, and the head sees them
        expected = model.FDS.smooth(raw.clone(), targets, 2)
        assert not torch.allclose(expected, raw, atol=1e-3)  # the check below is not vacuous
        pred, encoding = model(x, targets, epoch=2)
        assert torch.allclose(encoding, expected, atol=1e-5)
        assert torch.allclose(pred, model.linear(expected), atol=1e-5)
        # evaluation: no smoothing
        model.eval()
        eval_raw = model.backbone(x)
        assert torch.allclose(model(x, targets, epoch=2), model.linear(eval_raw), atol=1e-6)


def test_fds_training_forward_backpropagates():
    model = resnet18(fds=True, bucket_start=0, start_smooth=0)
    model.train()
    x, targets = torch.randn(4, 3, 32, 32), torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    pred, encoding = model(x, targets, epoch=0)
    (pred.sum() + encoding.sum()).backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()


def test_fds_module_type():
    assert isinstance(resnet50(fds=True).FDS, FDS)
    assert not hasattr(resnet50(), "FDS")
