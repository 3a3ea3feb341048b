"""Run directory, logger, results.json, device choice, seeding, worker cap."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

from ranksim.harness.cli import UserError
from ranksim.harness.run import (
    Run,
    RunLogger,
    available_cpus,
    cap_workers,
    make_run_dir,
    seed_everything,
    select_device,
    write_results_json,
)

# ----------------------------------------------------------------------------- run directory


def test_run_dir_is_never_reused(tmp_path):
    root = tmp_path / "checkpoint"  # created on demand
    first = make_run_dir(root, "agedb_resnet50")
    assert first == root / "agedb_resnet50" and first.is_dir()
    (first / "results.json").write_text("{}")  # a finished run
    second = make_run_dir(root, "agedb_resnet50")
    assert second == root / "agedb_resnet50_2"
    (second / "ckpt.pth.tar").write_bytes(b"x")  # an interrupted run is not reused either
    third = make_run_dir(root, "agedb_resnet50")
    assert third == root / "agedb_resnet50_3"
    assert (first / "results.json").read_text() == "{}" and (second / "ckpt.pth.tar").read_bytes() == b"x"


def test_empty_existing_run_dir_is_used(tmp_path):
    (tmp_path / "run").mkdir()
    assert make_run_dir(tmp_path, "run") == tmp_path / "run"


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_store_name(tmp_path, name):
    with pytest.raises(UserError, match="--store_name"):
        make_run_dir(tmp_path, name)


def test_store_root_is_a_file(tmp_path):
    root = tmp_path / "checkpoint"
    root.write_text("")
    with pytest.raises(UserError, match=f"--store_root {root}: is a file"):
        make_run_dir(root, "run")


# ----------------------------------------------------------------------------- logger


def test_logger_writes_log_and_tensorboard(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    logger = RunLogger(run_dir)
    logger.info("epoch 1 | val MAE 7.5")
    # the log line is on disk before close (a killed run keeps its log)
    assert (run_dir / "training.log").read_text().endswith(" | epoch 1 | val MAE 7.5\n")
    logger.info("two\nlines")
    logger.scalar("train/loss", 0.5, 1)
    logger.scalars({"train/loss": 0.25, "val/mae": 7.5}, 2)
    logger.close()
    logger.close()  # idempotent
    assert capsys.readouterr().out == "epoch 1 | val MAE 7.5\ntwo\nlines\n"
    log_lines = (run_dir / "training.log").read_text().splitlines()
    assert [line.split(" | ", 1)[1] for line in log_lines] == ["epoch 1 | val MAE 7.5", "two", "lines"]

    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(1, 0.5), (2, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("val/mae")] == [(2, 7.5)]


def test_logger_without_tensorboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with RunLogger(tmp_path) as logger:
        logger.scalar("a", 1.0, 0)
        logger.scalar("a", 2.0, 1)
        logger.info("still logging")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "tensorboard package is not installed" in out[0] and out[1] == "still logging"
    assert not any(name.startswith("events.out") for name in os.listdir(tmp_path))


def test_disabled_logger_is_a_no_op(tmp_path, capsys):
    run_dir = tmp_path / "rank1"
    logger = RunLogger(run_dir, enabled=False)
    logger.info("hidden")
    logger.scalar("x", 1.0, 0)
    logger.close()
    assert capsys.readouterr().out == ""
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- results.json


def test_results_json_nan_to_null(tmp_path):
    results = {
        "dataset": "agedb",
        "epoch": np.int64(120),
        "metrics": {"few": {"mse": float("nan"), "mae": np.float32(9.5), "gmean": float("inf"), "count": 0}},
        "sizes": (3, 2, 1),
        "per_label": {5: {"count": 1, "mae": torch.tensor(0.25)}},
        "checkpoint": tmp_path / "ckpt.best.pth.tar",
    }
    path = write_results_json(tmp_path, results)
    assert path == tmp_path / "results.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded == {
        "dataset": "agedb",
        "epoch": 120,
        "metrics": {"few": {"mse": None, "mae": 9.5, "gmean": None, "count": 0}},
        "sizes": [3, 2, 1],
        "per_label": {"5": {"count": 1, "mae": 0.25}},
        "checkpoint": str(tmp_path / "ckpt.best.pth.tar"),
    }
    assert os.listdir(tmp_path) == ["results.json"]  # no temp file left
    write_results_json(tmp_path, {"dataset": "agedb", "metrics": {}})  # replaced atomically
    assert json.loads(path.read_text()) == {"dataset": "agedb", "metrics": {}}


# ----------------------------------------------------------------------------- device, seed, workers


def test_select_device_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == torch.device("cpu")
    with pytest.raises(UserError, match="--gpu 0: CUDA is not available.*leave out --gpu"):
        select_device(0)


def test_select_device_cuda(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert select_device(None) == torch.device("cuda", 0)
    assert select_device(1) == torch.device("cuda", 1)
    assert chosen == [0, 1]
    with pytest.raises(UserError, match=r"--gpu 2: this machine has 2 CUDA device\(s\), numbered 0\.\.1"):
        select_device(2)


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(111)
    first = draw()
    seed_everything(111)
    assert draw() == first
    seed_everything(112)
    assert all(a != b for a, b in zip(draw(), first))


def test_cap_workers():
    cpus = available_cpus()
    assert cpus >= 1
    assert cap_workers(0) == 0
    assert cap_workers(1) == 1
    assert cap_workers(10_000) == cpus
    with pytest.raises(UserError, match="--workers -1"):
        cap_workers(-1)


def test_cap_workers_follows_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cap_workers(32) == 3 and cap_workers(2) == 2


# ----------------------------------------------------------------------------- the Run protocol


def finished_or_not(run_dir, finished):
    run_dir.mkdir(parents=True)
    (run_dir / "training.log").write_text("log\n")
    torch.save({"epoch": 3}, run_dir / "ckpt.pth.tar")
    torch.save({"epoch": 2}, run_dir / "ckpt.best.pth.tar")
    if finished:
        (run_dir / "results.json").write_text("{}")
    return run_dir / "ckpt.pth.tar"


def test_resume_continues_an_unfinished_run_in_its_own_directory(tmp_path):
    checkpoint = finished_or_not(tmp_path / "runs" / "exp", finished=False)
    with Run.for_resume(checkpoint, tmp_path / "runs") as run:
        assert run.dir == checkpoint.parent.resolve() and run.resumed_best(1.5) == 1.5
        assert run.last_good == str(checkpoint)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp"]


def test_resume_of_a_finished_run_or_under_another_name_starts_a_new_directory_with_its_best(tmp_path):
    finished = finished_or_not(tmp_path / "runs" / "done", finished=True)
    with Run.for_resume(finished, tmp_path / "runs") as run:
        assert run.dir == tmp_path / "runs" / "done_2"
        assert torch.load(run.best_path, weights_only=True) == {"epoch": 2}  # the best checkpoint came along
        assert run.resumed_best(1.5) == 1.5
    assert (finished.parent / "results.json").read_text() == "{}"  # the finished run is untouched
    unfinished = finished_or_not(tmp_path / "runs" / "open", finished=False)
    with Run.for_resume(unfinished, tmp_path / "runs", store_name="branch") as run:
        assert run.dir == tmp_path / "runs" / "branch"
    (run.dir / "ckpt.best.pth.tar").unlink()
    with Run.for_resume(unfinished, tmp_path / "runs", store_name="branch") as run:  # taken: branch_2, no best
        assert run.dir == tmp_path / "runs" / "branch_2"
    outside = tmp_path / "loose" / "ckpt.pth.tar"  # no training.log beside it: never written into
    outside.parent.mkdir()
    torch.save({"epoch": 1}, outside)
    with Run.for_resume(outside, tmp_path / "runs") as run:
        assert run.dir == tmp_path / "runs" / "loose" and run.resumed_best(0.5) == float("inf")


def test_save_writes_the_best_first_then_the_latest_as_its_copy(tmp_path, monkeypatch):
    import ranksim.harness.run as run_module

    written = []
    real_save = run_module.save_checkpoint
    monkeypatch.setattr(run_module, "save_checkpoint", lambda state, path: (written.append(path.name),
                                                                             real_save(state, path)))
    with Run.for_training(tmp_path, "exp") as run:
        run.save({"epoch": 1}, is_best=True)
        assert written == ["ckpt.best.pth.tar"]  # ckpt.pth.tar is then a copy of it
        assert run.ckpt_path.read_bytes() == run.best_path.read_bytes()
        run.save({"epoch": 2}, is_best=False)
        assert written == ["ckpt.best.pth.tar", "ckpt.pth.tar"]
        assert torch.load(run.best_path, weights_only=True) == {"epoch": 1}
        assert torch.load(run.ckpt_path, weights_only=True) == {"epoch": 2}
        assert run.last_good == str(run.ckpt_path)


def test_divergence_and_interruption_messages_name_the_checkpoint(tmp_path):
    run = Run.for_training(tmp_path, "exp")
    message = str(run.diverged(ValueError("training diverged at epoch 1, step 3: loss = nan")))
    assert message == ("training diverged at epoch 1, step 3: loss = nan; stopped, no checkpoint was written (it "
                       "diverged before the first one); lower --lr (or --regularization_weight) and start again")
    run.save({"epoch": 1}, is_best=True)
    assert str(run.diverged(ValueError("x"))).endswith(f"and resume it with --resume {run.ckpt_path}")
    with pytest.raises(KeyboardInterrupt, match=f"^resume with --resume {run.ckpt_path}$"):
        with run:
            raise KeyboardInterrupt
    assert (run.dir / "training.log").read_text().rstrip().endswith(
        f"interrupted (Ctrl-C); resume with --resume {run.ckpt_path}")
    with pytest.raises(UserError):
        with Run.for_training(tmp_path, "other") as other:
            raise UserError("--data_dir x: not found")
    assert (other.dir / "training.log").read_text().rstrip().endswith("error: --data_dir x: not found")


def test_load_best_and_results(tmp_path):
    model = torch.nn.Linear(2, 1)
    with Run.for_training(tmp_path, "exp") as run:
        run.save({"state_dict": model.state_dict(), "epoch": 4, "best_loss": 0.5}, is_best=True)
        with torch.no_grad():
            model.weight.zero_()
        info = run.load_best(model)
        assert info == {"epoch": 4, "best_loss": 0.5} and model.weight.abs().sum() > 0
        run.write_results({"mae": float("nan")})
    assert json.loads((run.dir / "results.json").read_text()) == {"mae": None}
