"""download(): checksum, resume with Range, servers without Range, errors; extract_archive safety.

Everything runs against a local HTTP server on 127.0.0.1 (tests/http_server.py), never the internet.
"""
import hashlib
import io
import os
import socket
import tarfile
import zipfile

import pytest
from http_server import serve_directory

from ranksim.harness.cli import UserError
from ranksim.harness.data.download import download, extract_archive, sha256_of

SIZE = 300_000


@pytest.fixture()
def site(tmp_path):
    """A served directory with one random binary file; returns (root, bytes, sha256 hex)."""
    root = tmp_path / "site"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "agedb.csv").write_bytes(data)
    return root, data, hashlib.sha256(data).hexdigest()


def test_sha256_of_known_digest(tmp_path):
    path = tmp_path / "abc.txt"
    path.write_bytes(b"abc")
    assert sha256_of(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_with_checksum(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "out" / "agedb.csv"
    with serve_directory(root) as server:
        assert download(server.url("agedb.csv"), dest, sha256=digest.upper(), chunk=4096) == dest
        assert dest.read_bytes() == data
        assert not (tmp_path / "out" / "agedb.csv.part").exists()
        # already there and verified: no second request
        download(server.url("agedb.csv"), dest, sha256=digest)
        download(server.url("agedb.csv"), dest)
        assert len(server.requests) == 1


def test_existing_file_with_wrong_checksum_is_replaced_by_verified_one(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    dest.write_bytes(b"old, damaged copy")
    with serve_directory(root) as server:
        download(server.url("agedb.csv"), dest, sha256=digest)
    assert dest.read_bytes() == data


def test_checksum_mismatch_leaves_nothing(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    wrong = "0" * 64
    with serve_directory(root) as server:
        url = server.url("agedb.csv")
        with pytest.raises(UserError) as exc:
            download(url, dest, sha256=wrong)
    message = str(exc.value)
    assert url in message and wrong in message and digest in message and "mismatch" in message
    assert not dest.exists() and not (tmp_path / "agedb.csv.part").exists()


def test_interrupted_download_resumes_with_range(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    part = tmp_path / "agedb.csv.part"
    with serve_directory(root, drop_after=100_000) as server:
        url = server.url("agedb.csv")
        with pytest.raises(UserError, match=r"interrupted after 100000 of 300000 bytes; rerun to resume"):
            download(url, dest, sha256=digest, chunk=8192)
        assert not dest.exists()
        assert part.read_bytes() == data[:100_000]  # kept for the resume
        download(url, dest, sha256=digest, chunk=8192)
        assert server.range_requests == ["bytes=100000-"]
        assert [r.status for r in server.requests] == [200, 206]
    assert dest.read_bytes() == data and not part.exists()


def test_server_without_range_support_restarts_from_zero(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    with serve_directory(root, support_range=False, drop_after=50_000) as server:
        url = server.url("agedb.csv")
        with pytest.raises(UserError, match="interrupted"):
            download(url, dest, sha256=digest)
        download(url, dest, sha256=digest)
        assert server.range_requests == ["bytes=50000-"]  # asked, but got the whole file (200)
        assert [r.status for r in server.requests] == [200, 200]
    assert dest.read_bytes() == data  # not the first 50,000 bytes twice


def test_complete_part_file_is_finished_without_refetching(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    (tmp_path / "agedb.csv.part").write_bytes(data)  # interrupted right before the rename
    with serve_directory(root) as server:
        download(server.url("agedb.csv"), dest, sha256=digest)
        assert [r.status for r in server.requests] == [416]
    assert dest.read_bytes() == data


def test_stale_longer_part_file_is_discarded(site, tmp_path):
    root, data, digest = site
    dest = tmp_path / "agedb.csv"
    (tmp_path / "agedb.csv.part").write_bytes(os.urandom(SIZE + 10))
    with serve_directory(root) as server:
        download(server.url("agedb.csv"), dest, sha256=digest)
        assert [r.status for r in server.requests] == [416, 200]
    assert dest.read_bytes() == data


def test_http_404_names_url(site, tmp_path):
    root, _, _ = site
    dest = tmp_path / "missing.csv"
    with serve_directory(root) as server:
        url = server.url("missing.csv")
        with pytest.raises(UserError) as exc:
            download(url, dest)
    assert str(exc.value).startswith(f"download of {url} failed: HTTP 404")
    assert not dest.exists() and not (tmp_path / "missing.csv.part").exists()


def test_connection_refused_keeps_part(tmp_path):
    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/agedb.csv"
    part = tmp_path / "agedb.csv.part"
    part.write_bytes(b"first bytes")
    with pytest.raises(UserError, match=f"download of {url} failed: .*rerun to resume"):
        download(url, tmp_path / "agedb.csv")
    assert part.read_bytes() == b"first bytes"


def test_bad_sha256_argument(tmp_path):
    with pytest.raises(ValueError, match="64-digit hex"):
        download("http://127.0.0.1:1/x", tmp_path / "x", sha256="abc")


# ----------------------------------------------------------------------------- archives


def make_tar(path, members, mode="w:gz"):
    """members: list of (name, bytes) regular files or (name, tarinfo-modifier) for special members."""
    with tarfile.open(path, mode) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if callable(content):
                content(info)
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_extract_tar_and_second_call_is_no_op(tmp_path, suffix, mode):
    archive = make_tar(tmp_path / f"imdb_crop{suffix}", [("imdb_crop/imdb.mat", b"mat"),
                                                       ("imdb_crop/01/a.jpg", b"jpg")], mode)
    out = tmp_path / "data"
    assert extract_archive(archive, out) == out
    assert (out / "imdb_crop" / "imdb.mat").read_bytes() == b"mat"
    assert (out / "imdb_crop" / "01" / "a.jpg").read_bytes() == b"jpg"
    (out / "imdb_crop" / "imdb.mat").unlink()
    extract_archive(archive, out)  # marker present: nothing re-extracted
    assert not (out / "imdb_crop" / "imdb.mat").exists()


def test_extract_zip(tmp_path):
    archive = tmp_path / "glove.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("glove.txt", "the 0.1 0.2\n")
        z.writestr("sub/readme.txt", "hi")
    out = tmp_path / "glove"
    extract_archive(archive, out)
    assert (out / "glove.txt").read_text() == "the 0.1 0.2\n" and (out / "sub" / "readme.txt").read_text() == "hi"


def symlink_to(target):
    def modify(info):
        info.type = tarfile.SYMTYPE
        info.linkname = target
    return modify


@pytest.mark.parametrize("members", [
    [("ok.txt", b"fine"), ("../evil.txt", b"escaped")],
    [("ok.txt", b"fine"), ("/tmp/ranksim_evil_abs.txt", b"escaped")],
    [("ok.txt", b"fine"), ("dir/../../evil.txt", b"escaped")],
    [("ok.txt", b"fine"), ("link", symlink_to("../../etc/passwd"))],
    [("ok.txt", b"fine"), ("link", symlink_to("/etc/passwd"))],
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-relative", "symlink-absolute"])
def test_extract_tar_rejects_escaping_members(tmp_path, members):
    archive = make_tar(tmp_path / "bad.tar", members, "w")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"bad\.tar: .*outside .*refusing to extract"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []  # checked before anything is written: not even ok.txt
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/ranksim_evil_abs.txt")


def test_extract_zip_rejects_traversal(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("../evil.txt", "escaped")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="'../evil.txt' would be written outside"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_extract_damaged_or_unknown_archive(tmp_path):
    good = make_tar(tmp_path / "a.tar.gz", [("x.bin", os.urandom(50_000))])
    damaged = tmp_path / "b.tar.gz"
    damaged.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UserError, match=r"b\.tar\.gz: damaged or incomplete archive.*download it again"):
        extract_archive(damaged, tmp_path / "out")
    assert not (tmp_path / "out" / ".b.tar.gz.extracted").exists()  # a rerun retries
    other = tmp_path / "c.rar"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported archive type"):
        extract_archive(other, tmp_path / "out")
    with pytest.raises(UserError, match="archive not found"):
        extract_archive(tmp_path / "nope.tar", tmp_path / "out")
