"""figures/make_figures.py: shot groups, similarity ranks, batch features, and the three figure kinds."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranksim.harness.checkpoint import add_module_prefix, load_checkpoint, save_checkpoint
from ranksim.harness.cli import UserError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.models.resnet import resnet18

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_figures():
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "figures" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figs = load_figures()


def png_size(path: Path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def reference_rank_normalised(row: np.ndarray) -> np.ndarray:
    """ranksim.rank_normalised written out: descending positions, ties -> larger index first, (rank + 1) / n."""
    n = len(row)
    order = sorted(range(n), key=lambda j: (-row[j], -j))
    ranks = np.empty(n)
    for position, j in enumerate(order):
        ranks[j] = position
    return (ranks + 1) / n


# ----------------------------------------------------------------------------- inputs and groups

def test_age_groups_follow_the_train_count_thresholds():
    counts = np.array([0, 19, 20, 100, 101, 500])
    assert list(figs.age_group_of_counts(counts)) == ["few", "few", "medium", "medium", "many", "many"]


def test_published_agedb_and_stsb_test_groups():
    """Groups as the figure shades them reproduce the published AgeDB-DIR test group sizes
    (1,530 / 448 / 162; Yang et al., ICML 2021)."""
    counts = json.loads((FIXTURES / "agedb_labels.json").read_text())["counts"]
    train = np.repeat(np.arange(121), counts["train"]).astype(float)
    test = np.repeat(np.arange(121), counts["test"]).astype(float)
    groups = figs.groups_of_labels("age", train, test)
    assert [int((groups == g).sum()) for g in ("many", "medium", "few")] == [1530, 448, 162]
    # STS-B: fixed bin lists; scores on bin edges go to the bin above (np.histogram), 5.0 to bin 49.
    scores = np.array([0.0, 0.1, 0.2, 0.3, 2.7, 2.75, 5.0])
    assert list(figs.groups_of_labels("stsb", np.array([1.0]), scores)) == [
        "many", "few", "medium", "few", "medium", "medium", "many"]


def test_read_split_files(tmp_path):
    csv = tmp_path / "agedb.csv"
    csv.write_text("age,path,split\n30,a.jpg,train\n31,b.jpg,train\n40,c.jpg,test\n50,d.jpg,val\n")
    data = figs.read_train_labels(csv)
    assert data["kind"] == "age" and list(data["train"]) == [30, 31] and list(data["test"]) == [40]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (tmp_path / "train_new.tsv").write_text(header + "0\tg\tf\ty\t0\ts\ts\tA man.\tA dog.\t3.5\n"
                                             "1\tg\tf\ty\t1\ts\ts\tA cat.\tNo score.\t\n")
    (tmp_path / "test_new.tsv").write_text(header + "0\tg\tf\ty\t0\ts\ts\tA man.\tA man.\t5.000\n")
    data = figs.read_train_labels(tmp_path / "train_new.tsv")
    assert data["kind"] == "stsb" and list(data["train"]) == [3.5] and list(data["test"]) == [5.0]
    with pytest.raises(UserError, match="needs columns age,path,split"):
        bad = tmp_path / "bad.csv"
        bad.write_text("label,file\n1,a\n")
        figs.read_train_labels(bad)
    with pytest.raises(UserError, match="split file not found"):
        figs.read_train_labels(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- similarity ranks

def test_similarity_ranks_match_a_plain_reference():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(9, 5, generator=gen)
    labels = torch.tensor([3.0, 7.0, 1.0, 9.0, 4.0, 5.0, 11.0, 2.0, 8.0])  # distances tie (e.g. 3 and 5 from 4)
    label_ranks, feature_ranks = figs.similarity_ranks(features, labels)
    x = features.numpy() / np.linalg.norm(features.numpy(), axis=1, keepdims=True)
    y = labels.numpy()
    for i in range(9):
        np.testing.assert_allclose(label_ranks[i].numpy(), reference_rank_normalised(-np.abs(y[i] - y)))
        np.testing.assert_allclose(feature_ranks[i].numpy(), reference_rank_normalised(x @ x[i]), rtol=1e-6)


def test_features_ordered_like_labels_agree_perfectly():
    labels = torch.tensor([2.0, 5.0, 11.0, 17.0, 30.0, 31.0])
    angle = labels * 0.04  # cosine similarity decreases with the label distance
    features = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    label_ranks, feature_ranks = figs.similarity_ranks(features, labels)
    assert torch.equal(label_ranks, feature_ranks)
    assert figs.rank_agreement(label_ranks, feature_ranks) == pytest.approx(1.0)
    assert figs.rank_agreement(label_ranks, torch.flip(feature_ranks, dims=[1])) < 0


def test_pick_batch_takes_distinct_labels_in_ascending_order():
    labels = np.array([5, 3, 3, 9, 1, 5, 7, 7, 2], dtype=np.float32)
    index = figs.pick_batch(labels, 4)
    assert len(index) == 4 and list(labels[index]) == sorted(set(labels[index]))
    assert labels[index][0] == 1 and labels[index][-1] == 9
    assert list(labels[figs.pick_batch(labels, 100)]) == [1, 2, 3, 5, 7, 9]
    with pytest.raises(UserError, match="fewer than two distinct labels"):
        figs.pick_batch(np.array([4.0, 4.0]), 8)


# ----------------------------------------------------------------------------- figures end to end

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two 'runs' (results.json + best checkpoint, published layout) of untrained ResNet-18s on tiny data."""
    root = tmp_path_factory.mktemp("fig")
    data = root / "data"
    make_synthetic_age_dataset(data, n_train=40, n_val=8, n_test=24, img_size=16, seed=3)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = resnet18()
        run = root / f"run{seed}"
        run.mkdir()
        save_checkpoint({"epoch": 1, "model": "resnet18", "best_loss": 1.0,
                         "state_dict": add_module_prefix(model.state_dict())}, run / "ckpt.best.pth.tar")
        per_label = {str(a): {"count": 1, "mae": float(a % 7 + seed)} for a in range(10, 60, 5)}
        (run / "results.json").write_text(json.dumps({
            "dataset": "agedb", "split": "test", "checkpoint": str(run / "ckpt.best.pth.tar"), "epoch": 1,
            "args": {"model": "resnet18", "img_size": 16, "data_dir": str(data)},
            "metrics": {"all": {"mae": 3.0 + seed}}, "per_label": per_label}))
        runs.append(run)
    return data, runs


def test_batch_features_are_the_checkpoint_backbone_on_the_chosen_test_images(tiny_runs):
    data, runs = tiny_runs
    features, labels, _ = figs.batch_features(runs[1], None, batch_size=6)
    assert features.shape == (6, 512) and list(labels.numpy()) == sorted(set(labels.numpy()))
    # independent: a fresh model with the checkpoint's weights on the same images, read with PIL here
    import pandas as pd

    table = pd.read_csv(data / "agedb.csv")
    test = table[table["split"] == "test"].reset_index(drop=True)
    rows = [test.index[test["age"] == a][0] for a in labels.numpy()]
    images = torch.stack([
        (torch.from_numpy(np.asarray(Image.open(data / test.loc[r, "path"]).convert("RGB"), np.float32) / 255.0)
         .permute(2, 0, 1) - 0.5) / 0.5 for r in rows])
    model = resnet18()
    state = load_checkpoint(runs[1] / "ckpt.best.pth.tar")["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    with torch.no_grad():
        expected = model.backbone(images)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_three_figures_are_written(tiny_runs, tmp_path):
    data, runs = tiny_runs
    split = data / "agedb.csv"
    dist = figs.main(["dist", "--split_file", str(split), "--out", str(tmp_path / "a.png")])
    assert dist is None and png_size(tmp_path / "a.png")[0] > 400
    figs.main(["per-label", "--results", str(runs[0] / "results.json"), str(runs[1]), "--names", "A", "B",
               "--split_file", str(split), "--out", str(tmp_path / "b.png")])
    assert png_size(tmp_path / "b.png")[0] > 400
    figs.main(["ranks", "--runs", str(runs[0]), str(runs[1]), "--names", "A", "B", "--batch_size", "8",
               "--out", str(tmp_path / "c.png")])
    width, height = png_size(tmp_path / "c.png")
    assert width > 2 * height  # three panels side by side
    figs.plot_examples(split, tmp_path / "d.png", n=6)
    assert png_size(tmp_path / "d.png")[0] > 300


def test_cli_errors_are_one_line(tiny_runs, tmp_path, capsys):
    from ranksim.harness.cli import run_cli

    data, runs = tiny_runs
    with pytest.raises(SystemExit) as exit_info:
        run_cli(figs.main, ["per-label", "--results", str(runs[0]), "--names", "A", "B", "--out",
                            str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --names: 2 names for 1 results files; give one name per file\n"
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):
        run_cli(figs.main, ["ranks", "--runs", str(tmp_path), "--names", "A", "--out", str(tmp_path / "y.png")])
    assert "results.json not found" in capsys.readouterr().err


def run_trained_with_relative_paths(bench: Path, run_name: str = "run0") -> Path:
    """A run as `python train.py` leaves it when started inside ``bench`` with the defaults: results.json
    records --data_dir ./data, --store_root checkpoint and a relative checkpoint path."""
    make_synthetic_age_dataset(bench / "data", n_train=40, n_val=8, n_test=24, img_size=16, seed=3)
    run = bench / "checkpoint" / run_name
    run.mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint({"epoch": 1, "model": "resnet18", "best_loss": 1.0,
                     "state_dict": add_module_prefix(resnet18().state_dict())}, run / "ckpt.best.pth.tar")
    (run / "results.json").write_text(json.dumps({
        "dataset": "agedb", "split": "test", "checkpoint": f"checkpoint/{run_name}/ckpt.best.pth.tar", "epoch": 1,
        "args": {"model": "resnet18", "img_size": 16, "data_dir": "./data", "store_root": "checkpoint"},
        "metrics": {"all": {"mae": 3.0}}, "per_label": {"20": {"count": 1, "mae": 1.0}}}))
    return run


def test_ranks_from_another_directory_resolve_the_runs_relative_data_dir(tmp_path, monkeypatch):
    """A run trained inside agedb-dir/ with the default ./data, drawn from the repository root."""
    bench = tmp_path / "agedb-dir"
    run = run_trained_with_relative_paths(bench)
    monkeypatch.chdir(tmp_path)  # here ./data does not exist
    assert figs.training_directory(run, "checkpoint") == bench.resolve()
    assert figs.training_directory(run, "elsewhere") is None
    features, labels, _ = figs.batch_features(Path("agedb-dir/checkpoint/run0"), None, batch_size=6)
    test = pd_test_ages(bench / "data")
    assert features.shape == (6, 512) and set(labels.numpy()) <= set(test)
    figs.main(["ranks", "--runs", "agedb-dir/checkpoint/run0", "--names", "A", "--batch_size", "6",
               "--out", str(tmp_path / "r.png")])
    assert png_size(tmp_path / "r.png")[0] > 300


def pd_test_ages(data: Path) -> list:
    import pandas as pd

    table = pd.read_csv(data / "agedb.csv")
    return table.loc[table["split"] == "test", "age"].tolist()


def test_ranks_with_a_missing_data_dir_names_it_and_the_flag(tmp_path, monkeypatch, capsys):
    from ranksim.harness.cli import run_cli

    bench = tmp_path / "agedb-dir"
    run_trained_with_relative_paths(bench)
    shutil.rmtree(bench / "data")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(figs.main, ["ranks", "--runs", "agedb-dir/checkpoint/run0", "--names", "A", "--out",
                            str(tmp_path / "r.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: agedb-dir/checkpoint/run0: its data folder")
    assert str(bench.resolve() / "data") in err and "pass --data_dir FOLDER" in err
    assert not (tmp_path / "r.png").exists()


def test_committed_figures_exist():
    for name in ("agedb_label_distribution.png", "stsb_label_distribution.png", "demo/demo_examples.png",
                 "demo/demo_label_distribution.png", "demo/demo_per_label_mae.png", "demo/demo_rank_matrices.png"):
        assert png_size(REPO / "figures" / name)[0] > 400, name


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
