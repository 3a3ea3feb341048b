"""Data preparation for AgeDB-DIR / IMDB-WIKI-DIR: balanced split, AgeDB file names, IMDB-WIKI .mat rows.

References are independent of ranksim.harness.data.age_splits: a plain-loop split written here with the global
``random`` module, ``datetime.fromordinal`` for MATLAB datenums, hand-computed ages, and the published
AgeDB split (fixture ``agedb_split_order.json.gz``: ages and splits of the published agedb.csv in its
row order, sha256 ab9f8d4c...; made with ``json.dumps({"ages": " ".join(ages), "splits": "tvs" codes})``).
"""
import datetime
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from ranksim.harness.cli import UserError
from ranksim.harness.data.age_splits import (
    AGEDB_CAP,
    AGEDB_K,
    IMDB_WIKI_CAP,
    IMDB_WIKI_K,
    agedb_metadata,
    balanced_split,
    expected_split_sizes,
    imdb_wiki_mat_rows,
    imdb_wiki_metadata,
    make_split_table,
    matlab_datenum_birth,
    read_split_csv,
    validate_split_table,
    write_split_csv,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def reference_split(ages, paths, k, cap, seed=666):
    """Plain-loop balanced split (docs/published_behaviour.md §6) on the global random module: path -> split."""
    by_age = defaultdict(list)
    for age, path in zip(ages, paths):
        by_age[int(age)].append(path)
    random.seed(seed)
    assignment = {path: "train" for path in paths}
    for age in range(121):
        group = list(by_age[age])
        random.shuffle(group)
        curr = min(len(group) // k, cap)
        for path in group[:curr]:
            assignment[path] = "val"
        for path in group[curr:2 * curr]:
            assignment[path] = "test"
    return assignment


def generated_ages(seed, n_ages_over_cap=2, k=3, cap=30):
    """Ages 0..130 with counts from 0 to beyond k*cap, in a shuffled row order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 2 * k + 1, size=131)  # many small groups: 0, 1, 2, ... rows per age
    counts[rng.choice(121, size=n_ages_over_cap, replace=False)] = k * cap + 7  # groups that hit the cap
    counts[125] = 50  # ages above 120 are never held out
    ages = np.repeat(np.arange(131), counts)
    return ages[rng.permutation(len(ages))]


@pytest.mark.parametrize("k,cap", [(AGEDB_K, AGEDB_CAP), (IMDB_WIKI_K, IMDB_WIKI_CAP), (3, 0)])
def test_split_counts_per_age_follow_the_formula(k, cap):
    ages = generated_ages(1, k=k, cap=max(cap, 1))
    split = balanced_split(ages, k=k, cap=cap)
    for age in range(131):
        rows = ages == age
        n = int(rows.sum())
        curr = min(n // k, cap) if age <= 120 else 0
        assert (split[rows] == "val").sum() == curr, age
        assert (split[rows] == "test").sum() == curr, age
        assert (split[rows] == "train").sum() == n - 2 * curr, age
    expected = expected_split_sizes(ages, k=k, cap=cap)
    assert {name: int((split == name).sum()) for name in ("train", "val", "test")} == expected
    if cap:
        assert expected["val"] > 0


def test_split_equals_plain_loop_reference_and_partitions_the_rows():
    ages = generated_ages(2)
    paths = [f"AgeDB/{i}_P_{a}_m.jpg" for i, a in enumerate(ages)]
    table = make_split_table(pd.DataFrame({"age": ages, "path": paths}), k=3, cap=30)
    assert list(table.columns) == ["age", "path", "split"]
    assert table["path"].tolist() == paths and table["age"].tolist() == ages.tolist()  # row order kept
    assert dict(zip(table["path"], table["split"])) == reference_split(ages, paths, 3, 30)
    parts = [set(table.loc[table["split"] == name, "path"]) for name in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert parts[0] | parts[1] | parts[2] == set(paths)


def test_split_is_deterministic_and_leaves_global_random_alone():
    ages = generated_ages(3)
    random.seed(123)
    before = random.random()
    random.seed(123)
    first = balanced_split(ages, 3, 30)
    assert random.random() == before  # the split uses a private generator
    assert np.array_equal(first, balanced_split(ages, 3, 30))
    assert np.array_equal(first, balanced_split(ages.astype(np.float64), 3, 30))
    assert not np.array_equal(first, balanced_split(ages, 3, 30, seed=667))


def test_split_reproduces_the_published_agedb_split_from_its_row_order():
    with gzip.open(FIXTURES / "agedb_split_order.json.gz", "rt") as f:
        published = json.load(f)
    ages = np.array(published["ages"].split(), dtype=np.int64)
    splits = np.array([{"t": "train", "v": "val", "s": "test"}[c] for c in published["splits"]])
    assert len(ages) == len(splits) == 16488
    ours = balanced_split(ages, AGEDB_K, AGEDB_CAP)
    assert {name: int((ours == name).sum()) for name in ("train", "val", "test")} == \
        {"train": 12208, "val": 2140, "test": 2140}
    assert expected_split_sizes(ages, AGEDB_K, AGEDB_CAP) == {"train": 12208, "val": 2140, "test": 2140}
    assert np.array_equal(ours, splits)  # same rows, not only the same sizes


def test_split_rejects_fractional_ages():
    with pytest.raises(ValueError, match="whole numbers"):
        balanced_split([1.0, 2.5], 3, 30)
    with pytest.raises(ValueError, match="k >= 1"):
        balanced_split([1, 2], 0, 30)


# ---------------------------------------------------------------------------------------------------
# CSV helpers
# ---------------------------------------------------------------------------------------------------

def small_table():
    return pd.DataFrame({"age": [1, 2, 3], "path": ["a.jpg", "b.jpg", "c.jpg"], "split": ["train", "val", "test"]})


def test_write_split_csv_round_trip_and_never_overwrites_without_force(tmp_path):
    path = tmp_path / "agedb.csv"
    write_split_csv(small_table(), path)
    assert path.read_text().splitlines()[0] == "age,path,split"
    assert read_split_csv(path, "how").equals(small_table())
    with pytest.raises(UserError, match="already exists; pass --force"):
        write_split_csv(small_table().iloc[::-1], path)
    assert read_split_csv(path, "how").equals(small_table())  # untouched
    write_split_csv(small_table().iloc[::-1].reset_index(drop=True), path, force=True)
    assert read_split_csv(path, "how")["path"].tolist() == ["c.jpg", "b.jpg", "a.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["agedb.csv"]  # no temp files left behind


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.drop(columns="split"), "missing column"),
    (lambda t: t.iloc[:0], "no rows"),
    (lambda t: t.assign(split=["train", "val", "dev"]), "row 4 has split 'dev'"),
    (lambda t: t.assign(split=["train", "val", "val"]), "no rows in split"),
    (lambda t: t.assign(age=[1, 2.5, 3]), "row 3 has age"),
    (lambda t: t.assign(age=[1, 2, -1]), "row 4 has age"),
    (lambda t: t.assign(path=["a.jpg", "", "c.jpg"]), "row 3 has an empty path"),
])
def test_validate_split_table_names_the_problem(mutate, message):
    with pytest.raises(UserError, match=message):
        validate_split_table(mutate(small_table()), "x.csv")


def test_read_split_csv_missing_and_garbage(tmp_path):
    with pytest.raises(UserError, match="split file not found; run me"):
        read_split_csv(tmp_path / "nope.csv", "run me")
    (tmp_path / "page.csv").write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(UserError, match="page.csv: missing column"):
        read_split_csv(tmp_path / "page.csv", "run me")


# ---------------------------------------------------------------------------------------------------
# AgeDB raw folder
# ---------------------------------------------------------------------------------------------------

AGEDB_FILES = ["10_Ann_Lee_31_f.jpg", "2_BobRoss_8_m.jpg", "3_Cy_101_M.JPG", "notes.txt", "4_Dan_x_m.jpg",
               ".DS_Store"]


def make_agedb_folder(data_dir, names=AGEDB_FILES):
    raw = Path(data_dir) / "AgeDB"
    raw.mkdir(parents=True)
    for name in names:
        (raw / name).write_bytes(b"jpg")
    return raw


def test_agedb_metadata_parses_names_and_reports_skipped(tmp_path):
    make_agedb_folder(tmp_path)
    meta, skipped = agedb_metadata(tmp_path)
    assert meta["path"].tolist() == ["AgeDB/10_Ann_Lee_31_f.jpg", "AgeDB/2_BobRoss_8_m.jpg", "AgeDB/3_Cy_101_M.JPG"]
    assert meta["age"].tolist() == [31, 8, 101]
    assert skipped == ["4_Dan_x_m.jpg", "notes.txt"]  # hidden files are ignored, not reported


def test_agedb_metadata_errors(tmp_path):
    with pytest.raises(UserError, match="raw AgeDB folder not found; AgeDB is distributed on request"):
        agedb_metadata(tmp_path)
    make_agedb_folder(tmp_path, ["a.png", "b.jpg"])
    with pytest.raises(UserError, match=r"no file named <id>_<name>_<age>_<gender>.jpg among 2 entries \(e.g. 'a.png'\)"):
        agedb_metadata(tmp_path)


# ---------------------------------------------------------------------------------------------------
# IMDB-WIKI .mat metadata
# ---------------------------------------------------------------------------------------------------

def datenum(year, month, day, frac=0.0):
    """MATLAB datenum of a date: days since 0000-01-00 (0000 is a leap year, 366 days)."""
    return datetime.date(year, month, day).toordinal() + 366 + frac


def test_matlab_datenum_birth_matches_datetime():
    rng = np.random.default_rng(0)
    dob = np.concatenate([rng.uniform(367, 800000, size=2000), [367, 723671, 723671.99, 719528, 719529]])
    year, month, valid = matlab_datenum_birth(dob)
    assert valid.all()
    for d, y, m in zip(dob, year, month):
        birth = datetime.datetime.fromordinal(int(d)) - datetime.timedelta(days=366)
        assert (y, m) == (birth.year, birth.month)
    assert (year[-4], month[-4]) == (1981, 5)  # 723671 is 1981-05-05 (the first imdb.mat row's birthday)
    assert (year[-1], month[-1]) == (1970, 1)  # MATLAB's datenum(1970, 1, 1) is 719529
    assert (year[-2], month[-2]) == (1969, 12)  # the day before the numpy epoch
    _, _, valid = matlab_datenum_birth([0, 366, np.nan, np.inf, -5, 1e9, 367])
    assert valid.tolist() == [False] * 6 + [True]


# Rows: (dob, photo_taken, full_path, face_score, second_face_score, expected age or None when dropped)
IMDB_ROWS = [
    (723671.0, 2009, "17/a.jpg", 4.3, np.nan, 28),  # 1981-05-05, photo 2009
    (datenum(1981, 6, 30, 0.7), 2009, "17/b.jpg", 2.0, np.nan, 28),  # June: no correction
    (datenum(1981, 7, 1), 2009, "17/c.jpg", 2.0, np.nan, 27),  # July or later: one less
    (datenum(1981, 12, 31), 2009, "17/d.jpg", 1.0, 0.0, 27),  # face_score exactly 1, second face 0: kept
    (datenum(1990, 1, 1), 2000, "01/e.jpg", -np.inf, np.nan, None),  # no face
    (datenum(1990, 1, 1), 2000, "01/f.jpg", 0.99, np.nan, None),  # face score too low
    (datenum(1990, 1, 1), 2000, "01/g.jpg", 3.0, 0.5, None),  # a second face
    (datenum(1990, 1, 1), 2000, "01/h.jpg", 3.0, -1.0, 10),  # second face score <= 0: kept
    (0.0, 2000, "01/i.jpg", 3.0, np.nan, None),  # invalid dob
    (np.nan, 2000, "01/j.jpg", 3.0, np.nan, None),  # missing dob
    (datenum(2001, 3, 3), 2000, "01/k.jpg", 3.0, np.nan, None),  # photo before birth: age -1
    (datenum(2000, 3, 3), 2000, "01/l.jpg", 3.0, np.nan, 0),  # age 0 kept
    (datenum(1800, 8, 1), 2001, "01/m.jpg", 3.0, np.nan, 200),  # age 200 kept
    (datenum(1800, 6, 1), 2001, "01/n.jpg", 3.0, np.nan, None),  # age 201 dropped
]
WIKI_ROWS = [
    (datenum(1950, 7, 15), 2010, "33/w.jpg", 1.5, np.nan, 59),
    (datenum(1950, 1, 15), 2010, "33/x.jpg", 1.5, 2.0, None),
]


def repeated_rows(rows, times):
    """``rows`` repeated ``times`` times with distinct paths (<copy>/<path>): enough images per age to
    fill val and test."""
    return [(r[0], r[1], f"{i:03d}/{r[2]}", *r[3:]) for i in range(times) for r in rows]


def write_mat(path, struct_name, rows):
    """A .mat file laid out like imdb.mat / wiki.mat: a 1x1 struct of [1, N] fields, full_path a cell."""
    full_path = np.empty(len(rows), dtype=object)
    full_path[:] = [r[2] for r in rows]
    name = np.empty(len(rows), dtype=object)
    name[:] = ["someone"] * len(rows)
    struct = {
        "dob": np.array([r[0] for r in rows], dtype=np.float64),
        "photo_taken": np.array([r[1] for r in rows], dtype=np.uint16),
        "full_path": full_path,
        "gender": np.ones(len(rows)),
        "name": name,
        "face_score": np.array([r[3] for r in rows], dtype=np.float64),
        "second_face_score": np.array([r[4] for r in rows], dtype=np.float64),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {struct_name: struct})


def test_imdb_wiki_mat_rows_hand_computed(tmp_path):
    write_mat(tmp_path / "imdb_crop" / "imdb.mat", "imdb", IMDB_ROWS)
    write_mat(tmp_path / "wiki_crop" / "wiki.mat", "wiki", WIKI_ROWS)
    rows, total = imdb_wiki_mat_rows(tmp_path / "imdb_crop" / "imdb.mat", "imdb", "imdb_crop")
    kept = [r for r in IMDB_ROWS if r[5] is not None]
    assert total == len(IMDB_ROWS)
    assert rows["path"].tolist() == [f"imdb_crop/{r[2]}" for r in kept]
    assert rows["age"].tolist() == [r[5] for r in kept]
    meta, counts = imdb_wiki_metadata(tmp_path)
    assert counts == {"imdb": (len(kept), len(IMDB_ROWS)), "wiki": (1, 2)}
    assert meta["path"].tolist()[-1] == "wiki_crop/33/w.jpg" and meta["age"].tolist()[-1] == 59


def test_imdb_wiki_mat_errors(tmp_path):
    with pytest.raises(UserError, match="IMDB-WIKI metadata not found; run `python data/download_imdb_wiki.py`"):
        imdb_wiki_metadata(tmp_path)
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(UserError, match="bad.mat: not a readable MATLAB file"):
        imdb_wiki_mat_rows(tmp_path / "bad.mat", "imdb", "imdb_crop")
    write_mat(tmp_path / "w.mat", "wiki", WIKI_ROWS)
    with pytest.raises(UserError, match="no 'imdb' struct inside"):
        imdb_wiki_mat_rows(tmp_path / "w.mat", "imdb", "imdb_crop")
    scipy.io.savemat(tmp_path / "f.mat", {"imdb": {"dob": np.array([1.0, 2.0])}})
    with pytest.raises(UserError, match="field 'photo_taken' missing"):
        imdb_wiki_mat_rows(tmp_path / "f.mat", "imdb", "imdb_crop")


# ---------------------------------------------------------------------------------------------------
# The real scripts, run as the README says (from inside the benchmark folder)
# ---------------------------------------------------------------------------------------------------

def run_script(folder, script, *args):
    return subprocess.run([sys.executable, f"data/{script}", *map(str, args)], cwd=REPO / folder,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result, *fragments):
    """Exit status 2 and one ``error: ...`` line, the last on stderr (progress bars may precede it)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_create_agedb_script(tmp_path):
    data_dir = tmp_path / "data"
    assert_one_line_error(run_script("agedb-dir", "create_agedb.py", "--data_dir", data_dir),
                          "raw AgeDB folder not found", "on request by its authors")
    make_agedb_folder(data_dir, AGEDB_FILES)  # 3 images: no age has the 3 needed for val and test
    assert_one_line_error(run_script("agedb-dir", "create_agedb.py", "--data_dir", data_dir),
                          "AgeDB: 3 images leave val and test empty")
    assert sorted(os.listdir(data_dir)) == ["AgeDB"]  # nothing written
    names = [f"{i}_Person{i % 7}_{age}_{'mf'[i % 2]}.jpg" for i, age in enumerate(generated_ages(4))] + ["x.txt"]
    shutil.rmtree(data_dir / "AgeDB")
    make_agedb_folder(data_dir, names)
    result = run_script("agedb-dir", "create_agedb.py", "--data_dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "skipped 1 file" in result.stderr and "x.txt" in result.stderr
    table = read_split_csv(data_dir / "agedb.csv", "")
    meta = pd.read_csv(data_dir / "agedb_meta.csv")
    assert list(meta.columns) == ["age", "path"] and len(meta) == len(names) - 1
    assert dict(zip(table["path"], table["split"])) == reference_split(meta["age"], meta["path"], 3, 30)
    before = (data_dir / "agedb.csv").read_bytes()
    assert_one_line_error(run_script("agedb-dir", "create_agedb.py", "--data_dir", data_dir),
                          "already exists; pass --force")
    assert (data_dir / "agedb.csv").read_bytes() == before
    result = run_script("agedb-dir", "create_agedb.py", "--data_dir", data_dir, "--force")
    assert result.returncode == 0, result.stderr
    assert (data_dir / "agedb.csv").read_bytes() == before  # deterministic


def test_create_imdb_wiki_script(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert_one_line_error(run_script("imdb-wiki-dir", "create_imdb_wiki.py", "--data_dir", data_dir),
                          "imdb.mat: IMDB-WIKI metadata not found", "download_imdb_wiki.py")
    write_mat(data_dir / "imdb_crop" / "imdb.mat", "imdb", IMDB_ROWS)
    write_mat(data_dir / "wiki_crop" / "wiki.mat", "wiki", WIKI_ROWS)
    assert_one_line_error(run_script("imdb-wiki-dir", "create_imdb_wiki.py", "--data_dir", data_dir),
                          "8 images leave val and test empty")
    assert sorted(os.listdir(data_dir)) == ["imdb_crop", "wiki_crop"]  # nothing written
    # Enough rows per age for a held-out set with k=5: repeat the hand-computed rows.
    rows = repeated_rows(IMDB_ROWS, 12)
    write_mat(data_dir / "imdb_crop" / "imdb.mat", "imdb", rows)
    write_mat(data_dir / "wiki_crop" / "wiki.mat", "wiki", WIKI_ROWS)
    result = run_script("imdb-wiki-dir", "create_imdb_wiki.py", "--data_dir", data_dir)
    assert result.returncode == 0, result.stderr
    table = read_split_csv(data_dir / "imdb_wiki.csv", "")
    expected_ages = [r[5] for r in rows if r[5] is not None] + [59]
    assert table["age"].tolist() == expected_ages
    assert table["path"].iloc[0] == "imdb_crop/000/17/a.jpg" and table["path"].iloc[-1] == "wiki_crop/33/w.jpg"
    assert dict(zip(table["path"], table["split"])) == reference_split(table["age"], table["path"], 5, 150)
    assert (table["split"] == "val").sum() == (table["split"] == "test").sum() > 0
    assert_one_line_error(run_script("imdb-wiki-dir", "create_imdb_wiki.py", "--data_dir", data_dir),
                          "imdb_wiki.csv: already exists; pass --force")
