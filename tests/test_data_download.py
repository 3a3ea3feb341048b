"""The data download scripts of agedb-dir/ and imdb-wiki-dir/, run as subprocesses the way the READMEs say.

A local HTTP server on 127.0.0.1 (tests/http_server.py) stands in for GitHub and the ETH Zurich page
(``--url`` / ``--base_url``): checksum match, mismatch (error, nothing left in place), interrupted
download resumed with a Range request, layout checks, no overwrite without --force.
"""
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from folder_modules import load_folder_module
from http_server import serve_directory
from test_age_splits import IMDB_ROWS, WIKI_ROWS, assert_one_line_error, repeated_rows, write_mat

from ranksim.harness.data.age_splits import read_split_csv

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run_script(folder, script, *args):
    return subprocess.run([sys.executable, f"data/{script}", *map(str, args)], cwd=REPO / folder,
                          capture_output=True, text=True, timeout=120)


def load_script(folder, script):
    return load_folder_module(f"{folder.replace('-', '_')}_{script[:-3]}", REPO / folder / "data" / script)


def split_csv_bytes(n_rows=3000):
    """A valid split CSV in the published layout (big enough for several download chunks)."""
    rows = ["age,path,split"] + [f"{i % 90 + 1},AgeDB/{i}_Name_{i % 90 + 1}_m.jpg,{('train', 'val', 'test')[i % 3]}"
                                 for i in range(n_rows)]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    data = split_csv_bytes()
    (root / "agedb.csv").write_bytes(data)
    (root / "imdb_wiki.csv").write_bytes(data.replace(b"AgeDB/", b"imdb_crop/01/"))
    (root / "page.csv").write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>\n" * 20)
    return root, data, hashlib.sha256(data).hexdigest()


def test_default_urls_and_checksum_are_the_pinned_ones():
    agedb = load_script("agedb-dir", "download_split.py")
    imdb = load_script("imdb-wiki-dir", "download_split.py")
    commit = "9e1c862906e9c4c699803e0fece8b843ba6f3bc2"
    base = f"https://raw.githubusercontent.com/BorealisAI/ranksim-imbalanced-regression/{commit}"
    assert agedb.parse_args([]).url == f"{base}/agedb-dir/data/agedb.csv"
    assert imdb.parse_args([]).url == f"{base}/imdb-wiki-dir/data/imdb_wiki.csv"
    with gzip.open(FIXTURES / "agedb_split_order.json.gz", "rt") as f:
        published_sha = json.load(f)["sha256_of_source"]
    assert agedb.parse_args([]).sha256 == published_sha == \
        "ab9f8d4c7099a9d74ec5094c42b6fe9f1927a166a48d2ab800a88b2fd6081252"
    assert imdb.parse_args([]).sha256 is None
    assert load_script("imdb-wiki-dir", "download_imdb_wiki.py").parse_args([]).base_url == \
        "https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/"


def test_agedb_download_checksum_match_and_no_overwrite(site, tmp_path):
    root, data, digest = site
    data_dir = tmp_path / "data"
    with serve_directory(root) as server:
        url = server.url("agedb.csv")
        result = run_script("agedb-dir", "download_split.py", "--data_dir", data_dir, "--url", url, "--sha256", digest)
        assert result.returncode == 0, result.stderr
        assert "sha256 verified" in result.stdout and "train 1000 / val 1000 / test 1000" in result.stdout
        assert (data_dir / "agedb.csv").read_bytes() == data
        assert sorted(p.name for p in data_dir.iterdir()) == ["agedb.csv"]  # no .part / staging left
        # an existing split file is never replaced without --force, and nothing is fetched
        (data_dir / "agedb.csv").write_text("age,path,split\n1,mine.jpg,train\n")
        n_requests = len(server.requests)
        assert_one_line_error(run_script("agedb-dir", "download_split.py", "--data_dir", data_dir, "--url", url,
                                         "--sha256", digest), "agedb.csv: already exists; pass --force")
        assert (data_dir / "agedb.csv").read_text() == "age,path,split\n1,mine.jpg,train\n"
        assert len(server.requests) == n_requests
        result = run_script("agedb-dir", "download_split.py", "--data_dir", data_dir, "--url", url,
                            "--sha256", digest, "--force")
        assert result.returncode == 0, result.stderr
        assert (data_dir / "agedb.csv").read_bytes() == data


def test_agedb_download_checksum_mismatch_leaves_nothing(site, tmp_path):
    root, _, _ = site
    data_dir = tmp_path / "data"
    with serve_directory(root) as server:
        # default --sha256 is the published file's, which the served file is not
        result = run_script("agedb-dir", "download_split.py", "--data_dir", data_dir, "--url", server.url("agedb.csv"))
    assert_one_line_error(result, "sha256 mismatch", "ab9f8d4c7099a9d74ec5094c42b6fe9f1927a166a48d2ab800a88b2fd6081252")
    assert list(data_dir.iterdir()) == []
    assert_one_line_error(run_script("agedb-dir", "download_split.py", "--data_dir", data_dir, "--sha256", "abc"),
                          "--sha256 abc: not a sha256 digest")


def test_agedb_download_interrupted_then_resumed(site, tmp_path):
    root, data, digest = site
    data_dir = tmp_path / "data"
    args = ["--data_dir", data_dir, "--sha256", digest]
    with serve_directory(root, drop_after=20_000) as server:
        url = server.url("agedb.csv")
        assert_one_line_error(run_script("agedb-dir", "download_split.py", *args, "--url", url),
                              "interrupted after 20000", "rerun to resume")
        assert not (data_dir / "agedb.csv").exists()
        parts = [p for p in data_dir.iterdir()]
        assert len(parts) == 1 and parts[0].name.endswith(".part") and parts[0].stat().st_size == 20_000
        result = run_script("agedb-dir", "download_split.py", *args, "--url", url)
        assert result.returncode == 0, result.stderr
        assert server.range_requests == ["bytes=20000-"]
    assert (data_dir / "agedb.csv").read_bytes() == data
    assert sorted(p.name for p in data_dir.iterdir()) == ["agedb.csv"]


def test_imdb_wiki_split_download_checks_the_layout(site, tmp_path):
    root, data, _ = site
    data_dir = tmp_path / "data"
    with serve_directory(root) as server:
        result = run_script("imdb-wiki-dir", "download_split.py", "--data_dir", data_dir,
                            "--url", server.url("page.csv"))
        assert_one_line_error(result, "not a split CSV and was deleted", "missing column(s) age,path,split")
        assert list(data_dir.iterdir()) == []
        assert_one_line_error(run_script("imdb-wiki-dir", "download_split.py", "--data_dir", data_dir,
                                         "--url", server.url("missing.csv")), "HTTP 404", "missing.csv")
        result = run_script("imdb-wiki-dir", "download_split.py", "--data_dir", data_dir,
                            "--url", server.url("imdb_wiki.csv"))
    assert result.returncode == 0, result.stderr
    assert "layout verified (no published checksum)" in result.stdout
    table = read_split_csv(data_dir / "imdb_wiki.csv", "")
    assert len(table) == 3000 and table["path"].iloc[0] == "imdb_crop/01/0_Name_1_m.jpg"
    assert sorted(p.name for p in data_dir.iterdir()) == ["imdb_wiki.csv"]


def make_tarball(site_dir, work_dir, folder, struct_name, rows, with_mat=True):
    """<site_dir>/<folder>.tar laid out like the ETH tarballs: <folder>/<struct>.mat and <folder>/NN/*.jpg."""
    src = work_dir / "tar_src"
    if with_mat:
        write_mat(src / folder / f"{struct_name}.mat", struct_name, rows)
    for row in rows:
        image = src / folder / row[2]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"\xff\xd8 not really a jpeg " + row[2].encode())
    with tarfile.open(site_dir / f"{folder}.tar", "w") as tar:
        tar.add(src / folder, arcname=folder)


def test_download_imdb_wiki_interrupted_resumed_extracted_then_converted(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    imdb_rows = repeated_rows(IMDB_ROWS, 6)  # enough images per age for a val and test image
    make_tarball(site_dir, tmp_path / "imdb", "imdb_crop", "imdb", imdb_rows)
    make_tarball(site_dir, tmp_path / "wiki", "wiki_crop", "wiki", WIKI_ROWS)
    data_dir = tmp_path / "data"
    with serve_directory(site_dir, drop_after=4096) as server:
        base_url = server.url("")
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir, "--base_url", base_url)
        assert_one_line_error(result, "imdb_crop.tar interrupted after 4096", "rerun to resume")
        assert not (data_dir / "imdb_crop.tar").exists() and (data_dir / "imdb_crop.tar.part").stat().st_size == 4096
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir, "--base_url", base_url)
        assert result.returncode == 0, result.stderr
        assert server.range_requests == ["bytes=4096-"]
        for folder in ("imdb_crop", "wiki_crop"):
            assert (data_dir / f"{folder}.tar").read_bytes() == (site_dir / f"{folder}.tar").read_bytes()
            assert (data_dir / folder / ".extracted").is_file()
        assert (data_dir / "imdb_crop" / "005" / "17" / "a.jpg").is_file() and (data_dir / "wiki_crop" / "wiki.mat").is_file()
        # a rerun finds everything done and fetches nothing
        n_requests = len(server.requests)
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir, "--base_url", base_url)
        assert result.returncode == 0 and result.stdout.count("already extracted") == 2, result.stderr
        assert len(server.requests) == n_requests
    result = run_script("imdb-wiki-dir", "create_imdb_wiki.py", "--data_dir", data_dir)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(data_dir / "imdb_wiki.csv")
    assert table["age"].tolist() == [r[5] for r in imdb_rows + WIKI_ROWS if r[5] is not None]
    assert (table["split"] == "val").sum() > 0
    assert all((data_dir / p).is_file() for p in table["path"])  # every listed image was extracted


def test_download_imdb_wiki_bad_tarball_and_missing_server_file(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    make_tarball(site_dir, tmp_path / "wiki", "wiki_crop", "wiki", WIKI_ROWS, with_mat=False)
    data_dir = tmp_path / "data"
    with serve_directory(site_dir) as server:
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir,
                            "--base_url", server.url(""), "--parts", "wiki", "--delete_tar")
        assert_one_line_error(result, "wiki_crop.tar: extracted, but", "wiki.mat is missing")
        assert not (data_dir / "wiki_crop" / ".extracted").exists()
        assert (data_dir / "wiki_crop.tar").is_file()  # kept for inspection: --delete_tar only after success
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir,
                            "--base_url", server.url(""), "--parts", "imdb")
        assert_one_line_error(result, "HTTP 404", "imdb_crop.tar")
    make_tarball(site_dir, tmp_path / "wiki2", "wiki_crop", "wiki", WIKI_ROWS)
    data_dir = tmp_path / "data2"
    with serve_directory(site_dir) as server:
        result = run_script("imdb-wiki-dir", "download_imdb_wiki.py", "--data_dir", data_dir,
                            "--base_url", server.url(""), "--parts", "wiki", "--delete_tar")
    assert result.returncode == 0, result.stderr
    assert not (data_dir / "wiki_crop.tar").exists() and (data_dir / "wiki_crop" / "wiki.mat").is_file()
