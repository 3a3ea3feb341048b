"""Out of GPU memory in any phase of the three programs: one line on stderr, exit status 3, the same line
in training.log, the --resume command once a checkpoint exists, and no half-written file.

On CPU the error is raised by monkeypatching a function each phase calls to raise torch.OutOfMemoryError
(with PyTorch's own wording, so the 'tried to allocate' detail is parsed as on a GPU).
"""
from pathlib import Path

import pytest
import torch
from folder_modules import age_program, load_folder_module

from ranksim.harness import memory
from ranksim.harness.cli import run_cli
from ranksim.harness.data.synthetic import make_synthetic_age_dataset

REPO = Path(__file__).resolve().parents[1]
TORCH_TEXT = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
              "1.25 GiB is free. Including non-PyTorch memory, this process has 138.5 GiB memory in use.")
age = age_program()


def raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(TORCH_TEXT)


def exit_of(main, argv, capsys):
    """(exit status, stderr) of ``run_cli(main, argv)`` in this process."""
    with pytest.raises(SystemExit) as stop:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\n" not in err.rstrip("\n")
    return stop.value.code, err.split("\r")[-1]  # after the progress bars, which tqdm clears with '\r'


@pytest.fixture(scope="module")
def age_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oom_age")
    make_synthetic_age_dataset(root, n_train=24, n_val=8, n_test=8, img_size=8, seed=0)
    return root


def age_args(data, store, epochs=1):
    return ["--data_dir", str(data), "--img_size", "8", "--model", "resnet18", "--batch_size", "8", "--workers", "0",
            "--store_root", str(store), "--store_name", "run", "--epoch", str(epochs), "--lr", "1e-3"]


def patch_predict(monkeypatch, split, call):
    """Make the ``call``-th prediction pass over ``split`` ('val' / 'test') run out of memory."""
    real, calls = age.predict_split, []

    def predict_split(model, loader, ctx, options, show, desc):
        if desc == split:
            calls.append(desc)
            if len(calls) == call:
                raise_oom()
        return real(model, loader, ctx, options, show, desc)
    monkeypatch.setattr(age, "predict_split", predict_split)


def test_age_out_of_memory_before_the_run_is_one_line_with_the_general_remedies(age_data, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setattr(age, "build_model", raise_oom)
    status, err = exit_of(age.main, age_args(age_data, tmp_path), capsys)
    assert status == 3
    assert err == (f"error: out of GPU memory in {memory.BEFORE_THE_RUN} (PyTorch: tried to allocate 2.00 GiB, 1.25 GiB "
                   "free of 139.80 GiB); try --amp bf16, or a smaller --batch_size with --lr scaled by the same factor, "
                   "or torchrun --nproc_per_node N over more GPUs\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("phase, patch, flags", [
    ("epoch 1, training step 1", lambda mp: mp.setattr(age, "checked_loss", raise_oom), []),
    ("epoch 1, FDS statistics pass", lambda mp: mp.setattr(age, "update_fds_statistics", raise_oom), ["--fds"]),
    ("epoch 1, validation", lambda mp: patch_predict(mp, "val", 1), []),
])
def test_age_program_out_of_memory_is_one_line_with_the_remedies(phase, patch, flags, age_data, tmp_path,
                                                                 monkeypatch, capsys):
    patch(monkeypatch)
    status, err = exit_of(age.main, age_args(age_data, tmp_path) + flags, capsys)
    assert status == memory.OUT_OF_MEMORY_EXIT == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: out of memory in {phase} (batch 8 on 1 process, 8x8 images, fp32, contiguous; "
                          "PyTorch: tried to allocate 2.00 GiB, 1.25 GiB free of 139.80 GiB); try --amp bf16")
    # Half the batch, with the learning rate scaled by the same factor.
    assert "--channels_last, or --batch_size 4 --lr 0.0005 (scale --lr with the batch" in err
    assert "torchrun --nproc_per_node N with N > 1 GPUs" in err
    assert "--resume" not in err  # no checkpoint was written before the first validation
    assert (tmp_path / "run" / "training.log").read_text().splitlines()[-1].endswith(err.strip())
    assert not (tmp_path / "run" / "ckpt.pth.tar").exists()


def test_age_out_of_memory_after_a_checkpoint_names_the_resume_command(age_data, tmp_path, monkeypatch, capsys):
    patch_predict(monkeypatch, "val", 2)  # epoch 1 completes and is saved; epoch 2's validation runs out
    status, err = exit_of(age.main, age_args(age_data, tmp_path, epochs=2) + ["--amp", "bf16"], capsys)
    ckpt = tmp_path / "run" / "ckpt.pth.tar"
    assert status == 3 and err.count("\n") == 1
    assert err.startswith("error: out of memory in epoch 2, validation (batch 8 on 1 process, 8x8 images, bf16, ")
    assert "--amp bf16" not in err.split("; try ", 1)[1].split("; then", 1)[0]  # already on: not a remedy
    assert err.rstrip().endswith(f"; then resume with --resume {ckpt} and the changed flags")
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1  # the checkpoint is whole
    assert not (tmp_path / "run" / "results.json").exists()
    # The command it names works: the run finishes from there.
    monkeypatch.undo()
    age.main(age_args(age_data, tmp_path, epochs=2) + ["--resume", str(ckpt)])
    assert (tmp_path / "run" / "results.json").is_file()


def test_the_message_of_the_papers_agedb_setting_and_what_counts_as_out_of_memory():
    flags = type("Flags", (), {"batch_size": 64, "lr": 2.5e-4, "amp": "", "img_size": 224, "channels_last": False})
    report = memory.MemoryReport.from_flags(flags, "cuda", world_size=2, rank=1)
    assert report.message(torch.OutOfMemoryError(TORCH_TEXT), "test", "runs/x/ckpt.pth.tar") == (
        "out of GPU memory in test (batch 64 on 2 processes (this is rank 1), 224x224 images, fp32, contiguous; "
        "PyTorch: tried to allocate 2.00 GiB, 1.25 GiB free of 139.80 GiB); try --amp bf16 (activations in 16 bits), "
        "or --channels_last, or --batch_size 32 --lr 0.000125 (scale --lr with the batch: nothing here scales it for "
        "you; the paper pairs batch 64 with lr 2.5e-4 and 256 with 1e-3), or torchrun --nproc_per_node N with N > 2 "
        "GPUs (--batch_size stays the global batch, each GPU holds 1/N of it); then resume with --resume "
        "runs/x/ckpt.pth.tar and the changed flags")
    with pytest.raises(ValueError):  # a bug keeps its traceback
        run_cli(lambda: (_ for _ in ()).throw(ValueError("a bug")))
    assert memory.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))


stsb_train = load_folder_module("stsb_train_oom", REPO / "sts-b-dir" / "train.py")
stsb_synthetic = load_folder_module("stsb_synthetic_oom", REPO / "sts-b-dir" / "data" / "make_synthetic_sts_b.py")


@pytest.fixture(scope="module")
def stsb_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oom_stsb")
    return (stsb_synthetic.write_synthetic_splits(root / "STS-B", seed=0),
            stsb_synthetic.write_synthetic_glove(root / "glove.txt", 8, seed=0))


def stsb_args(data, store):
    return ["--data_dir", str(data[0]), "--word_embs_file", str(data[1]), "--d_word", "8", "--d_hid", "8",
            "--val_interval", "3", "--max_vals", "2", "--store_root", str(store), "--store_name", "run",
            "--no_progress"]


def test_stsb_out_of_memory_in_the_step_and_after_a_check(stsb_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stsb_train, "checked_loss", raise_oom)
    status, err = exit_of(stsb_train.main, stsb_args(stsb_data, tmp_path / "a"), capsys)
    assert status == 3 and err.count("\n") == 1
    assert err.startswith("error: out of memory in iteration 1 (epoch 1), training step (batch 16 on 1 process, fp32;")
    assert "--channels_last" not in err and "--resume" not in err
    monkeypatch.undo()

    real, calls = stsb_train.predict_scores, []

    def predict_scores(*args):
        calls.append(1)
        if len(calls) == 2:
            raise_oom()
        return real(*args)
    monkeypatch.setattr(stsb_train, "predict_scores", predict_scores)
    status, err = exit_of(stsb_train.main, stsb_args(stsb_data, tmp_path / "b"), capsys)
    ckpt = tmp_path / "b" / "run" / "ckpt.pth.tar"
    assert status == 3 and err.startswith("error: out of memory in validation check 2 ")
    assert err.rstrip().endswith(f"then resume with --resume {ckpt} and the changed flags")
    assert (tmp_path / "b" / "run" / "training.log").read_text().splitlines()[-1].endswith(err.strip())
