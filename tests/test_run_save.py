"""Run.save: a best state's second name (ckpt.pth.tar) is a hard link to ckpt.best.pth.tar, not a copy;
writing either name later leaves the other's content intact; without hard links it is a copy."""
import os

import torch

from ranksim.harness.checkpoint import load_checkpoint
from ranksim.harness.run import Run


def epoch_of(path):
    return load_checkpoint(path)["epoch"]


def test_best_state_is_linked_and_later_writes_leave_the_other_name_intact(tmp_path):
    run = Run(tmp_path / "run")
    run.save({"epoch": 1, "w": torch.ones(3)}, is_best=True)
    assert os.path.samefile(run.ckpt_path, run.best_path)
    assert epoch_of(run.ckpt_path) == epoch_of(run.best_path) == 1
    run.save({"epoch": 2, "w": torch.zeros(3)}, is_best=False)  # a worse epoch: only the latest changes
    assert (epoch_of(run.ckpt_path), epoch_of(run.best_path)) == (2, 1)
    assert not os.path.samefile(run.ckpt_path, run.best_path)
    run.save({"epoch": 3, "w": torch.ones(3)}, is_best=True)
    assert epoch_of(run.ckpt_path) == epoch_of(run.best_path) == 3
    assert sorted(p.name for p in run.dir.iterdir()) == ["ckpt.best.pth.tar", "ckpt.pth.tar", "training.log"]
    run.logger.close()


def test_without_hard_links_the_best_state_is_copied(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    run = Run(tmp_path / "run")
    run.save({"epoch": 1, "w": torch.ones(3)}, is_best=True)
    assert not os.path.samefile(run.ckpt_path, run.best_path)
    assert run.ckpt_path.read_bytes() == run.best_path.read_bytes()
    assert sorted(p.name for p in run.dir.iterdir()) == ["ckpt.best.pth.tar", "ckpt.pth.tar", "training.log"]
    run.logger.close()
