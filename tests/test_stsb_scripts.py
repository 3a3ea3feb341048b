"""STS-B-DIR download / creation scripts against a local HTTP server (no internet): the published
split download with pinned checksums, the GLUE STS-B -> STS-B-DIR creation, and the GloVe download."""
import hashlib
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from folder_modules import load_folder_module
from http_server import serve_directory

from ranksim.harness.cli import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
STSB_DIR = ROOT / "sts-b-dir"
HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


download_script = load_folder_module("stsb_download_script", STSB_DIR / "data" / "download_sts_b_dir.py")
create_script = load_folder_module("stsb_create_script", STSB_DIR / "data" / "create_sts_b_dir.py")
glove_script = load_folder_module("stsb_glove_script", STSB_DIR / "glove" / "download_glove.py")
stsb_data = load_folder_module("stsb_datasets_scripts", STSB_DIR / "datasets.py")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tsv(rows) -> bytes:
    lines = [HEADER] + [f"{i}\tmain-news\tf\t2012\t{i:04d}\tnone\tnone\t{a}\t{b}\t{s}" for i, (a, b, s) in enumerate(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_published_urls_are_pinned_commits():
    urls = download_script.file_urls("ranksim")
    assert urls["train_new.tsv"] == ("https://raw.githubusercontent.com/BorealisAI/ranksim-imbalanced-regression/"
                                     "9e1c862906e9c4c699803e0fece8b843ba6f3bc2/sts-b-dir/glue_data/STS-B/train_new.tsv")
    assert download_script.file_urls("yang")["test_new.tsv"].startswith(
        "https://raw.githubusercontent.com/YyzHarry/imbalanced-regression/a6fdc45d45c04e6f5c40f43925bc66e580911084/")
    for source in download_script.SOURCES.values():
        assert set(source["sha256"]) == set(download_script.FILES)


def test_download_split_files_verifies_and_keeps_user_files(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    contents = {name: tsv([("A cat.", "A dog.", f"{i}.0")]) for i, name in enumerate(download_script.FILES)}
    for name, data in contents.items():
        (site / name).write_bytes(data)
    checksums = {name: sha256(data) for name, data in contents.items()}
    out = tmp_path / "STS-B"
    with serve_directory(site) as server:
        urls = download_script.file_urls("ranksim", base_url=server.url(""))
        paths = download_script.download_split_files(urls, checksums, out)
        assert {p.name: p.read_bytes() for p in paths.values()} == contents
        assert len(stsb_data.load_splits(out, 40)["test"]) == 1
        # a user's different file is not replaced without --force
        (out / "dev_new.tsv").write_bytes(b"mine")
        with pytest.raises(UserError, match=r"dev_new.tsv: exists and differs .* pass --force"):
            download_script.download_split_files(urls, checksums, out)
        assert (out / "dev_new.tsv").read_bytes() == b"mine"
        download_script.download_split_files(urls, checksums, out, force=True)
        assert (out / "dev_new.tsv").read_bytes() == contents["dev_new.tsv"]


def test_download_script_checks_the_pinned_sha256(tmp_path, capsys):
    """Files that are not the published ones fail the pinned check: one line, exit 2, nothing kept."""
    site = tmp_path / "site"
    site.mkdir()
    for name in download_script.FILES:
        (site / name).write_bytes(tsv([("A cat.", "A dog.", "1.0")]))
    out = tmp_path / "STS-B"
    with serve_directory(site) as server:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(download_script.main, ["--base_url", server.url(""), "--out_dir", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error: download of") and "sha256 mismatch (expected cc71336e" in err
    assert not out.exists() or not any(out.iterdir())


def glue_rows(rng, n_per_bin):
    """GLUE-like rows with n_per_bin scores in each of the 20 bins (quotes included, as in GLUE)."""
    rows = []
    for b in range(20):
        for k in range(n_per_bin):
            score = min(5.0, b * 0.25 + rng.uniform(0, 0.2499))
            rows.append((f'Sentence "{b}" number {k}.', f"Another one {k}.", f"{score:.3f}"))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def test_create_sts_b_dir_from_a_glue_zip(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rows = glue_rows(rng, 12)
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "STS-B.zip", "w") as archive:
        archive.writestr("STS-B/train.tsv", tsv(rows[:180]))
        archive.writestr("STS-B/dev.tsv", tsv(rows[180:]))
        archive.writestr("STS-B/test.tsv", b"index\tsentence1\tsentence2\n")
    glue = tmp_path / "glue_data"
    with serve_directory(site) as server:
        url = server.url("STS-B.zip")
        create_script.main(["--glue_dir", str(glue), "--url", url, "--per_bin", "4", "--seed", "3"])
        first = {name: (glue / "STS-B" / f"{name}_new.tsv").read_text() for name in ("train", "dev", "test")}
        splits = stsb_data.load_splits(glue / "STS-B", 40)
        assert {k: len(v) for k, v in splits.items()} == {"train": 240 - 80, "val": 40, "test": 40}
        # 2 dev and 2 test pairs from every one of the 20 bins
        for name in ("val", "test"):
            bins = Counter(min(int(s * 4), 19) for s in splits[name].scores)
            assert bins == {b: 2 for b in range(20)}
        # re-indexed from 0; the GLUE index kept in old_index; the quotes survive
        lines = first["dev"].splitlines()
        assert lines[0] == HEADER and [line.split("\t")[0] for line in lines[1:4]] == ["0", "1", "2"]
        assert '"' in first["train"]
        # all pooled pairs used exactly once
        pooled = sorted(f"{a}|{b}" for a, b, _ in rows)
        got = sorted(line.split("\t")[7] + "|" + line.split("\t")[8]
                     for text in first.values() for line in text.splitlines()[1:])
        assert got == pooled
        # the existing split is not replaced without --force; the same seed reproduces it
        with pytest.raises(SystemExit):
            run_cli(create_script.main, ["--glue_dir", str(glue), "--url", url, "--per_bin", "4"])
        assert "exists (maybe the published split); pass --force" in capsys.readouterr().err
        create_script.main(["--glue_dir", str(glue), "--url", url, "--per_bin", "4", "--seed", "3", "--force"])
        assert {n: (glue / "STS-B" / f"{n}_new.tsv").read_text() for n in first} == first
        create_script.main(["--glue_dir", str(glue), "--url", url, "--per_bin", "4", "--seed", "4", "--force"])
        assert (glue / "STS-B" / "dev_new.tsv").read_text() != first["dev"]


def test_glove_download_resumes_and_unpacks(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    text = "".join(f"w{i} " + " ".join(f"{x:.4f}" for x in rng.standard_normal(4)) + "\n" for i in range(3000))
    with zipfile.ZipFile(site / "glove.tiny.4d.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("glove.tiny.4d.txt", text)
    out = tmp_path / "glove"
    with serve_directory(site) as server:
        url = server.url("glove.tiny.4d.zip")
        server.drop_next(20_000)  # the first transfer breaks off
        with pytest.raises(UserError, match="interrupted"):
            glove_script.main(["--url", url, "--out_dir", str(out)])
        assert (out / "glove.tiny.4d.zip.part").stat().st_size == 20_000
        path = glove_script.main(["--url", url, "--out_dir", str(out)])
        assert server.range_requests[-1] == "bytes=20000-"
    assert path == out / "glove.tiny.4d.txt" and path.read_text() == text
    assert not (out / "glove.tiny.4d.zip").exists()
    matrix, found = stsb_data.load_glove_matrix(path, ["@@PADDING@@", "@@UNKNOWN@@", "w7"], 4, seed=0,
                                                log=lambda m: None)
    assert found == 1 and matrix[2].tolist() == pytest.approx([float(x) for x in text.splitlines()[7].split()[1:]])


def test_glove_download_needs_a_zip_url(capsys):
    with pytest.raises(SystemExit):
        run_cli(glove_script.main, ["--url", "https://example.org/glove.txt"])
    assert "expected a .zip file" in capsys.readouterr().err

