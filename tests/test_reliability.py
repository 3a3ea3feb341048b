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
from folder_modules import load_folder_module

from ranksim.synthetic import make_synthetic_age_dataset

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
