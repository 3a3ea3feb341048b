"""bench/phases.py times agedb-dir/train.py by wrapping the program's own functions: every name it wraps
must exist, and a wrapped function still returns its result and adds its time to its phase."""
import os
import sys
from pathlib import Path

from folder_modules import load_folder_module

from ranksim.harness.run import Run


def test_phases_wraps_every_phase_of_the_age_program(monkeypatch):
    # Loading the bench sets TQDM_DISABLE and puts bench/ on sys.path: both are restored after the test.
    monkeypatch.setenv("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "0"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    phases = load_folder_module("bench_phases", Path(__file__).resolve().parents[1] / "bench" / "phases.py")
    for name in ("save", "log", "scalars"):  # instrument() wraps these on the class: restore them afterwards
        monkeypatch.setattr(Run, name, getattr(Run, name))
    program, timer = phases.load_age_program(), phases.PhaseTimer()
    wrapped = {name: getattr(program, name) for name in ("age_loaders", "build_model", "update_fds_statistics",
                                                         "validate", "test", "checked_loss", "train_one_epoch")}
    phases.instrument(program, timer)
    assert all(getattr(program, name) is not function for name, function in wrapped.items())
    monkeypatch.setattr(program, "set_learning_rate", lambda *args: 0.5)
    timer.wrap(program, "set_learning_rate", "lr")
    assert program.set_learning_rate(None, None, 0) == 0.5
    assert timer.counts["lr"] == 1 and timer.seconds["lr"] >= 0
