"""A run records its data folder absolute (and as typed), so the tools that read a run find the data from
another working directory: figures/make_figures.py, --resume, --evaluate (age programs and STS-B). A data
folder moved since the run still gets a one-line error naming the flag."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from folder_modules import age_program, load_folder_module

from ranksim.harness.cli import UserError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.run import resolve_data_dir

REPO = Path(__file__).resolve().parents[1]
age = age_program()


def load_figures():
    spec = importlib.util.spec_from_file_location("make_figures_data_dir", REPO / "figures" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: these tiny models run faster on one thread
    yield
    torch.set_num_threads(threads)


def tiny_age_args(*extra):
    return ["--img_size", "8", "--model", "resnet18", "--batch_size", "8", "--workers", "0", *extra]


def test_resolve_data_dir_keeps_the_typed_form_and_takes_a_checkpoints_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    args = type("Args", (), {"data_dir": "./data"})()
    resolve_data_dir(args)
    assert (args.data_dir, args.data_dir_as_typed) == (str(tmp_path / "data"), "./data")
    recorded = {"data_dir": str(tmp_path / "data"), "data_dir_as_typed": "./data"}
    other = type("Args", (), {"data_dir": "./data"})()
    monkeypatch.chdir(tmp_path.parent)
    resolve_data_dir(other, set(), recorded, "--resume x")  # not on the command line: the recorded folder
    assert (other.data_dir, other.data_dir_as_typed) == (str(tmp_path / "data"), "./data")
    given = type("Args", (), {"data_dir": "elsewhere"})()
    resolve_data_dir(given, {"data_dir"}, recorded, "--resume x")  # given: it wins
    assert given.data_dir == str(tmp_path.parent / "elsewhere")


def test_an_age_run_is_read_from_another_working_directory(tmp_path, monkeypatch):
    bench, elsewhere = tmp_path / "agedb-dir", tmp_path / "elsewhere"
    make_synthetic_age_dataset(bench / "data", n_train=16, n_val=8, n_test=8, img_size=8, seed=0)
    elsewhere.mkdir()
    monkeypatch.chdir(bench)
    age.main(tiny_age_args("--data_dir", "./data", "--store_root", str(tmp_path / "runs"), "--store_name", "run",
                           "--epoch", "1"))
    run = tmp_path / "runs" / "run"
    recorded = json.loads((run / "results.json").read_text())["args"]
    assert (recorded["data_dir"], recorded["data_dir_as_typed"]) == (str(bench / "data"), "./data")
    assert torch.load(run / "ckpt.pth.tar", weights_only=False)["args"]["data_dir"] == str(bench / "data")

    monkeypatch.chdir(elsewhere)  # ./data does not exist here
    age.main(tiny_age_args("--resume", str(run / "ckpt.pth.tar"), "--epoch", "2", "--store_root", "runs"))
    assert (elsewhere / "runs" / "run" / "results.json").is_file()
    evaluated = age.main(tiny_age_args("--evaluate", "--resume", str(run / "ckpt.best.pth.tar"), "--store_root", "runs"))
    assert evaluated["args"]["data_dir"] == str(bench / "data")
    figs = load_figures()
    features, labels, _ = figs.batch_features(run, None, batch_size=4)
    assert features.shape[0] == labels.shape[0] == 4

    (bench / "data").rename(bench / "moved")  # the data moved since: one line naming the flag
    message = (f"its data folder (--data_dir ./data when trained) is not at {bench / 'data'}; pass --data_dir "
               "FOLDER")
    with pytest.raises(UserError, match=r"^--resume .*ckpt\.best\.pth\.tar: " + message.replace("(", r"\(").replace(")", r"\)")):
        age.main(tiny_age_args("--evaluate", "--resume", str(run / "ckpt.best.pth.tar"), "--store_root", "runs"))
    with pytest.raises(UserError, match=r"its data folder \(--data_dir \./data when trained\) is not at "):
        figs.batch_features(run, None, batch_size=4)
    # Told where the data is now, both work again.
    age.main(tiny_age_args("--evaluate", "--resume", str(run / "ckpt.best.pth.tar"), "--store_root", "runs",
                           "--data_dir", str(bench / "moved")))
    assert figs.batch_features(run, str(bench / "moved"), batch_size=4)[0].shape[0] == 4


def test_an_stsb_checkpoint_is_evaluated_from_another_working_directory(tmp_path, monkeypatch):
    stsb_train = load_folder_module("stsb_train_data_dir", REPO / "sts-b-dir" / "train.py")
    synthetic = load_folder_module("stsb_synthetic_data_dir", REPO / "sts-b-dir" / "data" / "make_synthetic_sts_b.py")
    bench, elsewhere = tmp_path / "sts-b-dir", tmp_path / "elsewhere"
    synthetic.write_synthetic_splits(bench / "glue" / "STS-B", seed=0)
    synthetic.write_synthetic_glove(bench / "glove.txt", 8, seed=0)
    elsewhere.mkdir()
    monkeypatch.chdir(bench)
    common = ["--d_word", "8", "--d_hid", "8", "--no_progress", "--store_root", str(tmp_path / "runs")]
    stsb_train.main(common + ["--data_dir", "glue/STS-B", "--word_embs_file", "glove.txt", "--val_interval", "3",
                              "--max_vals", "1", "--store_name", "run"])
    monkeypatch.chdir(elsewhere)
    best = tmp_path / "runs" / "run" / "ckpt.best.pth.tar"
    results = stsb_train.main(common + ["--evaluate", "--eval_model", str(best), "--store_name", "eval"])
    assert (results["args"]["data_dir"], results["args"]["data_dir_as_typed"]) == (str(bench / "glue" / "STS-B"),
                                                                                    "glue/STS-B")
