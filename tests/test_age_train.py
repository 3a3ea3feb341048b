"""End-to-end tests of agedb-dir/train.py and imdb-wiki-dir/train.py on tiny synthetic JPEGs.

The real train.py runs as a subprocess for the main flows (vanilla, SQINV+LDS+FDS+RankSim with
focal_l1, RRT, evaluate, resume after SIGKILL, ResNet-50 checkpoint layout, one-line errors); the
cheaper variants call the same ``main`` in-process. Images are 16 px, models ResNet-18 except the
layout test (ResNet-50), so the whole file stays well under two minutes on two cores.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from folder_modules import age_program, load_folder_module
from PIL import Image

from ranksim.harness.age_flags import build_parser
from ranksim.harness.checkpoint import strip_module_prefix
from ranksim.harness.cli import UserError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.loop import exploding_loss_limit
from ranksim.harness.models.resnet import resnet18

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
IMG = 16
N_TRAIN = 48


AgeDB = load_folder_module("agedb_dir_datasets", REPO / "agedb-dir" / "datasets.py").AgeDB
AGEDB_DEFAULTS = age_program().DEFAULTS
main = age_program().main  # agedb-dir/train.py in this process


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("agedb_data")
    csv = make_synthetic_age_dataset(root, n_train=N_TRAIN, n_val=16, n_test=16, img_size=IMG, seed=0)
    shutil.copy(csv, root / "imdb_wiki.csv")  # the same split under IMDB-WIKI's file name
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def common_args(data, store, name, epochs=2):
    return ["--data_dir", str(data), "--img_size", str(IMG), "--model", "resnet18", "--batch_size", "16",
            "--workers", "0", "--store_root", str(store), "--store_name", name, "--epoch", str(epochs)]


def run_train(args, folder="agedb-dir"):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO / folder, env=ENV, capture_output=True,
                          text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def results_of(run_dir):
    return json.loads((Path(run_dir) / "results.json").read_text())


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_metrics(got, expected, rel):
    """Metric dicts equal up to ``rel`` (None for empty shot groups must match exactly)."""
    assert got.keys() == expected.keys()
    for row in expected:
        for key, value in expected[row].items():
            if value is None or key == "count":
                assert got[row][key] == value, (row, key)
            else:
                assert got[row][key] == pytest.approx(value, rel=rel, abs=1e-12), (row, key)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def vanilla(data, store):
    ok(run_train(common_args(data, store, "vanilla")))
    return store / "vanilla"


# --------------------------------------------------------------------------------------------- runs


def test_vanilla_run_outputs(vanilla):
    res = results_of(vanilla)
    assert set(res) == {"dataset", "protocol", "split", "checkpoint", "epoch", "args", "sizes", "metrics",
                        "per_label", "balanced_mae", "health", "health_history"}  # health: tests/test_health_runs.py
    assert res["dataset"] == "agedb" and res["split"] == "test" and res["args"]["model"] == "resnet18"
    assert res["protocol"] == "published"  # the AgeDB-DIR split, no --protocol
    assert res["sizes"] == {"train": N_TRAIN, "val": 16, "test": 16}
    assert res["checkpoint"].endswith("vanilla/ckpt.best.pth.tar") and res["epoch"] in (1, 2)
    metrics = res["metrics"]
    assert set(metrics) == {"all", "many", "medium", "few"} and metrics["all"]["count"] == 16
    assert sum(metrics[g]["count"] for g in ("many", "medium", "few")) == 16
    assert all(set(m) == {"mse", "mae", "gmean", "count"} for m in metrics.values())
    per_label = res["per_label"]
    assert all(str(int(k)) == k for k in per_label) and sum(v["count"] for v in per_label.values()) == 16
    mean_from_labels = sum(v["count"] * v["mae"] for v in per_label.values()) / 16
    assert mean_from_labels == pytest.approx(metrics["all"]["mae"], rel=1e-9)

    log = (vanilla / "training.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "val MSE" in log
    assert list(vanilla.glob("events.out.tfevents.*"))
    assert load_ckpt(vanilla / "ckpt.pth.tar")["epoch"] == 2

    # TensorBoard scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(vanilla))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/mse", "val/mae", "val/gmean", "lr"} <= tags
    assert [e.step for e in events.Scalars("val/mae")] == [1, 2]


def test_reported_test_metrics_match_an_independent_evaluation(vanilla, data):
    """Re-evaluate the best checkpoint with a hand-written pipeline (PIL -> [-1, 1], NumPy metrics)."""
    res = results_of(vanilla)
    ckpt = load_ckpt(res["checkpoint"])
    model = resnet18()
    model.load_state_dict(strip_module_prefix(ckpt["state_dict"]))
    model.eval()
    rows = [line.split(",") for line in (data / "agedb.csv").read_text().split("\n")[1:] if line]
    test = [(float(age), path) for age, path, split in rows if split == "test"]
    images = np.stack([np.asarray(Image.open(data / p).convert("RGB"), np.float32) for _, p in test])
    x = torch.from_numpy((images / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        preds = model(x).double().numpy()[:, 0]
    labels = np.array([a for a, _ in test])
    err = np.abs(preds - labels)
    assert res["metrics"]["all"]["mae"] == pytest.approx(err.mean(), rel=1e-5)
    assert res["metrics"]["all"]["mse"] == pytest.approx((err ** 2).mean(), rel=1e-5)
    assert res["metrics"]["all"]["gmean"] == pytest.approx(np.exp(np.log(err).mean()), rel=1e-5)
    # 48 train images: no label has more than 100 (many) samples, so every test label is few or medium
    train_counts = {}
    for age, _, split in rows:
        if split == "train":
            train_counts[int(age)] = train_counts.get(int(age), 0) + 1
    n_few = sum(train_counts.get(int(a), 0) < 20 for a in labels)
    assert res["metrics"]["few"]["count"] == n_few and res["metrics"]["many"]["count"] == 0


def test_evaluate_round_trip_equals_end_of_training_numbers(vanilla, data, store):
    best = vanilla / "ckpt.best.pth.tar"
    ok(run_train(common_args(data, store, "eval_vanilla") + ["--evaluate", "--resume", str(best)]))
    trained, evaluated = results_of(vanilla), results_of(store / "eval_vanilla")
    assert_same_metrics(evaluated["metrics"], trained["metrics"], rel=1e-9)
    assert evaluated["per_label"].keys() == trained["per_label"].keys()
    assert evaluated["epoch"] == trained["epoch"] and evaluated["checkpoint"] == str(best)

    # The same weights without the `module.` prefix (a plain state_dict checkpoint) give the same numbers.
    bare = load_ckpt(best)
    bare["state_dict"] = strip_module_prefix(bare["state_dict"])
    torch.save(bare, store / "bare.pth.tar")
    again = main(common_args(data, store, "eval_bare") + ["--evaluate", "--resume", str(store / "bare.pth.tar")])
    assert again["metrics"]["all"]["mae"] == pytest.approx(trained["metrics"]["all"]["mae"], rel=1e-9)


def test_resume_after_sigkill_finishes_and_matches_an_uninterrupted_run(vanilla, data, store):
    run_dir = store / "killed"
    args = common_args(data, store, "killed")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO / "agedb-dir", env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "ckpt.pth.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # in the middle of epoch 2
    assert proc.wait() == -signal.SIGKILL
    assert load_ckpt(run_dir / "ckpt.pth.tar")["epoch"] == 1 and not (run_dir / "results.json").exists()

    ok(run_train(args + ["--resume", str(run_dir / "ckpt.pth.tar")]))
    log = (run_dir / "training.log").read_text()
    assert "resumed" in log and "epoch 2/2" in log
    assert load_ckpt(run_dir / "ckpt.pth.tar")["epoch"] == 2
    # Same seed, --workers 0, model + optimizer + RNG state restored: the numbers of a run never killed.
    assert_same_metrics(results_of(run_dir)["metrics"], results_of(vanilla)["metrics"], rel=1e-6)


def test_sqinv_lds_fds_ranksim_focal_l1(data, store):
    ok(run_train(common_args(data, store, "full") + [
        "--reweight", "sqrt_inv", "--lds", "--fds", "--regularization_weight", "100", "--interpolation_lambda", "2",
        "--loss", "focal_l1"]))
    run_dir = store / "full"
    res = results_of(run_dir)
    assert res["args"]["loss"] == "focal_l1" and res["args"]["lds"] and res["args"]["fds"]
    log = (run_dir / "training.log").read_text()
    assert "(ranksim " in log
    ranksim_terms = [float(line.split("(ranksim ")[1].split(")")[0]) for line in log.splitlines() if "(ranksim " in line]
    assert len(ranksim_terms) == 2 and all(t > 0 for t in ranksim_terms)
    state = load_ckpt(run_dir / "ckpt.pth.tar")["state_dict"]
    # FDS state after two epochs (start_update 0): epoch counter advanced once, statistics of every sample
    # of both full passes over the train split (labels outside 3..99 merge into the end buckets).
    assert state["module.FDS.epoch"].item() == 1
    assert state["module.FDS.num_samples_tracked"].sum().item() == 2 * N_TRAIN
    assert state["module.FDS.running_mean"].abs().sum() > 0
    assert state["module.FDS.running_mean"].shape == (97, 512)

    # Evaluating it without --fds ignores the FDS buffers and reproduces the numbers.
    again = main(common_args(data, store, "eval_full") + ["--evaluate", "--resume", str(run_dir / "ckpt.best.pth.tar")])
    assert again["metrics"]["all"]["mae"] == pytest.approx(res["metrics"]["all"]["mae"], rel=1e-9)


def test_ranksim_run_in_process_with_sgd(vanilla, data, store):
    results = main(common_args(data, store, "ranksim", epochs=1) + [
        "--regularization_weight", "100", "--interpolation_lambda", "2", "--optimizer", "sgd"])
    assert results["args"]["regularization_weight"] == 100.0
    log = (store / "ranksim" / "training.log").read_text()
    assert float(log.split("(ranksim ")[1].split(")")[0]) > 0
    # SGD runs with momentum and weight decay, Adam without weight decay (docs/published_behaviour.md §7)
    sgd_group = load_ckpt(store / "ranksim" / "ckpt.pth.tar")["optimizer"]["param_groups"][0]
    assert (sgd_group["momentum"], sgd_group["weight_decay"]) == (0.9, 1e-4)
    adam_group = load_ckpt(vanilla / "ckpt.pth.tar")["optimizer"]["param_groups"][0]
    assert adam_group["weight_decay"] == 0 and "betas" in adam_group


def test_rrt_from_saved_checkpoint_changes_only_the_head(vanilla, data, store):
    pretrained = vanilla / "ckpt.best.pth.tar"
    results = main(common_args(data, store, "rrt", epochs=1) + [
        "--retrain_fc", "--pretrained", str(pretrained), "--reweight", "sqrt_inv"])
    before = load_ckpt(pretrained)["state_dict"]
    after = load_ckpt(store / "rrt" / "ckpt.pth.tar")["state_dict"]
    assert before.keys() == after.keys()
    for key in before:
        if key.startswith("module.linear."):
            assert not torch.equal(before[key], after[key]), key
        else:  # every backbone tensor, BatchNorm running statistics included
            assert torch.equal(before[key], after[key]), key
    assert results["args"]["retrain_fc"]


def test_checkpoint_layout_resnet50_matches_published(tmp_path):
    data = tmp_path / "data"
    make_synthetic_age_dataset(data, n_train=8, n_val=4, n_test=4, img_size=IMG, seed=1)
    main(common_args(data, tmp_path / "runs", "r50", epochs=1) + ["--model", "resnet50", "--fds"])
    ckpt = load_ckpt(tmp_path / "runs" / "r50" / "ckpt.pth.tar")
    assert {"epoch", "model", "best_loss", "state_dict", "optimizer"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["model"] == "resnet50" and isinstance(ckpt["best_loss"], float)
    assert {"state", "param_groups"} <= set(ckpt["optimizer"])
    expected = {}
    for name, tensor in torchvision.models.resnet50(num_classes=1).state_dict().items():
        expected["module." + ("linear." + name[3:] if name.startswith("fc.") else name)] = tuple(tensor.shape)
    for buf in ("running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
                "smoothed_mean_last_epoch", "smoothed_var_last_epoch"):
        expected[f"module.FDS.{buf}"] = (97, 2048)
    expected["module.FDS.epoch"], expected["module.FDS.num_samples_tracked"] = (1,), (97,)
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()} == expected
    assert list(ckpt["state_dict"])[0] == "module.conv1.weight"


def test_imdb_wiki_train_py_defaults_and_evaluate(vanilla, data, store):
    args = ["--data_dir", str(data), "--img_size", str(IMG), "--model", "resnet18", "--workers", "0",
            "--store_root", str(store), "--store_name", "imdb_eval", "--evaluate", "--resume",
            str(vanilla / "ckpt.best.pth.tar")]
    ok(run_train(args, folder="imdb-wiki-dir"))
    res = results_of(store / "imdb_eval")
    assert res["dataset"] == "imdb_wiki"
    assert {k: res["args"][k] for k in ("dataset", "lds_ks", "fds_ks", "bucket_start", "epoch")} == \
        {"dataset": "imdb_wiki", "lds_ks": 5, "fds_ks": 5, "bucket_start": 0, "epoch": 90}
    trained = results_of(vanilla)["metrics"]
    assert res["metrics"]["all"]["mae"] == pytest.approx(trained["all"]["mae"], rel=1e-9)
    # (IMDB-WIKI-DIR adds 1e-10 to the overall GM errors: no visible change unless an error is exactly 0)
    assert res["metrics"]["all"]["gmean"] == pytest.approx(trained["all"]["gmean"], rel=1e-6)


def test_defaults_are_the_published_ones():
    args = build_parser(AGEDB_DEFAULTS).parse_args([])
    expected = dict(lds=False, lds_kernel="gaussian", lds_ks=9, lds_sigma=1.0, fds=False, fds_kernel="gaussian",
                    fds_ks=9, fds_sigma=1.0, start_update=0, start_smooth=1, bucket_num=100, bucket_start=3,
                    fds_mmt=0.9, reweight="none", retrain_fc=False, regularization_weight=0.0,
                    interpolation_lambda=1.0, dataset="agedb", data_dir="./data", model="resnet50",
                    store_root="checkpoint", store_name="", gpu=None, optimizer="adam", loss="l1", lr=1e-3,
                    epoch=120, momentum=0.9, weight_decay=1e-4, schedule=[60, 80], batch_size=256, print_freq=10,
                    img_size=224, workers=32, resume="", pretrained="", evaluate=False)
    assert {k: getattr(args, k) for k in expected} == expected


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, message", [
    (["--lds"], r"--lds: .*--reweight sqrt_inv"),
    (["--reweight", "sqrt_inv", "--lds", "--lds_ks", "4"], r"--lds_ks 4: .*odd"),
    (["--fds", "--fds_ks", "6"], r"--fds_ks 6: .*odd"),
    (["--retrain_fc"], r"--retrain_fc: .*--pretrained"),
    (["--evaluate"], r"--evaluate: .*--resume"),
    (["--resume", "no/such/ckpt.pth.tar"], r"--resume no/such/ckpt.pth.tar: checkpoint file not found"),
    (["--gpu", "99"], r"--gpu 99: "),
    (["--workers", "-1"], r"--workers -1: "),
    (["--regularization_weight", "-1"], r"--regularization_weight -1.0: "),
    (["--bucket_start", "100"], r"--bucket_start 100: "),
    (["--batch_size", "1"], r"--batch_size 1: .*BatchNorm"),
    (["--fds", "--bucket_num", "1", "--bucket_start", "0"], r"--fds_ks 9: .*1 label buckets"),
    (["--fds", "--start_smooth", "-1"], r"--start_smooth -1: "),
    (["--img_size", "100000"], r"--img_size 100000: at most 1024"),
])
def test_bad_flags_one_line_nothing_created(extra, message, data, tmp_path):
    store = tmp_path / "runs"
    with pytest.raises(UserError, match=message) as err:
        main(common_args(data, store, "bad") + extra)
    assert "\n" not in str(err.value)
    assert not store.exists()  # rejected before any run directory is made


def test_unknown_flag_rejected():
    with pytest.raises(SystemExit) as exit_info:
        build_parser(AGEDB_DEFAULTS).parse_args(["--regularisation_weight", "100"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):  # no prefix matching either
        build_parser(AGEDB_DEFAULTS).parse_args(["--regularization", "100"])


def test_missing_split_file_names_the_command(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"agedb\.csv.*python data/create_agedb\.py.*python data/download_split\.py"):
        main(["--data_dir", str(tmp_path / "empty"), "--store_root", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_architecture(vanilla, data, store):
    best = str(vanilla / "ckpt.best.pth.tar")
    with pytest.raises(UserError, match=r"--model resnet50: .* was trained with --model resnet18; leave --model out"):
        main(common_args(data, store, "x") + ["--model", "resnet50", "--evaluate", "--resume", best])
    # Without the 'model' entry the key check still refuses it, listing the keys.
    ckpt = load_ckpt(best)
    del ckpt["model"], ckpt["args"]
    torch.save(ckpt, store / "anonymous.pth.tar")
    with pytest.raises(UserError, match=r"165 missing keys \(layer1\.0\.conv3\.weight.*shape mismatches \(layer1\.0\.conv1\.weight"):
        main(common_args(data, store, "x") + ["--model", "resnet50", "--evaluate", "--resume",
                                              str(store / "anonymous.pth.tar")])
    # A checkpoint missing one backbone tensor is never loaded partially.
    ckpt = load_ckpt(best)
    del ckpt["state_dict"]["module.layer2.0.bn1.running_var"]
    torch.save(ckpt, store / "partial.pth.tar")
    with pytest.raises(UserError, match=r"1 missing keys \(layer2\.0\.bn1\.running_var\)"):
        main(common_args(data, store, "x") + ["--evaluate", "--resume", str(store / "partial.pth.tar")])


def test_resuming_a_run_that_has_all_its_epochs_is_refused_before_anything_is_made(vanilla, data, store):
    with pytest.raises(UserError, match=r"^--resume .*vanilla/ckpt\.pth\.tar: the checkpoint has already completed 2 "
                       r"epochs \(--epoch 2\); pass a larger --epoch to train on, or --evaluate to test it$"):
        main(common_args(data, store, "finished_again") + ["--resume", str(vanilla / "ckpt.pth.tar")])
    assert not (store / "finished_again").exists()


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(vanilla, data, store):
    ckpt = vanilla / "ckpt.pth.tar"
    digest = sha256(ckpt)
    with pytest.raises(UserError, match=r"diverged at epoch 3.*last good checkpoint is .*vanilla/ckpt\.pth\.tar") as err:
        main(common_args(data, store, "diverge", epochs=4) + ["--resume", str(ckpt), "--lr", "1e30"])
    assert "\n" not in str(err.value)
    assert sha256(ckpt) == digest
    assert not (store / "diverge" / "ckpt.pth.tar").exists()


def test_unreadable_image_in_a_loader_worker_is_one_line(data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    victim = sorted((broken / "images").glob("train_000005_*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 truncated")
    proc = run_train(common_args(broken, tmp_path / "runs", "broken") + ["--workers", "2"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {victim}: cannot read image")


@pytest.fixture(scope="module")
def skewed_data(tmp_path_factory):
    """Train ages with bins above the clip minimum of 5, so INV+LDS weights are not all equal."""
    root = tmp_path_factory.mktemp("skewed_ages")
    make_synthetic_age_dataset(root, n_val=16, n_test=16, img_size=IMG, seed=0,
                               train_ages=[30] * 20 + [31] * 9 + [33] * 7 + [50, 60, 70])
    return root


@pytest.mark.parametrize("quirk", [False, True])
def test_published_quirks_flag_reaches_weights_loss_and_limit(skewed_data, store, monkeypatch, quirk):
    """--published_quirks switches the INV+LDS weights to integer smoothing, the Huber loss to the
    published positional call and the divergence limit to 1e6 (each pinned in test_published_quirks)."""
    age_train = age_program()
    from ranksim.weighting import label_weights

    seen = {}
    real_train_one_epoch = age_train.train_one_epoch

    def spy(model, loader, optimizer, loss_fn, epoch, args, *rest):
        seen.update(loader=loader, loss_fn=loss_fn, loss_limit=exploding_loss_limit(args.published_quirks))
        return real_train_one_epoch(model, loader, optimizer, loss_fn, epoch, args, *rest)

    monkeypatch.setattr(age_train, "train_one_epoch", spy)
    name = f"quirks_{quirk}"
    results = main(common_args(skewed_data, store, name, epochs=1) + ["--reweight", "inverse", "--lds", "--loss", "huber"]
                   + (["--published_quirks"] if quirk else []))
    assert results["args"]["published_quirks"] is quirk
    assert seen["loss_limit"] == (1e6 if quirk else 1e8)
    train_set = seen["loader"].dataset
    labels = train_set.labels
    for smoothing in (False, True):  # the two weightings differ on these labels; the flag picks one
        expected = label_weights(labels, "inverse", True, "gaussian", 9, 1.0, label_kind="age",
                                 integer_smoothing=smoothing)
        assert np.array_equal(train_set.weights, expected) == (smoothing is quirk)
    pred, target = torch.tensor([[0.0], [0.0]]), torch.tensor([[0.3], [3.0]])
    weights = torch.tensor([[0.5], [2.0]])
    # published: thresholds 0.5 and 2, unweighted mean; ours: beta 1, weighted mean (hand-computed)
    expected = (0.5 * 0.09 / 0.5 + (3.0 - 1.0)) / 2 if quirk else (0.5 * 0.5 * 0.09 + 2.0 * 2.5) / 2
    assert seen["loss_fn"](pred, target, weights).item() == pytest.approx(expected, rel=1e-6)
