"""The demo: its synthetic AgeDB-DIR-shaped data (demo/make_data.py) and `make demo` (demo/run_demo.py)
end to end at a tiny scale (2% of the train set, 16 px, 2 epochs, 2 seeds) with the real
agedb-dir/train.py; and the agedb-dir quick start's synthetic data."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ranksim.harness.cli import UserError
from ranksim.harness.data.age import AgeCSVDataset
from ranksim.metrics import age_shot_groups
from ranksim.stats import paired_difference, summarize

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
    # 0.4 x the published histogram, rounded up: no age of AgeDB-DIR disappears
    assert make_data.DEFAULTS["train_scale"] == 0.4
    assert np.array_equal(train_counts, np.ceil(published * 0.4 - 1e-9).astype(int))
    assert np.array_equal(train_counts > 0, published > 0)
    assert len(ages["train"]) == 4922 and len(ages["val"]) == len(ages["test"]) == 725
    assert np.bincount(ages["test"]).max() == 10  # balanced: 30 per age in the published test, a third here
    groups = age_shot_groups(ages["train"], ages["test"])
    assert {g: int(m.sum()) for g, m in groups.items()} == {"many": 190, "medium": 400, "few": 135}


def test_documented_split_sizes_are_the_generated_ones():
    """make_data.py's and run_demo.py's docstrings and the READMEs state the sizes split_ages gives."""
    ages = make_data.split_ages(make_data.DEFAULTS)
    train, held_out = f"{len(ages['train']):,}", f"{len(ages['test']):,}"
    groups = age_shot_groups(ages["train"], ages["test"])
    doc = " ".join(make_data.__doc__.split())
    assert f"{train} train images" in doc and f"{held_out} images each" in doc
    assert f"train_scale = {make_data.DEFAULTS['train_scale']} (DEFAULTS)" in doc
    assert f"up to {np.bincount(ages['train']).max()} images" in doc
    for readme in (REPO / "demo" / "README.md", REPO / "README.md"):
        text = " ".join(readme.read_text().split())
        assert f"{train} images" in text and f"{held_out}" in text, readme
    demo_readme = " ".join((REPO / "demo" / "README.md").read_text().split())
    counts = ", ".join(f"{int(m.sum())} {g}" for g, m in groups.items())
    assert counts in demo_readme


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
    from ranksim.harness.data.synthetic import draw_age_image

    rng = np.random.default_rng(0)

    def bright_fraction(age):
        images = [draw_age_image(rng, age, (0, 101), 32) for _ in range(200)]
        return np.mean([(img.astype(int).sum(axis=2) > 3 * 130).mean() for img in images])

    fractions = [bright_fraction(a) for a in (5, 30, 60, 95)]
    assert fractions == sorted(fractions) and fractions[-1] > 4 * fractions[0]


def table_row(lines, first_cell: str) -> list:
    """Cells of the first Markdown table row whose first cell starts with ``first_cell``."""
    row = next(line for line in lines if line.startswith(f"| {first_cell}"))
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_run_demo_end_to_end_tiny(tmp_path):
    data, runs, figures = tmp_path / "data", tmp_path / "runs", tmp_path / "figs"
    cmd = [sys.executable, str(REPO / "demo" / "run_demo.py"), "--data_dir", str(data), "--runs", str(runs),
           "--figures", str(figures), "--epochs", "2", "--methods", "vanilla,ranksim", "--seeds", "0,1",
           "--train_scale", str(TINY["train_scale"]), "--eval_scale", str(TINY["eval_scale"]),
           "--img_size", str(TINY["img_size"])]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()

    # The mean baseline, computed here independently from the CSV.
    table = pd.read_csv(data / "agedb.csv")
    train = table.loc[table["split"] == "train", "age"].to_numpy(float)
    test = table.loc[table["split"] == "test", "age"].to_numpy(float)
    groups = {"all": np.ones(len(test), bool), **age_shot_groups(train, test)}
    err = np.abs(test - train.mean())
    cells = table_row(lines, "Predict the train mean")
    assert cells[0] == f"Predict the train mean ({train.mean():.1f}; no training)"
    for cell, group in zip(cells[1:], ("all", "many", "medium", "few")):
        assert cell == (f"{err[groups[group]].mean():.2f}" if groups[group].any() else "")

    # Each method's row: mean ± sample std over its two runs' results.json (the real train.py's), n=2.
    results = {}
    for key, name in (("vanilla", "Vanilla"), ("ranksim", "RankSim")):
        results[key] = [json.loads((runs / f"{key}_seed{seed}" / "results.json").read_text()) for seed in (0, 1)]
        assert [r["args"]["seed"] for r in results[key]] == [0, 1]
        assert all(r["args"]["model"] == "resnet18" and r["args"]["epoch"] == 2 for r in results[key])
        cells = table_row(lines, f"{name} |")
        for cell, group in zip(cells[1:], ("all", "many", "medium", "few")):
            if not groups[group].any():
                assert cell == ""
                continue
            values = np.array([r["metrics"][group]["mae"] for r in results[key]])
            assert cell == f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=2)"
            assert cell == summarize(values).format(2)
    assert all(r["args"]["regularization_weight"] == 100 for r in results["ranksim"])

    # The paired difference RankSim - Vanilla per group: t interval with 1 degree of freedom.
    from scipy import stats

    cells = table_row(lines, "RankSim − Vanilla")
    for cell, group in zip(cells[1:], ("all", "many", "medium", "few")):
        if not groups[group].any():
            continue
        diff = np.array([a["metrics"][group]["mae"] - b["metrics"][group]["mae"]
                         for a, b in zip(results["ranksim"], results["vanilla"])])
        half = stats.t.ppf(0.975, 1) * diff.std(ddof=1) / np.sqrt(2)
        low, high = diff.mean() - half, diff.mean() + half
        supported = "within noise" if low <= 0 <= high else ("lower" if diff.mean() < 0 else "higher")
        assert cell == f"{diff.mean():+.2f} [{low:+.2f}, {high:+.2f}] (95% CI, n=2): {supported}"
        assert cell.startswith(paired_difference(diff, np.zeros(2)).format(2))
    # RankSim health per method: mean ± std over the two runs' last-epoch records in results.json.
    for key, name in (("vanilla", "Vanilla"), ("ranksim", "RankSim")):
        health_row = [line for line in lines if line.startswith(f"| {name} | ")][2]  # after the MAE and GM rows
        cells = [c.strip() for c in health_row.strip().strip("|").split("|")]
        records = [r["health"] for r in results[key]]
        assert all(r["epoch"] == 2 for r in records)
        values = np.array([r["val"]["mean_cosine"] for r in records])
        assert cells[1] == f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n=2)"
        ratios = [r["train"]["grad_ratio"] for r in records]
        assert (cells[5] == "null (gamma 0)") if key == "vanilla" else all(v > 0 for v in ratios)
    assert (runs / "demo_table.md").read_text() in proc.stdout
    assert "2 seed(s) per method (0, 1)" in proc.stdout
    for name in ("demo_examples.png", "demo_label_distribution.png", "demo_per_label_mae.png",
                 "demo_rank_matrices.png"):
        with Image.open(figures / name) as img:
            assert img.format == "PNG"

    # Again: the finished runs are reused, nothing is trained.
    again = subprocess.run(cmd + ["--no_figures"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("using the finished run") == 4 and "run directory:" not in again.stdout
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "ranksim_seed0", "ranksim_seed1", "vanilla_seed0", "vanilla_seed1"]


def test_run_demo_rejects_unknown_method(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "demo" / "run_demo.py"), "--methods", "vanilla,lds",
                           "--runs", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("error: --methods vanilla,lds: unknown method(s) lds; choose from vanilla, ranksim, "
                           "sqinv-ranksim\n")


def test_run_demo_rejects_bad_seeds(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "demo" / "run_demo.py"), "--seeds", "0,0",
                           "--runs", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == "error: --seeds 0,0: give distinct non-negative integers separated by commas, e.g. 0,1,2\n"


def test_agedb_quick_start_data_has_all_three_shot_groups(tmp_path):
    """The `python -c` line of agedb-dir/README.md's quick start, run as shown (in a scratch folder)."""
    readme = (REPO / "agedb-dir" / "README.md").read_text()
    code = re.search(r'^python -c "(from ranksim\.harness\.data\.synthetic import [^"]+)"$', readme, flags=re.M).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "synthetic" / "agedb.csv")
    train = table.loc[table["split"] == "train", "age"].to_numpy()
    test = table.loc[table["split"] == "test", "age"].to_numpy()
    counts = {g: int(m.sum()) for g, m in age_shot_groups(train, test).items()}
    assert min(counts.values()) > 0, counts
    assert f"{counts['many']} many-, {counts['medium']} medium- and {counts['few']} few-shot" in " ".join(readme.split())


def test_demo_health_table_reads_results_json_and_marks_old_runs():
    run_demo = load("demo_run_demo", REPO / "demo" / "run_demo.py")

    def record(cosine, ratio, warnings=()):
        return {"args": {"seed": 0}, "health": {"epoch": 3, "train": {"mean_cosine": 0.5, "rank_agreement": 0.25,
                                                                       "grad_ratio": ratio},
                                                "val": {"mean_cosine": cosine, "rank_agreement": None},
                                                "warnings": list(warnings)}}

    collapsed = "val features: features collapsed: mean pairwise cosine 0.9950 > 0.99; lower gamma"
    table = run_demo.health_table({"vanilla": [record(0.7, None), record(0.8, None)],
                                   "ranksim": [record(0.995, 2.0, [collapsed]), {"args": {"seed": 1}}]})
    rows = table.splitlines()
    assert rows[2] == "| Vanilla | 0.750 ± 0.071 (n=2) | n/a | 0.500 ± 0.000 (n=2) | 0.250 ± 0.000 (n=2) | null (gamma 0) |"
    assert rows[3].startswith("| RankSim | not recorded (runs made before the health record; --retrain)")
    assert len(rows) == 4  # an unrecorded method lists no warnings
    one = run_demo.health_table({"ranksim": [record(0.995, 2.0, [collapsed])]}).splitlines()
    assert one[2] == "| RankSim | 0.995 (n=1) | n/a | 0.500 (n=1) | 0.250 (n=1) | 2.000 (n=1) |"
    assert one[3] == f"- RankSim, seed 0: {collapsed}"
