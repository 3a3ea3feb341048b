"""Mistakes a user makes on the command line, found by using the programs as a researcher would.

Each case must end with ONE line ``error: ...`` that names the flag/file/value and how to fix it,
exit status 2, no traceback, and no run directory left behind. Everything here fails before any
training step, so the tests take seconds (tiny synthetic STS-B data, d_hid 16).
"""
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from folder_modules import age_program, load_folder_module

from ranksim.harness.age_flags import build_parser
from ranksim.harness.cli import run_cli
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.stsb_flags import build_parser as stsb_parser

AGEDB_DEFAULTS = age_program().DEFAULTS
age_main = age_program().main  # agedb-dir/train.py in this process

ROOT = Path(__file__).resolve().parents[1]
STSB_DIR = ROOT / "sts-b-dir"
D_WORD = 8

stsb_train = load_folder_module("stsb_train_journeys", STSB_DIR / "train.py")
synthetic = load_folder_module("stsb_synthetic_journeys", STSB_DIR / "data" / "make_synthetic_sts_b.py")


@pytest.fixture(scope="module")
def stsb(tmp_path_factory):
    root = tmp_path_factory.mktemp("stsb_journeys")
    data_dir = synthetic.write_synthetic_splits(root / "STS-B", seed=0)
    glove = synthetic.write_synthetic_glove(root / "glove.txt", D_WORD, seed=0)
    return {"data_dir": data_dir, "glove": glove}


def stsb_args(stsb, runs, *extra):
    return ["--data_dir", str(stsb["data_dir"]), "--word_embs_file", str(stsb["glove"]), "--d_word", str(D_WORD),
            "--d_hid", "16", "--val_interval", "5", "--max_vals", "1", "--no_progress",
            "--store_root", str(runs)] + list(extra)


def one_line_user_error(main_fn, argv, capsys) -> str:
    """Run ``main_fn(argv)`` as the script's __main__ does; return the single stderr line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_fn, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, names", [
    (["--reweight", "inverse", "--lds", "--lds_ks", "4"], "--lds_ks 4"),
    (["--reweight", "inverse", "--lds", "--lds_sigma", "0"], "--lds_sigma 0"),
    (["--fds", "--fds_ks", "4"], "--fds_ks 4"),
    (["--fds", "--fds_sigma", "0"], "--fds_sigma 0"),
    (["--fds", "--bucket_start", "60"], "--bucket_start 60"),
    (["--fds", "--fds_mmt", "1.5"], "--fds_mmt 1.5"),
    (["--regularization_weight", "1", "--interpolation_lambda", "0"], "--interpolation_lambda 0"),
    (["--loss", "huber", "--huber_beta", "0"], "--huber_beta 0"),
])
def test_stsb_impossible_method_flags_give_one_line(stsb, tmp_path, capsys, extra, names):
    """These used to end in a ValueError traceback, after a run directory had been made."""
    runs = tmp_path / "runs"
    err = one_line_user_error(stsb_train.main, stsb_args(stsb, runs, *extra), capsys)
    assert names in err
    assert not runs.exists()


def test_stsb_checkpoint_of_another_size_is_refused_before_a_run_directory(stsb, tmp_path, capsys):
    """--evaluate of a d_hid 16 model with --d_hid 32: the key list, and no half-made run directory."""
    args = stsb_parser().parse_args(stsb_args(stsb, tmp_path / "unused"))
    vocab = stsb_train.build_vocab(stsb_train.load_splits(args.data_dir, args.max_seq_len), args.max_word_v_size)
    checkpoint = tmp_path / "model_state_best.th"
    torch.save(stsb_train.build_model(args, vocab, None, fds=False).state_dict(), checkpoint)

    runs = tmp_path / "runs"
    argv = stsb_args(stsb, runs, "--d_hid", "32", "--evaluate", "--eval_model", str(checkpoint))
    err = one_line_user_error(stsb_train.main, argv, capsys)
    assert str(checkpoint) in err and "shape mismatches" in err
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("make_parser, typo, suggestion", [
    (lambda: build_parser(AGEDB_DEFAULTS), "--regularisation_weight", "--regularization_weight"),
    (stsb_parser, "--interpolation_lamda", "--interpolation_lambda"),
])
def test_flag_typo_is_one_line_with_a_suggestion(capsys, make_parser, typo, suggestion):
    """argparse printed a multi-line usage block; a typo now gets one line naming the closest flag."""
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args([typo, "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert typo in err and f"did you mean {suggestion}" in err and "-h" in err


def test_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(AGEDB_DEFAULTS).parse_args(["--loss", "l2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --loss: invalid choice: 'l2'") and "\n" not in err, err


def test_data_the_readmes_create_is_git_ignored(tmp_path):
    """Datasets and the README's synthetic folders must never show up in `git status` (or be committed)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    created = ["agedb-dir/data/AgeDB/11684_MireilleDarc_59_f.jpg", "agedb-dir/synthetic/images/train_000000_52.jpg",
               "agedb-dir/synthetic/agedb.csv", "imdb-wiki-dir/data/imdb_crop.tar",
               "imdb-wiki-dir/data/imdb_crop.tar.part", "imdb-wiki-dir/data/imdb_crop/00/nm0000100_rm1.jpg",
               "imdb-wiki-dir/data/wiki_crop/wiki.mat", "sts-b-dir/synthetic/STS-B/train_new.tsv",
               "sts-b-dir/glove/glove.840B.300d.zip.part"]
    kept = ["agedb-dir/data/README.md", "ranksim/harness/data/synthetic.py", "sts-b-dir/data/make_synthetic_sts_b.py"]
    result = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", *created, *kept],
                            capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(created)


def test_stsb_refuses_abbreviated_flags(capsys):
    """`--regularization 3e-4` used to set --regularization_weight silently; the age programs refuse it too."""
    with pytest.raises(SystemExit) as exit_info:
        stsb_parser().parse_args(["--regularization", "3e-4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "--regularization" in err and "did you mean --regularization_weight" in err


@pytest.mark.parametrize("flag, value", [("--lr", "0"), ("--lr", "-0.001"), ("--lr", "nan"), ("--batch_size", "0")])
def test_stsb_non_positive_optimisation_flags_are_refused(stsb, tmp_path, capsys, flag, value):
    """`--lr 0` used to train a model that never changes; the age program refused it already."""
    runs = tmp_path / "runs"
    err = one_line_user_error(stsb_train.main, stsb_args(stsb, runs, flag, value), capsys)
    assert f"{flag} {float(value) if flag == '--lr' else value}" in err and "must be > 0" in err
    assert not runs.exists()


def agedb_checkpoint_args(tmp_path, flag, path):
    args = ["--data_dir", str(tmp_path), "--store_root", str(tmp_path / "runs"), flag, str(path)]
    return args + (["--retrain_fc"] if flag == "--pretrained" else [])


@pytest.mark.parametrize("program, flag, suggested", [
    ("age", "--resume", "ckpt.pth.tar"), ("age", "--pretrained", "ckpt.best.pth.tar"),
    ("sts-b", "--resume", "ckpt.pth.tar"), ("sts-b", "--eval_model", "ckpt.best.pth.tar"),
    ("sts-b", "--pretrained", "ckpt.best.pth.tar"),
])
def test_checkpoint_flag_given_a_run_directory_suggests_the_file(stsb, tmp_path, capsys, program, flag, suggested):
    """`--resume checkpoint/<run>` used to say "checkpoint file not found" although the path exists."""
    run_dir = tmp_path / "some_run"
    run_dir.mkdir()
    if program == "age":
        err = one_line_user_error(age_main, agedb_checkpoint_args(tmp_path, flag, run_dir), capsys)
    else:
        extra = {"--eval_model": ["--evaluate"], "--pretrained": ["--retrain_fc"]}.get(flag, [])
        err = one_line_user_error(stsb_train.main, stsb_args(stsb, tmp_path / "runs", flag, str(run_dir), *extra),
                                  capsys)
    assert f"{flag} {run_dir}: is a directory" in err and f"{run_dir / suggested}" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("bad", ["features", "targets"])
def test_regularizer_names_a_numpy_argument(bad):
    """NumPy targets used to end in "AttributeError: 'numpy.ndarray' object has no attribute 'dim'"."""
    from ranksim import batchwise_ranking_regularizer

    features, targets = torch.randn(4, 3), torch.arange(4.0)
    kwargs = {"features": features, "targets": targets, bad: {"features": features, "targets": targets}[bad].numpy()}
    with pytest.raises(TypeError, match=f"{bad}: expected a torch.Tensor, got numpy.ndarray"):
        batchwise_ranking_regularizer(interp_strength_lambda=2.0, **kwargs)


def test_regularizer_with_nan_features_is_finite_but_its_gradient_is_nan():
    """What the docstring promises: a NaN feature does not show in the loss value, only in the gradient."""
    from ranksim import batchwise_ranking_regularizer

    features = torch.randn(6, 3)
    features[2, 1] = float("nan")
    features.requires_grad_(True)
    loss = batchwise_ranking_regularizer(features, torch.arange(6.0), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isnan(features.grad).any()


DATA_SCRIPTS = ["agedb-dir/data/create_agedb.py", "agedb-dir/data/download_split.py",
                "imdb-wiki-dir/data/create_imdb_wiki.py", "imdb-wiki-dir/data/download_imdb_wiki.py",
                "imdb-wiki-dir/data/download_split.py", "sts-b-dir/data/create_sts_b_dir.py",
                "sts-b-dir/data/download_sts_b_dir.py", "sts-b-dir/data/make_synthetic_sts_b.py",
                "sts-b-dir/data/summarize_split.py", "sts-b-dir/glove/download_glove.py"]


@pytest.mark.parametrize("script", DATA_SCRIPTS)
def test_data_script_flag_typo_is_one_line(capsys, script):
    """The data scripts printed argparse's multi-line usage block on a typo, unlike train.py."""
    module = load_folder_module("journeys_" + script.replace("/", "_").replace("-", "_")[:-3], ROOT / script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--data_dirr", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unrecognized arguments: --data_dirr") and "\n" not in err, err


def test_make_synthetic_sts_b_help_describes_every_flag(capsys):
    module = load_folder_module("journeys_make_synthetic_help", STSB_DIR / "data" / "make_synthetic_sts_b.py")
    with pytest.raises(SystemExit):
        module.main(["-h"])
    usage = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--out_dir", "./synthetic/STS-B"), ("--glove", "./synthetic/glove.txt"),
                          ("--d_word", "8"), ("--seed", "0")]:
        described = re.search(rf"{flag} [A-Z_]+ (.+?) \(default: {re.escape(default)}\)", usage)
        assert described and len(described.group(1)) > 10, (flag, usage)  # a help text, then the default


def last_error_line(main_fn, argv, capsys) -> str:
    """Like one_line_user_error for a run that got as far as training: progress bars (stderr) may come
    first, the last line is the error."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_fn, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1].strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture()
def tiny_agedb(tmp_path):
    """A tiny synthetic AgeDB (16 px) and the flags of a one-epoch ResNet-18 run on it."""
    data = tmp_path / "data"
    make_synthetic_age_dataset(data, n_train=24, n_val=8, n_test=8, img_size=16, seed=0)
    table = pd.read_csv(data / "agedb.csv")
    args = ["--data_dir", str(data), "--img_size", "16", "--model", "resnet18", "--batch_size", "8",
            "--workers", "0", "--store_root", str(tmp_path / "runs"), "--store_name", "run", "--epoch", "1"]
    return data, table, args


def test_age_missing_images_are_found_before_a_run_directory(tiny_agedb, capsys):
    """A missing image used to stop training mid-epoch, leaving a run directory with only training.log."""
    data, table, args = tiny_agedb
    for path in table["path"].iloc[[5, 30]]:  # one train image, one test image
        (data / path).unlink()
    err = one_line_user_error(age_main, args, capsys)
    first_missing = data / table["path"].iloc[5]
    assert f"{first_missing}: image listed in agedb.csv not found" in err and "2 of 40 images" in err, err
    assert not (Path(args[args.index("--store_root") + 1])).exists()


def test_age_corrupt_image_error_is_also_in_training_log(tiny_agedb, capsys):
    """An unreadable (but present) image is found while training; its error line goes to training.log too."""
    data, table, args = tiny_agedb
    corrupt = data / table["path"].iloc[3]
    corrupt.write_bytes(b"not a jpeg")
    err = last_error_line(age_main, args, capsys)
    assert f"{corrupt}: cannot read image" in err
    log = (Path(args[args.index("--store_root") + 1]) / "run" / "training.log").read_text()
    assert log.splitlines()[-1].endswith(err)


def interrupted_line(main_fn, argv, capsys) -> str:
    """Run as __main__ does when Ctrl-C arrives; return the last stderr line (exit status 130)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_fn, argv)
    assert exit_info.value.code == 130
    return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1].strip()


def test_age_ctrl_c_names_the_resume_command(tiny_agedb, capsys, monkeypatch):
    """Ctrl-C in the second epoch: the line says how to continue from the first epoch's checkpoint."""
    age_train = age_program()

    data, table, args = tiny_agedb
    real_train_one_epoch = age_train.train_one_epoch

    def train_one_epoch(*a, **kw):
        if a[4] == 1:  # the 0-based epoch
            raise KeyboardInterrupt
        return real_train_one_epoch(*a, **kw)

    monkeypatch.setattr(age_train, "train_one_epoch", train_one_epoch)
    run_dir = Path(args[args.index("--store_root") + 1]) / "run"
    line = interrupted_line(age_main, [*args, "--epoch", "2"], capsys)
    assert line == f"interrupted (Ctrl-C); resume with --resume {run_dir / 'ckpt.pth.tar'}"
    assert (run_dir / "training.log").read_text().splitlines()[-1].endswith(line)


def test_stsb_ctrl_c_names_the_resume_command(stsb, tmp_path, capsys, monkeypatch):
    real_train_step, steps = stsb_train.train_step, []

    def train_step(*a, **kw):
        steps.append(1)
        if len(steps) == 8:  # after the first check (5 steps) wrote ckpt.pth.tar
            raise KeyboardInterrupt
        return real_train_step(*a, **kw)

    monkeypatch.setattr(stsb_train, "train_step", train_step)
    runs = tmp_path / "runs"
    line = interrupted_line(stsb_train.main, stsb_args(stsb, runs, "--max_vals", "3", "--store_name", "run"), capsys)
    assert line == f"interrupted (Ctrl-C); resume with --resume {runs / 'run' / 'ckpt.pth.tar'}"


def test_stsb_logs_1_based_epochs_while_checkpoints_keep_completed_epochs(stsb, tmp_path):
    """The age logs say "epoch 1/E" for the first epoch; STS-B said "epoch 0". Checkpoint 'epoch' (completed
    passes, what --resume reads) must not change."""
    runs = tmp_path / "runs"
    stsb_train.main(stsb_args(stsb, runs, "--store_name", "run"))  # one check of 5 steps: inside epoch 1
    run_dir = runs / "run"
    check_line = next(line for line in (run_dir / "training.log").read_text().splitlines() if "check 1/1" in line)
    assert "| epoch 1 |" in check_line, check_line
    assert torch.load(run_dir / "ckpt.pth.tar", weights_only=True)["epoch"] == 0
