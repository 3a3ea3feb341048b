"""Faults and silent mistakes a user meets in real runs: SIGTERM from a job scheduler, evaluation with
flags that contradict the checkpoint, failed writes, a deleted run directory, overlapping splits.

Tiny synthetic data (16-32 px images, ResNet-18; STS-B with d_hid 16), so each case takes seconds.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from folder_modules import age_program, load_folder_module

from ranksim.harness.data.synthetic import make_synthetic_age_dataset

REPO = Path(__file__).resolve().parents[1]
STSB_DIR = REPO / "sts-b-dir"
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

stsb_synthetic = load_folder_module("stsb_synthetic_reliability", STSB_DIR / "data" / "make_synthetic_sts_b.py")


@pytest.fixture(scope="module")
def age_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("age_reliability")
    make_synthetic_age_dataset(root, n_train=40, n_val=12, n_test=12, img_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def stsb_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stsb_reliability")
    data_dir = stsb_synthetic.write_synthetic_splits(root / "STS-B", seed=0)
    glove = stsb_synthetic.write_synthetic_glove(root / "glove.txt", 8, seed=0)
    return {"data_dir": data_dir, "glove": glove}


def age_args(data, store, name, *extra, img_size=16, epochs=2):
    return ["--data_dir", str(data), "--img_size", str(img_size), "--model", "resnet18", "--batch_size", "16",
            "--workers", "0", "--store_root", str(store), "--store_name", name, "--epoch", str(epochs), *extra]


def stsb_args(data, store, name, *extra):
    return ["--data_dir", str(data["data_dir"]), "--word_embs_file", str(data["glove"]), "--d_word", "8",
            "--d_hid", "16", "--val_interval", "5", "--no_progress", "--store_root", str(store),
            "--store_name", name, *extra]


def run_age(args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO / "agedb-dir", env=ENV,
                          capture_output=True, text=True, timeout=600)


def last_stderr_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("program", ["age", "stsb"])
def test_sigterm_mid_training_names_the_resume_command_and_exits_143(program, age_data, stsb_data, tmp_path):
    """SLURM and Kubernetes send SIGTERM before killing a job: handled like Ctrl-C."""
    store = tmp_path / "runs"
    if program == "age":
        cmd, cwd = ["train.py", *age_args(age_data, store, "run", epochs=500)], REPO / "agedb-dir"
    else:
        cmd, cwd = ["train.py", *stsb_args(stsb_data, store, "run", "--max_vals", "1000")], STSB_DIR
    proc = subprocess.Popen([sys.executable, *cmd], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    checkpoint = store / "run" / "ckpt.pth.tar"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line == f"terminated (SIGTERM); resume with --resume {checkpoint}"
    assert (store / "run" / "training.log").read_text().splitlines()[-1].endswith(line)


# ------------------------------------------------------------------------- settings from the checkpoint


@pytest.fixture(scope="module")
def run_32px(age_data, tmp_path_factory):
    store = tmp_path_factory.mktemp("runs_32px")
    proc = run_age(age_args(age_data, store, "run", img_size=32, epochs=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return store / "run"


def results_of(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


def test_evaluate_takes_img_size_from_the_checkpoint(run_32px, age_data, tmp_path):
    """A 32-px checkpoint evaluated without --img_size (default 224) used to be tested on 224-px images."""
    argv = ["--data_dir", str(age_data), "--workers", "0", "--store_root", str(tmp_path), "--store_name", "eval",
            "--evaluate", "--resume", str(run_32px / "ckpt.best.pth.tar")]  # no --model, no --img_size
    proc = run_age(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = results_of(tmp_path / "eval")
    assert evaluated["args"]["img_size"] == 32 and evaluated["args"]["model"] == "resnet18"
    assert evaluated["metrics"] == results_of(run_32px)["metrics"]


def test_a_flag_contradicting_the_checkpoint_is_refused(run_32px, age_data, tmp_path):
    argv = ["--data_dir", str(age_data), "--workers", "0", "--store_root", str(tmp_path / "runs"),
            "--evaluate", "--resume", str(run_32px / "ckpt.best.pth.tar"), "--img_size", "64"]
    proc = run_age(argv)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: --img_size 64: --resume {run_32px / 'ckpt.best.pth.tar'} was trained "
                                   "with --img_size 32; leave --img_size out (it is taken from the checkpoint) or "
                                   "pass --img_size 32")
    assert not (tmp_path / "runs").exists()
    # the same value given explicitly is fine (checked in-process: flags only)
    from ranksim.harness.age_flags import adopt_checkpoint_settings, build_parser

    AGEDB_DEFAULTS = age_program().DEFAULTS
    from ranksim.harness.flags import explicit_flags
    argv[-1] = "32"
    args = build_parser(AGEDB_DEFAULTS).parse_args(argv)
    adopt_checkpoint_settings(args, explicit_flags(lambda: build_parser(AGEDB_DEFAULTS), argv))
    assert (args.img_size, args.model, args.bucket_start) == (32, "resnet18", 3)


def run_stsb(args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=STSB_DIR, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_stsb_evaluate_takes_the_model_sizes_from_the_checkpoint(stsb_data, tmp_path):
    proc = run_stsb(stsb_args(stsb_data, tmp_path, "run", "--max_vals", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = tmp_path / "run" / "ckpt.best.pth.tar"
    base = ["--data_dir", str(stsb_data["data_dir"]), "--no_progress", "--store_root", str(tmp_path),
            "--evaluate", "--eval_model", str(best)]
    proc = run_stsb(base + ["--store_name", "eval"])  # no --d_hid 16 / --d_word 8: the defaults 1500 / 300
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results_of(tmp_path / "eval")["metrics"] == results_of(tmp_path / "run")["metrics"]
    proc = run_stsb(base + ["--store_name", "refused", "--d_hid", "32"])
    assert proc.returncode == 2 and last_stderr_line(proc).startswith(
        f"error: --d_hid 32: --eval_model {best} was trained with --d_hid 16; leave --d_hid out")
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------------------------------ data checks


def test_age_train_test_overlap_is_warned_about():
    import pandas as pd

    from ranksim.harness.data.age import AgeCSVDataset

    table = pd.DataFrame({"age": [20, 30, 40, 50, 60], "split": ["train", "train", "val", "test", "test"],
                          "path": ["a.jpg", "b.jpg", "c.jpg", "b.jpg", "e.jpg"]})
    assert AgeCSVDataset.overlap_warning(table).startswith(
        "warning: 1 test image path(s) also appear in the train split (e.g. b.jpg)")
    table.loc[2, "path"] = "a.jpg"
    assert "1 val, 1 test image path(s)" in AgeCSVDataset.overlap_warning(table)
    assert AgeCSVDataset.overlap_warning(table[table["path"] != "b.jpg"].assign(
        path=["a.jpg", "c.jpg", "e.jpg"])) is None


# ----------------------------------------------------------------------------------------- failed writes


def test_store_root_that_cannot_be_created_is_one_line(age_data, tmp_path):
    """Tests run as root, which chmod does not stop: a regular file in the path fails for everyone."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    proc = run_age(age_args(age_data, blocker / "runs", "run", epochs=1))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: cannot write {blocker / 'runs' / 'run'}: Not a directory; free disk "
                                   "space or pass a writable location (e.g. --store_root)")


def test_a_checkpoint_write_that_fails_keeps_the_previous_one(tmp_path):
    """A real failing write: RLIMIT_FSIZE makes the kernel refuse bytes past 1 MiB (EFBIG, like a full disk)."""
    import resource

    import torch

    from ranksim.harness.checkpoint import load_checkpoint, save_checkpoint
    from ranksim.harness.cli import UserError

    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(UserError) as exc:
            save_checkpoint({"epoch": 2, "w": torch.zeros(1 << 20)}, path)  # 4 MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert str(exc.value).startswith(f"cannot write {path}: File too large;")
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth.tar"]  # no temp file left


def test_full_disk_while_writing_results_is_one_line(tmp_path, monkeypatch):
    """ENOSPC injected into the file write of results.json (a full disk cannot be made without mounting)."""
    import errno
    import io

    from ranksim.harness.cli import UserError
    from ranksim.harness.run import write_results_json

    real_fdopen = os.fdopen

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode, buffering=0)))
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'results.json'}: No space left on device;"):
        write_results_json(tmp_path, {"mae": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_run_directory_deleted_mid_run_is_recreated_and_said_once(tmp_path, capsys):
    import shutil

    from ranksim.harness.run import RunLogger

    run_dir = tmp_path / "run"
    with RunLogger(run_dir) as logger:
        logger.info("epoch 1")
        shutil.rmtree(run_dir)
        logger.info("epoch 2")
        logger.info("epoch 3")
    err = capsys.readouterr().err
    assert err.count("was deleted during the run") == 1 and str(run_dir / "training.log") in err
    lines = (run_dir / "training.log").read_text().splitlines()
    assert len(lines) == 3 and "was deleted during the run" in lines[0]
    assert lines[1].endswith("| epoch 2") and lines[2].endswith("| epoch 3")


# ------------------------------------------------------------------------------------ run directory names


def test_run_directory_names_follow_one_short_rule(run_32px, age_data, tmp_path):
    """A finished run continued with --resume gets '<name>_2' (as STS-B did); evaluations 'eval_<40 chars>_<time>'."""
    import re

    from ranksim.harness.run import evaluation_run_name

    long_dir = tmp_path / ("agedb_resnet50_sqrt_inv_lds_gau_9_1.0_ranksim_100.0_2.0_adam_l1_0.00025_64_" * 2)
    name = evaluation_run_name(long_dir / "ckpt.best.pth.tar")
    assert re.fullmatch(r"eval_agedb_resnet50_sqrt_inv_lds_gau_9_1.0_ra_\d{8}-\d{6}", name), name
    proc = run_age(["--data_dir", str(age_data), "--workers", "0", "--store_root", str(run_32px.parent),
                    "--epoch", "2", "--resume", str(run_32px / "ckpt.pth.tar")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_32px.parent / "run_2" / "results.json").is_file()
