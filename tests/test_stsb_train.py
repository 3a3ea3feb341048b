"""End-to-end STS-B-DIR runs of sts-b-dir/train.py on a tiny synthetic data set (d_hid 16, 30-40 iterations).

One run goes through the real script as a subprocess; the others call its ``main`` in this process
(the script's ``__main__`` is exactly ``run_cli(main)``), which saves the 5-10 s interpreter and
torch start-up per run on the 2-core test machine.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_modules import load_folder_module

from ranksim.harness.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
STSB_DIR = ROOT / "sts-b-dir"
D_WORD = 8
MANY = [0, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 49]
MEDIUM = [2, 4, 6, 8, 27, 35, 37]

stsb_train = load_folder_module("stsb_train_e2e", STSB_DIR / "train.py")
synthetic = load_folder_module("stsb_synthetic", STSB_DIR / "data" / "make_synthetic_sts_b.py")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: tiny LSTMs run far faster on one thread
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stsb")
    data_dir = synthetic.write_synthetic_splits(root / "STS-B", seed=0)
    glove = synthetic.write_synthetic_glove(root / "glove" / "glove.txt", D_WORD, seed=0)
    return {"root": root, "data_dir": data_dir, "glove": glove, "runs": root / "runs"}


def base_args(data, name, max_vals=3):
    return ["--data_dir", str(data["data_dir"]), "--word_embs_file", str(data["glove"]), "--d_word", str(D_WORD),
            "--d_hid", "16", "--val_interval", "10", "--max_vals", str(max_vals), "--lr", "1e-2",
            "--store_root", str(data["runs"]), "--store_name", name, "--no_progress"]


RANKSIM = ["--regularization_weight", "3e-4", "--interpolation_lambda", "2"]


def train(data, name, *extra, max_vals=3):
    return stsb_train.main(base_args(data, name, max_vals) + list(extra))


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def scores_of(data):
    lines = (data["data_dir"] / "test_new.tsv").read_text().splitlines()[1:]
    return np.array([float(line.split("\t")[-1]) for line in lines], dtype=np.float32)


@pytest.fixture(scope="module")
def vanilla(data):
    """The vanilla run, through the real script in a subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(STSB_DIR / "train.py")] + base_args(data, "vanilla"),
                          cwd=STSB_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data["runs"] / "vanilla"


def test_vanilla_run_writes_the_run_directory_and_results(vanilla, data):
    files = {p.name for p in vanilla.iterdir()}
    assert {"ckpt.pth.tar", "ckpt.best.pth.tar", "results.json", "training.log", "vocab.txt",
            "test_predictions.tsv"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)  # TensorBoard scalars
    results = results_of(vanilla)
    assert results["dataset"] == "sts-b" and results["split"] == "test"
    assert results["sizes"] == {"train": 120, "val": 40, "test": 40}
    assert results["args"]["d_hid"] == 16 and results["args"]["regularization_weight"] == 0.0
    # shot groups from the FIXED bin lists, binned independently here (float32 np.histogram edges)
    scores = scores_of(data)
    edges = np.histogram_bin_edges(np.empty(0, np.float32), bins=50, range=(0, 5)).astype(np.float32)
    bins = np.minimum(np.searchsorted(edges, scores, side="right") - 1, 49)
    metrics = results["metrics"]
    assert metrics["all"]["count"] == 40
    assert metrics["many"]["count"] == int(np.isin(bins, MANY).sum()) > 0
    assert metrics["medium"]["count"] == int(np.isin(bins, MEDIUM).sum())
    assert metrics["few"]["count"] == int((~np.isin(bins, MANY + MEDIUM)).sum()) > 0
    for key in ("mse", "mae", "gmean", "pearson", "spearman"):
        assert isinstance(metrics["all"][key], float)
    # per_label: keyed by bin, counts add up
    assert {int(k) for k in results["per_label"]} == set(bins.tolist())
    assert sum(v["count"] for v in results["per_label"].values()) == 40
    # saved predictions clipped to [0, 5]; val checks logged; three checks of 10 iterations
    preds = np.loadtxt(vanilla / "test_predictions.tsv", skiprows=1)[:, 2]
    assert preds.min() >= 0.0 and preds.max() <= 5.0 and len(preds) == 40
    log = (vanilla / "training.log").read_text()
    assert "check 3/3 | iter 30" in log and "check 4/" not in log
    assert "RankSim" not in log  # RankSim is off: no "(RankSim 0.0000)" in the check lines
    # skipped rows counted per file: rows whose last column (the score) is empty, counted here by hand
    skipped = [sum(1 for line in (data["data_dir"] / name).read_text().splitlines()[1:]
                   if line and line.split("\t")[-1].strip() == "") for name in ("train_new.tsv", "dev_new.tsv")]
    assert (f"rows skipped (no score, or a sentence without tokens): train_new.tsv {skipped[0]}, "
            f"dev_new.tsv {skipped[1]}, test_new.tsv ") in log


def test_evaluate_round_trip_gives_the_training_runs_test_metrics(vanilla, data):
    results = train(data, "evaluate", "--evaluate", "--eval_model", str(vanilla / "ckpt.best.pth.tar"))
    trained = results_of(vanilla)
    assert results["metrics"] == trained["metrics"]  # same weights, same data, eval mode: bit-identical
    assert results["per_label"] == trained["per_label"]
    assert results_of(data["runs"] / "evaluate")["checkpoint"] == str(vanilla / "ckpt.best.pth.tar")
    # the same metrics recomputed from the saved predictions (6 decimals) and scores
    preds = np.loadtxt(data["runs"] / "evaluate" / "test_predictions.tsv", skiprows=1)
    if 0.0 < preds[:, 2].min() and preds[:, 2].max() < 5.0:  # nothing clipped
        assert results["metrics"]["all"]["mse"] == pytest.approx(np.mean((preds[:, 2] - preds[:, 1]) ** 2), abs=1e-4)


def test_published_plain_state_dict_evaluates(vanilla, data, tmp_path):
    """The published model_state_best.th is a bare state_dict (no vocabulary): it loads by key names."""
    state_dict = torch.load(vanilla / "ckpt.best.pth.tar", weights_only=True)["state_dict"]
    plain = tmp_path / "model_state_best.th"
    torch.save(dict(state_dict), plain)
    results = train(data, "evaluate_plain", "--evaluate", "--eval_model", str(plain))
    assert results["metrics"] == results_of(vanilla)["metrics"]
    assert "records no vocabulary" in (data["runs"] / "evaluate_plain" / "training.log").read_text()


def test_ranksim_run_changes_training(vanilla, data):
    results = train(data, "ranksim", *RANKSIM)
    log = (data["runs"] / "ranksim" / "training.log").read_text()
    reg_terms = [float(line.split("(RankSim ")[1].split(")")[0]) for line in log.splitlines() if "(RankSim" in line]
    assert len(reg_terms) == 3 and all(term > 0 for term in reg_terms)
    assert results["metrics"]["all"]["mse"] != results_of(vanilla)["metrics"]["all"]["mse"]


def test_inv_lds_fds_ranksim_run_updates_fds_statistics(data):
    results = train(data, "inv_lds_fds_ranksim", "--reweight", "inverse", "--lds", "--fds", *RANKSIM)
    assert results["args"]["fds"] and results["args"]["lds"] and results["args"]["reweight"] == "inverse"
    ckpt = torch.load(data["runs"] / "inv_lds_fds_ranksim" / "ckpt.pth.tar", weights_only=True)
    sd = ckpt["state_dict"]
    # 30 iterations of batch 16 over 120 pairs = 3 finished epochs (8 batches each) + 6 batches;
    # statistics after epochs 0, 1, 2: FDS.epoch advances at epochs 1 and 2
    assert ckpt["epoch"] == 3 and ckpt["batch_in_epoch"] == 6
    assert float(sd["FDS.epoch"][0]) == 2.0
    assert float(sd["FDS.num_samples_tracked"].sum()) == 3 * 120
    assert not torch.equal(sd["FDS.smoothed_mean_last_epoch"], torch.zeros_like(sd["FDS.smoothed_mean_last_epoch"]))


@pytest.mark.parametrize("loss", ["focal_mse", "huber"])
def test_other_losses_run(data, loss):
    results = train(data, loss, "--loss", loss, "--huber_beta", "0.3")
    assert results["args"]["loss"] == loss and results["metrics"]["all"]["count"] == 40


def test_rrt_retrains_only_the_head(vanilla, data):
    pretrained = vanilla / "ckpt.best.pth.tar"
    train(data, "rrt", "--retrain_fc", "--pretrained", str(pretrained), "--reweight", "inverse")
    before = torch.load(pretrained, weights_only=True)["state_dict"]
    after = torch.load(data["runs"] / "rrt" / "ckpt.pth.tar", weights_only=True)["state_dict"]
    assert set(before) == set(after)
    for key in before:
        if key.startswith("sts-b_pred_layer."):
            assert not torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before[key], after[key]), key


def test_rrt_with_fds_takes_only_the_encoder_and_starts_fds_afresh(data):
    """RRT stage 2 as published: encoder from stage 1; head and FDS statistics new."""
    train(data, "fds_stage1", "--fds", max_vals=1)  # 10 iterations: one finished epoch (8 batches)
    stage1 = data["runs"] / "fds_stage1" / "ckpt.best.pth.tar"
    before = torch.load(stage1, weights_only=True)["state_dict"]
    assert float(before["FDS.num_samples_tracked"].sum()) == 120
    train(data, "fds_rrt", "--retrain_fc", "--pretrained", str(stage1), "--reweight", "inverse", "--fds")
    after = torch.load(data["runs"] / "fds_rrt" / "ckpt.pth.tar", weights_only=True)["state_dict"]
    # 30 iterations = 3 finished epochs of 120 pairs: a fresh FDS tracked exactly those (the stage-1
    # buffers would add their 120) and its epoch counter advanced twice
    assert float(after["FDS.num_samples_tracked"].sum()) == 3 * 120
    assert float(after["FDS.epoch"][0]) == 2.0
    for key in before:
        if key.startswith("pair_encoder."):
            assert torch.equal(before[key], after[key]), key
    assert "FDS statistics start afresh" in (data["runs"] / "fds_rrt" / "training.log").read_text()


def test_resume_continues_exactly(data):
    """An interrupted run (simulated: a finished 2-check run's directory without results.json) resumed
    to 4 checks equals a 4-check run without interruption, with FDS, RankSim and dropout on."""
    flags = ["--fds", *RANKSIM]
    straight = train(data, "straight", *flags, max_vals=4)
    train(data, "first_half", *flags, max_vals=2)
    interrupted = data["runs"] / "interrupted"
    shutil.copytree(data["runs"] / "first_half", interrupted)
    (interrupted / "results.json").unlink()
    resumed = stsb_train.main(base_args(data, "", 4)[:-3] + ["--no_progress", "--resume",
                                                              str(interrupted / "ckpt.pth.tar")] + flags)
    assert (interrupted / "results.json").is_file()  # continued in its own directory
    assert "resumed from" in (interrupted / "training.log").read_text()
    a = torch.load(data["runs"] / "straight" / "ckpt.pth.tar", weights_only=True)
    b = torch.load(interrupted / "ckpt.pth.tar", weights_only=True)
    assert a["val_history"] == b["val_history"] and len(a["val_history"]) == 4
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    assert resumed["metrics"] == straight["metrics"]
    # the published form: a bare --resume continues the run named by --store_name
    by_name = data["runs"] / "interrupted_by_name"
    shutil.copytree(data["runs"] / "first_half", by_name)
    (by_name / "results.json").unlink()
    resumed_by_name = stsb_train.main(base_args(data, "interrupted_by_name", 4) + ["--resume"] + flags)
    assert f"resumed from {by_name / 'ckpt.pth.tar'}" in (by_name / "training.log").read_text()
    assert resumed_by_name["metrics"] == straight["metrics"]


def test_resuming_a_finished_run_never_touches_it(vanilla, data):
    finished = {p.name: p.read_bytes() for p in vanilla.iterdir() if p.is_file()}
    args = base_args(data, "", 4)[:-3] + ["--no_progress", "--resume", str(vanilla / "ckpt.pth.tar")]
    stsb_train.main(args)
    assert {p.name: p.read_bytes() for p in vanilla.iterdir() if p.is_file()} == finished
    continued = data["runs"] / "vanilla_2"
    log = (continued / "training.log").read_text()
    assert "check 4/4 | iter 40" in log and "check 3/" not in log
    assert results_of(continued)["sizes"]["test"] == 40


def test_resuming_a_checkpoint_outside_its_run_directory_starts_a_fresh_one(vanilla, data):
    """The shared resume rule (ranksim/harness/run.py): only a directory with training.log and no
    results.json is continued; a lone checkpoint (here: copied without its log) is continued in
    <name>_2, which starts with a copy of the best checkpoint. (STS-B used to ask for no results.json only.)"""
    lone = data["runs"] / "lone"
    lone.mkdir()
    for name in ("ckpt.pth.tar", "ckpt.best.pth.tar"):
        shutil.copy(vanilla / name, lone / name)
    # --max_vals 3: the checkpoint's 3 checks are all there is to do, so the continuation goes straight to the test
    stsb_train.main(base_args(data, "", 3)[:-3] + ["--no_progress", "--resume", str(lone / "ckpt.pth.tar")])
    assert sorted(p.name for p in lone.iterdir()) == ["ckpt.best.pth.tar", "ckpt.pth.tar"]
    continued = data["runs"] / "lone_2"
    assert f"resumed from {lone / 'ckpt.pth.tar'}" in (continued / "training.log").read_text()
    assert (continued / "ckpt.best.pth.tar").read_bytes() == (lone / "ckpt.best.pth.tar").read_bytes()
    assert results_of(continued)["metrics"] == results_of(vanilla)["metrics"]


def test_best_checkpoint_is_written_before_the_latest(data, monkeypatch):
    """The shared save order (Run.save): ckpt.best.pth.tar first, then ckpt.pth.tar as a second name of it
    (a hard link, or a copy), so a kill between the two writes loses nothing. (STS-B used to write
    ckpt.pth.tar first.)"""
    import ranksim.harness.run as run_module

    writes = []
    real_save, real_share = run_module.save_checkpoint, run_module.share_file
    monkeypatch.setattr(run_module, "save_checkpoint", lambda state, path: (writes.append(Path(path).name),
                                                                            real_save(state, path)))
    monkeypatch.setattr(run_module, "share_file", lambda path, best: (writes.append(f"{Path(path).name} -> "
                                                                                    f"{Path(best).name}"),
                                                                      real_share(path, best)))
    train(data, "save_order", "--val_interval", "1", max_vals=1)
    assert writes == ["ckpt.best.pth.tar", "ckpt.best.pth.tar -> ckpt.pth.tar"]


def test_bench_quick_runs():
    bench = load_folder_module("stsb_bench", ROOT / "bench" / "stsb_step.py")
    rows = bench.main(["--quick", "--cpu"])
    assert [label.split(" ")[0] for label, _ in rows] == ["vanilla", "RankSim", "FDS"]
    assert all(rate > 0 for _, rate in rows)


# ------------------------------------------------------------------------------------------ bad input

def run_expecting_user_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(stsb_train.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _copy_data(data, tmp_path):
    copy = tmp_path / "STS-B"
    shutil.copytree(data["data_dir"], copy)
    return copy


def test_bad_inputs_fail_with_one_line_and_leave_no_run_directory(data, tmp_path, capsys):
    runs = tmp_path / "runs"

    def args(data_dir=None, glove=None, *extra):
        return (base_args(data, "bad")[:-5] + ["--store_root", str(runs), "--store_name", "bad", "--no_progress"]
                + ["--data_dir", str(data_dir or data["data_dir"]), "--word_embs_file", str(glove or data["glove"])]
                + list(extra))

    err = run_expecting_user_error(args(tmp_path / "missing"), capsys)
    assert "STS-B-DIR file not found" in err and "download_sts_b_dir.py" in err
    err = run_expecting_user_error(args(None, tmp_path / "no_glove.txt"), capsys)
    assert "GloVe file not found" in err and "download_glove.py" in err
    err = run_expecting_user_error(args(None, None, "--d_word", "5"), capsys)
    assert "GloVe vectors have 8 numbers, but --d_word is 5" in err

    bad_columns = _copy_data(data, tmp_path / "c")
    dev = bad_columns / "dev_new.tsv"
    lines = dev.read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:9])
    dev.write_text("\n".join(lines) + "\n")
    err = run_expecting_user_error(args(bad_columns), capsys)
    assert f"{dev}, line 4: 9 tab-separated columns, expected 10" in err

    bad_score = _copy_data(data, tmp_path / "s")
    test = bad_score / "test_new.tsv"
    lines = test.read_text().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0] + "\t7.5"
    test.write_text("\n".join(lines) + "\n")
    err = run_expecting_user_error(args(bad_score), capsys)
    assert f"{test}, line 6: score 7.5 is outside [0, 5]" in err

    empty = _copy_data(data, tmp_path / "e")
    (empty / "train_new.tsv").write_text((empty / "train_new.tsv").read_text().splitlines()[0] + "\n")
    err = run_expecting_user_error(args(empty), capsys)
    assert "train_new.tsv: no sentence pairs (empty split" in err

    err = run_expecting_user_error(args(None, None, "--lds"), capsys)
    assert "--lds" in err and "--reweight" in err
    err = run_expecting_user_error(args(None, None, "--evaluate"), capsys)
    assert "--evaluate needs --eval_model" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_divergence_stops_with_one_line_also_in_the_log(data, capsys):
    """The shared divergence rule (ranksim.harness.loop.checked_loss after backward, Run.diverged)."""
    err = run_expecting_user_error(base_args(data, "diverged") + ["--lr", "1e30"], capsys)
    assert err.startswith("error: training diverged at iteration ") and "(epoch 1): loss = " in err
    assert "no checkpoint was written" in err and "lower --lr" in err
    run_dir = data["runs"] / "diverged"
    assert (run_dir / "training.log").read_text().splitlines()[-1].endswith(err)
    assert not (run_dir / "ckpt.pth.tar").exists()


def test_checkpoint_of_another_vocabulary_is_refused(vanilla, data, tmp_path, capsys):
    other = _copy_data(data, tmp_path)
    path = other / "test_new.tsv"
    path.write_text(path.read_text().replace("guitar", "violin"))
    argv = (base_args(data, "other_vocab") + ["--data_dir", str(other), "--evaluate", "--eval_model",
                                              str(vanilla / "ckpt.best.pth.tar")])
    err = run_expecting_user_error(argv, capsys)
    assert "trained with another vocabulary" in err
    assert not (data["runs"] / "other_vocab").exists()
