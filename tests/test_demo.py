"""The demo: its synthetic AgeDB-DIR-shaped data (demo/make_data.py) and `make demo` (demo/run_demo.py)
end to end at a tiny scale (2% of the train set, 16 px, 2 epochs) with the real agedb-dir/train.py."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ranksim.age_data import AgeCSVDataset
from ranksim.errors import UserError
from ranksim.metrics import age_shot_groups

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_data = load("demo_make_data", REPO / "demo" / "make_data.py")
TINY = {"train_scale": 0.02, "eval_scale": 0.05, "img_size": 16}


def test_histogram_constants_are_the_published_agedb_dir_split():
    counts = json.loads((FIXTURES / "agedb_labels.json").read_text())["counts"]
    assert list(make_data.AGEDB_TRAIN_COUNTS) == counts["train"]
    assert list(make_data.AGEDB_TEST_COUNTS) == counts["test"]


def test_demo_split_sizes_and_all_shot_groups_populated():
    ages = make_data.split_ages(make_data.DEFAULTS)
    train_counts = np.bincount(ages["train"], minlength=121)
    published = np.array(make_data.AGEDB_TRAIN_COUNTS)
    # half the published histogram, rounded up: no age of AgeDB-DIR disappears
    assert np.array_equal(train_counts, -(-published // 2))
    assert np.array_equal(train_counts > 0, published > 0)
    assert len(ages["train"]) == 6130 and len(ages["val"]) == len(ages["test"]) == 725
    assert np.bincount(ages["test"]).max() == 10  # balanced: 30 per age in the published test, a third here
    groups = age_shot_groups(ages["train"], ages["test"])
    assert {g: int(m.sum()) for g, m in groups.items()} == {"many": 290, "medium": 320, "few": 115}


def test_generation_is_deterministic_readable_and_skipped_when_present(tmp_path, capsys):
    a = make_data.make_demo_dataset(tmp_path / "a", **TINY)
    b = make_data.make_demo_dataset(tmp_path / "b", **TINY)
    assert a.read_text() == b.read_text()
    table = pd.read_csv(a)
    assert list(table.columns) == ["age", "path", "split"]
    sizes = table["split"].value_counts().to_dict()
    expected = {s: len(v) for s, v in make_data.split_ages({**make_data.DEFAULTS, **TINY}).items()}
    assert sizes == expected
    for path in table["path"][:20]:
        assert path.startswith("AgeDB/") and (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    # the benchmark's own dataset class reads it
    test = AgeCSVDataset(str(tmp_path / "a"), AgeCSVDataset.read_table(str(tmp_path / "a")), 16, "test")
    image, label, weight = test[0]
    assert tuple(image.shape) == (3, 16, 16) and float(weight) == 1.0
    # second call: nothing rewritten
    mtime = a.stat().st_mtime_ns
    capsys.readouterr()
    make_data.make_demo_dataset(tmp_path / "a", **TINY)
    assert "already present" in capsys.readouterr().out and a.stat().st_mtime_ns == mtime
    # other parameters: regenerated
    make_data.make_demo_dataset(tmp_path / "a", **{**TINY, "seed": 1})
    assert a.read_text() != b.read_text()


def test_refuses_a_folder_that_is_not_a_demo_dataset(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="is not a demo dataset"):
        make_data.make_demo_dataset(tmp_path, **TINY)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_images_depend_on_the_age():
    """Older -> larger disc: the fraction of bright (foreground) pixels grows with the age."""
    from ranksim.synthetic import draw_age_image

    rng = np.random.default_rng(0)

    def bright_fraction(age):
        images = [draw_age_image(rng, age, (0, 101), 32) for _ in range(200)]
        return np.mean([(img.astype(int).sum(axis=2) > 3 * 130).mean() for img in images])

    fractions = [bright_fraction(a) for a in (5, 30, 60, 95)]
    assert fractions == sorted(fractions) and fractions[-1] > 4 * fractions[0]


def test_run_demo_end_to_end_tiny(tmp_path):
    data, runs, figures = tmp_path / "data", tmp_path / "runs", tmp_path / "figs"
    cmd = [sys.executable, str(REPO / "demo" / "run_demo.py"), "--data_dir", str(data), "--runs", str(runs),
           "--figures", str(figures), "--epochs", "2", "--methods", "vanilla,ranksim",
           "--train_scale", str(TINY["train_scale"]), "--eval_scale", str(TINY["eval_scale"]),
           "--img_size", str(TINY["img_size"])]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()

    # The mean baseline, computed here independently from the CSV.
    table = pd.read_csv(data / "agedb.csv")
    train = table.loc[table["split"] == "train", "age"].to_numpy(float)
    test = table.loc[table["split"] == "test", "age"].to_numpy(float)
    groups = age_shot_groups(train, test)
    err = np.abs(test - train.mean())
    baseline = next(line for line in lines if line.startswith("| Predict the train mean"))
    cells = [c.strip() for c in baseline.strip("|").split("|")]
    assert cells[0] == f"Predict the train mean ({train.mean():.1f})"
    for cell, group in zip(cells[1:5], ("all", "many", "medium", "few")):
        mask = np.ones(len(test), bool) if group == "all" else groups[group]
        assert cell == (f"{err[mask].mean():.2f}" if mask.any() else "")
    assert cells[5] == f"{np.exp(np.log(err).mean()):.2f}"

    # Each method's row shows the numbers of its results.json (the real train.py's).
    for key, name in (("vanilla", "Vanilla"), ("ranksim", "RankSim")):
        results = json.loads((runs / key / "results.json").read_text())
        assert results["args"]["model"] == "resnet18" and results["args"]["epoch"] == 2
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        assert row.split("|")[2].strip() == f"{results['metrics']['all']['mae']:.2f}"
    assert json.loads((runs / "ranksim" / "results.json").read_text())["args"]["regularization_weight"] == 100
    assert (runs / "demo_table.md").read_text() in proc.stdout
    for name in ("demo_examples.png", "demo_label_distribution.png", "demo_per_label_mae.png",
                 "demo_rank_matrices.png"):
        with Image.open(figures / name) as img:
            assert img.format == "PNG"

    # Again: the finished runs are reused, nothing is trained.
    again = subprocess.run(cmd + ["--no_figures"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("using the finished run") == 2 and "run directory:" not in again.stdout
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["ranksim", "vanilla"]


def test_run_demo_rejects_unknown_method(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "demo" / "run_demo.py"), "--methods", "vanilla,lds",
                           "--runs", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("error: --methods vanilla,lds: unknown method(s) lds; choose from vanilla, ranksim, "
                           "sqinv-ranksim\n")
