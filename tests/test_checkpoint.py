"""Checkpoint I/O: atomic writes, weights_only loads, strict state_dict loading (docs/published_behaviour.md §7 layout)."""
import os
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from ranksim.harness.checkpoint import (
    PUBLISHED_KEYS,
    add_module_prefix,
    capture_rng_state,
    copy_as_best,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_of,
    strip_module_prefix,
)
from ranksim.harness.cli import UserError


class FakeFDS(nn.Module):
    """Stands in for ranksim.fds.FDS: buffers only, named as in published checkpoints."""

    def __init__(self, buckets=4, dim=3):
        super().__init__()
        self.register_buffer("epoch", torch.zeros(1))
        self.register_buffer("running_mean", torch.zeros(buckets, dim))
        self.register_buffer("running_var", torch.ones(buckets, dim))


class TinyNet(nn.Module):
    """conv + BN backbone, `linear` head, optional FDS: the key structure of the published ResNet."""

    def __init__(self, fds=False, channels=3, out=1):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3)
        self.bn1 = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, out)
        if fds:
            self.FDS = FakeFDS(dim=channels)


def randomised(model, seed):
    """Fill every parameter and float buffer with seeded random values (so loads are observable)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model


def assert_state_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- atomic writes


def test_save_load_round_trip_leaves_no_temp(tmp_path):
    path = tmp_path / "run" / "ckpt.pth.tar"  # parent directory is created
    state = {"epoch": 3, "w": torch.arange(6.0).reshape(2, 3), "nested": {"lr": 0.1, "betas": (0.9, 0.99)}}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])
    assert loaded["nested"] == {"lr": 0.1, "betas": (0.9, 0.99)}
    assert os.listdir(path.parent) == ["ckpt.pth.tar"]


def test_crash_during_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    old_bytes = path.read_bytes()
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the temp file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == old_bytes
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]


def test_saved_file_has_normal_permissions(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"a": 1}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_copy_as_best(tmp_path):
    path, best = tmp_path / "ckpt.pth.tar", tmp_path / "ckpt.best.pth.tar"
    save_checkpoint({"epoch": 5, "w": torch.randn(10)}, path)
    save_checkpoint({"epoch": 1}, best)  # an older best is replaced
    copy_as_best(path, best)
    assert best.read_bytes() == path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.best.pth.tar", "ckpt.pth.tar"]


# ----------------------------------------------------------------------------- safe loading


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(UserError, match=f"checkpoint {missing}: not found"):
        load_checkpoint(missing)
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_load_damaged_file(tmp_path, damage):
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    content = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"age,path,split\n30,a.jpg,train\n"}
    path.write_bytes(content[damage])
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"checkpoint {path}: ")
    assert "\n" not in message.strip()


def test_load_non_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(UserError, match="holds a Tensor, not a dict"):
        load_checkpoint(path)


class RunsCodeWhenUnpickled:
    """Unpickling this calls open(marker, 'w'): a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_only_refuses_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "payload": RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(UserError, match="contains code .*weights_only loading refuses") as exc:
        load_checkpoint(path)
    assert "open" in str(exc.value)
    assert not marker.exists()


class RunsShellCommandWhenUnpickled:
    """The classic malicious pickle: os.system (pickled as posix.system on Linux)."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_malicious_checkpoint_names_the_global_and_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "payload": RunsShellCommandWhenUnpickled()}, path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert f"{os.system.__module__}.system" in message and "contains code" in message
    assert "weights_only=False" not in message and "re-download" not in message


def test_weights_only_refuses_custom_class(tmp_path):
    path = tmp_path / "obj.pth.tar"
    torch.save({"args": FakeArgs()}, path)
    with pytest.raises(UserError, match=r"FakeArgs.*weights_only loading refuses"):
        load_checkpoint(path)


class FakeArgs:
    lr = 0.1


def test_numpy_scalars_load(tmp_path):
    # Older training code stores e.g. best_loss as a numpy float64; that is data, not code.
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"best_loss": np.float64(6.91), "epoch": np.int64(120), "f": np.float32(0.5)}, path)
    loaded = load_checkpoint(path)
    assert loaded["best_loss"] == 6.91 and loaded["epoch"] == 120 and loaded["f"] == 0.5


# ----------------------------------------------------------------------------- published layout


def test_prefix_helpers():
    sd = {"conv1.weight": 1, "module.linear.bias": 2}
    assert list(add_module_prefix(sd)) == ["module.conv1.weight", "module.linear.bias"]
    assert list(strip_module_prefix(sd)) == ["conv1.weight", "linear.bias"]
    assert list(strip_module_prefix(add_module_prefix(sd))) == ["conv1.weight", "linear.bias"]
    assert list(strip_module_prefix({"module.module.x": 0})) == ["module.x"]  # one level only


@pytest.mark.parametrize("wrap", [False, True])
def test_make_checkpoint_published_layout(tmp_path, wrap):
    model = randomised(TinyNet(fds=True), 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model.linear(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    wrapped = nn.DataParallel(model) if wrap else model
    extra = {"rng": capture_rng_state(), "scaler": {"scale": 65536.0, "growth_tracker": 0}}
    ckpt = make_checkpoint(wrapped, optimizer, epoch=7, best_loss=np.float64(6.5), extra=extra)
    assert list(ckpt)[:5] == list(PUBLISHED_KEYS)
    assert ckpt["epoch"] == 7 and ckpt["model"] == "resnet50" and type(ckpt["best_loss"]) is float
    expected_keys = ["module." + k for k in model.state_dict()]
    assert list(ckpt["state_dict"]) == expected_keys
    assert "module.FDS.running_mean" in expected_keys and "module.linear.bias" in expected_keys

    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path)  # optimizer state and extras load under weights_only
    assert_state_equal(loaded["state_dict"], ckpt["state_dict"])
    fresh_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(loaded["optimizer"])
    restored, original = fresh_opt.state_dict()["state"], optimizer.state_dict()["state"]
    assert sorted(restored) == sorted(original) == [4, 5]  # Adam state of the linear head
    for index in original:
        assert torch.equal(restored[index]["exp_avg"], original[index]["exp_avg"])
    assert loaded["scaler"] == extra["scaler"]


def test_make_checkpoint_plain_keys_and_clash():
    model = TinyNet()
    ckpt = make_checkpoint(model, None, 1, 0.5, arch="bilstm", module_prefix=False)
    assert list(ckpt["state_dict"]) == list(model.state_dict()) and ckpt["optimizer"] is None
    with pytest.raises(ValueError, match="epoch"):
        make_checkpoint(model, None, 1, 0.5, extra={"epoch": 3})


def test_state_dict_of():
    sd = TinyNet().state_dict()
    assert state_dict_of({"epoch": 1, "state_dict": sd}) is sd
    assert state_dict_of(sd) is sd  # plain layout (published STS-B)
    with pytest.raises(UserError, match="ckpt.th: has no model state_dict"):
        state_dict_of({"epoch": 1, "best_loss": 0.3}, source="ckpt.th")


# ----------------------------------------------------------------------------- strict loading


@pytest.mark.parametrize("saved_prefixed", [False, True])
@pytest.mark.parametrize("target_wrapped", [False, True])
def test_load_with_and_without_prefix(saved_prefixed, target_wrapped):
    source = randomised(TinyNet(), 1)
    sd = source.state_dict()
    sd = add_module_prefix(sd) if saved_prefixed else sd
    target = TinyNet()
    report = load_model_state(nn.DataParallel(target) if target_wrapped else target, sd)
    assert_state_equal(target.state_dict(), source.state_dict())
    assert report.loaded == list(source.state_dict()) and report.kept_init == [] and report.ignored == []


def test_missing_and_unexpected_keys_listed_and_nothing_loaded():
    source = randomised(TinyNet(), 1)
    sd = dict(source.state_dict())
    del sd["bn1.running_var"]
    sd["layer9.weight"] = torch.zeros(2)
    target = randomised(TinyNet(), 2)
    before = snapshot(target)
    with pytest.raises(UserError) as exc:
        load_model_state(target, add_module_prefix(sd), source="ckpt.pth.tar")
    message = str(exc.value)
    assert message.startswith("ckpt.pth.tar does not match the model: ")
    assert "1 missing keys (bn1.running_var)" in message
    assert "1 unexpected keys (layer9.weight)" in message
    assert "another architecture or dataset" in message
    assert_state_equal(target.state_dict(), before)  # never a partial load


def test_shape_mismatch_listed():
    sd = TinyNet(channels=4).state_dict()
    target = TinyNet(channels=3)
    before = snapshot(target)
    with pytest.raises(UserError) as exc:
        load_model_state(target, sd)
    message = str(exc.value)
    assert "conv1.weight [4, 1, 3, 3] vs model [3, 1, 3, 3]" in message
    assert "shape mismatches" in message
    assert_state_equal(target.state_dict(), before)


def test_long_key_lists_are_truncated():
    sd = {f"extra{i}.weight": torch.zeros(1) for i in range(20)}
    sd.update(TinyNet().state_dict())
    with pytest.raises(UserError) as exc:
        load_model_state(TinyNet(), sd)
    message = str(exc.value)
    assert "20 unexpected keys (extra0.weight, " in message and "... and 12 more" in message
    assert "extra19.weight" not in message


def test_fds_keys_in_checkpoint_but_not_in_model():
    source = randomised(TinyNet(fds=True), 1)
    target = TinyNet(fds=False)
    with pytest.raises(UserError, match=r"unexpected keys \(FDS\.epoch.*pass --fds"):
        load_model_state(target, add_module_prefix(source.state_dict()))
    report = load_model_state(target, add_module_prefix(source.state_dict()), ignore_fds=True)
    assert report.ignored == ["FDS.epoch", "FDS.running_mean", "FDS.running_var"]
    assert torch.equal(target.linear.weight, source.linear.weight)


def test_fds_model_with_checkpoint_without_fds():
    source = randomised(TinyNet(fds=False), 1)
    target = randomised(TinyNet(fds=True), 2)
    before = snapshot(target)
    with pytest.raises(UserError, match=r"missing keys \(FDS\.epoch.*trained without --fds"):
        load_model_state(target, source.state_dict())
    report = load_model_state(target, source.state_dict(), allow_missing_fds=True)
    assert report.kept_init == ["FDS.epoch", "FDS.running_mean", "FDS.running_var"]
    assert torch.equal(target.FDS.running_mean, before["FDS.running_mean"])
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_fds_both_sides_loaded_or_ignored():
    source = randomised(TinyNet(fds=True), 1)
    target = randomised(TinyNet(fds=True), 2)
    before = snapshot(target)
    load_model_state(target, source.state_dict(), ignore_fds=True)
    assert torch.equal(target.FDS.running_var, before["FDS.running_var"])  # FDS state not taken
    load_model_state(target, source.state_dict())
    assert torch.equal(target.FDS.running_var, source.FDS.running_var)


def test_skip_predicate_for_rrt():
    source = randomised(TinyNet(out=2), 1)  # even a head of another shape is fine when skipped
    target = randomised(TinyNet(out=1), 2)
    head_before = target.linear.weight.clone()
    report = load_model_state(target, source.state_dict(), skip=lambda k: "linear" in k or "fc" in k)
    assert torch.equal(target.linear.weight, head_before)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert report.kept_init == ["linear.weight", "linear.bias"]
    assert report.ignored == ["linear.weight", "linear.bias"]


def test_old_checkpoint_without_num_batches_tracked():
    source = randomised(TinyNet(), 1)
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = TinyNet()
    report = load_model_state(target, sd)
    assert report.kept_init == ["bn1.num_batches_tracked"]
    assert torch.equal(target.bn1.running_mean, source.bn1.running_mean)


# ----------------------------------------------------------------------------- optimizer state


def test_optimizer_state_round_trip_and_mismatch_errors(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    trained = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    trained.step()
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"optimizer": trained.state_dict()}, path)

    restored = torch.optim.Adam(model.parameters(), lr=0.5)
    load_optimizer_state(restored, load_checkpoint(path), str(path))
    assert restored.param_groups[0]["lr"] == 0.1  # the saved hyperparameters win, as for a resumed run
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(restored.state[p][key], trained.state[p][key])

    only_head = torch.optim.Adam([model.bias], lr=0.1)  # e.g. --retrain_fc against a full run
    with pytest.raises(UserError, match=rf"^--resume {re.escape(str(path))}: its optimizer state does not fit "
                                        r"this run \(.*\); resume with the --optimizer and --retrain_fc") as err:
        load_optimizer_state(only_head, load_checkpoint(path), str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^--resume old\.pth: its optimizer state does not fit"):
        load_optimizer_state(only_head, {"state_dict": {}}, "old.pth")  # no optimizer entry at all


# ----------------------------------------------------------------------------- RNG state


def test_rng_state_round_trip_through_file(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint({"rng": capture_rng_state()}, path)
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.randn(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
