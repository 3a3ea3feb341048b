"""--protocol of the age programs: Puetz et al.'s AgeDB stress-test splits (Artif. Intell. Rev. 2026).

The pinned files are fetched from a local HTTP server (tests/http_server.py) standing in for GitHub; the
real files' per-age counts (tests/fixtures/agedb_protocol_counts.json, derived from the authors' CSVs)
check the shot-region rule against the regions the protocols are described with.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from folder_modules import age_program
from http_server import serve_directory

from ranksim.harness.age_flags import build_parser
from ranksim.harness.cli import UserError
from ranksim.harness.data import age_splits
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.metrics import age_shot_groups

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "agedb_protocol_counts.json").read_text())["protocols"]
IMG = 16


def ages(*spans):
    """Integer ages of inclusive (lo, hi) spans, e.g. ages((16, 27), (73, 83))."""
    return sorted(a for lo, hi in spans for a in range(lo, hi + 1))


# The regions each protocol is described with (many > 100, few < 20 train rows of the age, duplicates counted).
REGIONS = {
    "extrapolation": {"many": ages((32, 68)), "medium": ages((28, 31), (69, 72)),
                      "few": ages((16, 27), (73, 83), (85, 85))},
    "interpolation": {"many": ages((20, 41), (64, 75)), "medium": ages((42, 46), (59, 63)), "few": ages((47, 58))},
    "blindspot": {"many": ages((20, 46), (54, 73)), "medium": [], "few": ages((47, 53))},
}
REGION_ROWS = {"extrapolation": (1850, 400, 1200), "interpolation": (1700, 500, 600), "blindspot": (2350, 0, 350)}


def test_pinned_sources_are_the_authors_files():
    assert age_splits.PROTOCOLS == ("extrapolation", "interpolation", "blindspot")
    for protocol, (name, url, digest) in age_splits.PROTOCOL_SOURCES.items():
        assert name == f"agedb_{protocol}.csv"
        assert url == ("https://raw.githubusercontent.com/noah-puetz/deconstructing_deep_imbalanced_regression/"
                       f"03fc357/data/{name}")
        assert digest == FIXTURE[protocol]["sha256"]


@pytest.mark.parametrize("protocol", list(REGIONS))
def test_shot_regions_of_the_real_splits(protocol):
    counts = FIXTURE[protocol]
    train = np.repeat([int(a) for a in counts["train"]], list(counts["train"].values()))
    test = np.repeat([int(a) for a in counts["test"]], list(counts["test"].values()))
    assert (len(train), len(test)) == {"extrapolation": (8728, 3450), "interpolation": (7423, 2800),
                                       "blindspot": (10253, 2700)}[protocol]
    groups = age_shot_groups(train, test)
    for region, expected in REGIONS[protocol].items():
        assert sorted(set(test[groups[region]].tolist())) == expected, region
    assert tuple(int(groups[r].sum()) for r in ("many", "medium", "few")) == REGION_ROWS[protocol]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Synthetic images of ages 20..26: 3 distinct train images per age but 23, 2 val, 3 test per age."""
    root = tmp_path_factory.mktemp("protocol_data")
    per_age = 8
    csv = make_synthetic_age_dataset(root, train_ages=np.repeat(np.arange(20, 27), per_age), n_val=0, n_test=0,
                                     img_size=IMG, age_range=(20, 26))
    paths = [line.split(",")[1] for line in csv.read_text().splitlines()[1:]]
    return root, {age: paths[i * per_age:(i + 1) * per_age] for i, age in enumerate(range(20, 27))}


# Train rows of the tiny blind-spot split (duplicates included): 20, 21, 25, 26 many; 22, 24 medium; 23 absent.
TRAIN_ROWS = {20: 102, 21: 102, 22: 30, 24: 30, 25: 102, 26: 102}


def blindspot_csv(images):
    """A blind-spot-shaped split: train drawn with replacement from 3 images per age (the gap age 23 has
    none), val 2 and test 3 other images per age."""
    rows = ["age,path,split"]
    for age, n in TRAIN_ROWS.items():
        rows += [f"{age},{images[age][i % 3]},train" for i in range(n)]
    for age in range(20, 27):
        rows += [f"{age},{p},val" for p in images[age][3:5] if age != 23]
        rows += [f"{age},{p},test" for p in images[age][5:8]]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture()
def site(tmp_path, pool, monkeypatch):
    """The tiny split served on 127.0.0.1 and pinned as --protocol blindspot's file; a data folder with the images."""
    root, images = pool
    data = blindspot_csv(images)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "agedb_blindspot.csv").write_bytes(data)
    data_dir = tmp_path / "data"
    (data_dir / "images").mkdir(parents=True)
    for image in (root / "images").iterdir():
        (data_dir / "images" / image.name).symlink_to(image)
    with serve_directory(tmp_path / "site") as server:
        monkeypatch.setitem(age_splits.PROTOCOL_SOURCES, "blindspot",
                            ("agedb_blindspot.csv", server.url("agedb_blindspot.csv"), hashlib.sha256(data).hexdigest()))
        yield server, data, data_dir


def train_args(data_dir, store, *extra):
    return ["--data_dir", str(data_dir), "--img_size", str(IMG), "--model", "resnet18", "--batch_size", "64",
            "--workers", "0", "--store_root", str(store), "--store_name", "run", "--epoch", "1",
            "--print_freq", "1000", *extra]


def test_blindspot_run_fetches_the_pinned_file_keeps_duplicates_and_reports_the_gap(site, tmp_path):
    server, data, data_dir = site
    results = age_program().main(train_args(data_dir, tmp_path / "runs", "--protocol", "blindspot"))
    assert (data_dir / "agedb_blindspot.csv").read_bytes() == data  # installed after its sha256 matched
    assert results["protocol"] == "blindspot"
    assert results["sizes"] == {"train": sum(TRAIN_ROWS.values()), "val": 12, "test": 21}  # duplicates kept
    metrics = results["metrics"]
    assert (metrics["many"]["count"], metrics["medium"]["count"], metrics["few"]["count"]) == (12, 6, 3)
    gap = results["per_label"]["23"]  # few = the gap age only (0 train rows); its MAE is the MAE inside the gap
    assert metrics["few"]["mae"] == pytest.approx(gap["mae"])
    json_results = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())
    assert json_results["protocol"] == "blindspot" and json_results["args"]["protocol"] == "blindspot"
    # the next run finds the verified file and fetches nothing
    n_requests = len(server.requests)
    assert len(age_splits.read_protocol_split(data_dir, "blindspot")) == len(data.splitlines()) - 1
    assert len(server.requests) == n_requests


def test_published_split_run_names_its_protocol(pool, tmp_path):
    root, _ = pool
    data_dir = tmp_path / "data"
    make_synthetic_age_dataset(data_dir, n_train=40, n_val=8, n_test=8, img_size=IMG)
    results = age_program().main(train_args(data_dir, tmp_path / "runs"))
    assert results["protocol"] == "published" and results["args"]["protocol"] is None


def one_line(exc_info, *fragments):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_wrong_hash_download_leaves_nothing(site, tmp_path, monkeypatch):
    server, data, data_dir = site
    name, url, _ = age_splits.PROTOCOL_SOURCES["blindspot"]
    monkeypatch.setitem(age_splits.PROTOCOL_SOURCES, "blindspot", (name, url, "0" * 64))
    with pytest.raises(UserError) as err:
        age_program().main(train_args(data_dir, tmp_path / "runs", "--protocol", "blindspot"))
    one_line(err, "--protocol blindspot", "sha256 mismatch")
    assert sorted(p.name for p in data_dir.iterdir()) == ["images"]
    assert not (tmp_path / "runs").exists()


def test_local_file_with_another_hash_is_refused_not_replaced(site, tmp_path):
    server, data, data_dir = site
    (data_dir / "agedb_blindspot.csv").write_bytes(data.replace(b"22,", b"21,"))
    with pytest.raises(UserError) as err:
        age_program().main(train_args(data_dir, tmp_path / "runs", "--protocol", "blindspot"))
    one_line(err, "agedb_blindspot.csv: sha256", "delete the file")
    assert server.requests == []


def test_missing_file_offline_says_where_to_put_it(site, tmp_path, monkeypatch):
    server, data, data_dir = site
    name, _, digest = age_splits.PROTOCOL_SOURCES["blindspot"]
    monkeypatch.setitem(age_splits.PROTOCOL_SOURCES, "blindspot", (name, server.url("gone.csv"), digest))
    with pytest.raises(UserError) as err:
        age_program().main(train_args(data_dir, tmp_path / "runs", "--protocol", "blindspot"))
    one_line(err, "not found", "HTTP 404", f"copy the authors' agedb_blindspot.csv there (sha256 {digest})")


def test_unknown_protocol_and_imdb_wiki_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(age_program().DEFAULTS).parse_args(["--protocol", "middle"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--protocol" in err and "middle" in err and "blindspot" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError) as err:
        age_program("imdb-wiki-dir").main(["--data_dir", str(tmp_path), "--protocol", "blindspot",
                                           "--store_root", str(tmp_path / "runs")])
    one_line(err, "--protocol blindspot: the stress-test protocols re-split AgeDB only", "agedb-dir/train.py")
    assert not (tmp_path / "runs").exists()
