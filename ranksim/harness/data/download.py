"""Resumable, checksum-verified downloads and safe archive extraction (standard library only).

``download(url, dest)`` streams into ``<dest>.part`` with a progress bar. A rerun after an
interruption resumes from the bytes already there with an HTTP Range request (restarting from
zero when the server ignores Range). The sha256, when given, is checked BEFORE the file is renamed
to ``dest``, so ``dest`` only ever holds a complete, verified file. Failures are UserErrors naming
the URL; a network failure keeps the ``.part`` so the next run resumes, a checksum mismatch
deletes it.
"""
import gzip
import hashlib
import http.client
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Union

from ranksim.harness.cli import UserError, cannot_write

PathLike = Union[str, "os.PathLike[str]"]
USER_AGENT = "ranksim-download/1.0 (+python urllib)"
TIMEOUT_S = 60  # per socket operation, not for the whole transfer
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest (str, lowercase) of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def _content_range_start(header: Optional[str]) -> Optional[int]:
    """Start offset from a 'bytes START-END/TOTAL' Content-Range header (None if absent/unparsable)."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _total_from_content_range(header: Optional[str]) -> Optional[int]:
    match = re.search(r"/(\d+)\s*$", header or "")
    return int(match.group(1)) if match else None


def download(
    url: str,
    dest: PathLike,
    sha256: Optional[str] = None,
    desc: Optional[str] = None,
    chunk: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified) and return ``Path(dest)``.

    sha256: expected hex digest (any case) or None to skip the check; desc: progress-bar label
    (default: the file name); chunk: read size in bytes.
    An existing ``dest`` is returned as is when no sha256 is given or it matches; with a mismatch it
    is downloaded again and replaced only by a verified file. Raises UserError (naming the URL) on
    network/HTTP errors, keeping ``<dest>.part`` for a resume, and on a checksum mismatch, deleting
    ``<dest>.part``.
    """
    from tqdm import tqdm

    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"sha256={sha256!r} is not a 64-digit hex digest")
    if dest.is_file():
        if expected is None or sha256_of(dest, chunk) == expected:
            return dest
        print(f"{dest}: exists but its sha256 differs from the expected one; downloading it again",
              file=sys.stderr)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(dest, exc) from None
    part = dest.with_name(dest.name + ".part")

    for _attempt in range(2):  # a second attempt only after a stale .part was discarded (HTTP 416)
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The .part is as long as (or longer than) the file: it may be complete already.
                total = _total_from_content_range(exc.headers.get("Content-Range"))
                exc.close()
                if total == offset:
                    break
                part.unlink()
                continue
            raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL "
                            f"(or that the file is still published there) and rerun") from None
        except NETWORK_ERRORS as exc:
            raise UserError(f"download of {url} failed: {_describe(exc)}; check the network connection and "
                            f"rerun to resume") from None

        with response:
            status = getattr(response, "status", 200)
            if offset and (status != 206 or _content_range_start(response.headers.get("Content-Range")) != offset):
                offset = 0  # the server ignored (or mangled) the Range request: start over
            if status == 206:
                total = _total_from_content_range(response.headers.get("Content-Range"))
            else:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            _stream(response, part, offset, total, url, chunk, desc or dest.name, tqdm)
        break

    actual = sha256_of(part, chunk) if expected is not None else None
    if expected is not None and actual != expected:
        part.unlink()
        raise UserError(f"download of {url}: sha256 mismatch (expected {expected}, got {actual}); the "
                        f"partial file was deleted; rerun, and if it persists the file upstream has changed")
    os.replace(part, dest)
    return dest


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


def _stream(response, part: Path, offset: int, total: Optional[int], url: str, chunk: int, desc: str,
            tqdm) -> None:
    """Append ``response``'s body to ``part`` from ``offset`` (truncating anything after it)."""
    received = offset
    with open(part, "r+b" if offset else "wb") as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        file=sys.stderr, mininterval=0.5,
    ) as bar:
        f.seek(offset)
        f.truncate()
        try:
            while True:
                block = response.read(chunk)
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as exc:  # a full disk, not the network
                    raise cannot_write(part, exc) from None
                received += len(block)
                bar.update(len(block))
        except NETWORK_ERRORS as exc:
            f.flush()
            raise UserError(f"download of {url} interrupted after {received} bytes ({_describe(exc)}); "
                            f"rerun to resume from {part}") from None
        f.flush()
        os.fsync(f.fileno())
    if total is not None and received < total:
        raise UserError(f"download of {url} interrupted after {received} of {total} bytes; "
                        f"rerun to resume from {part}")


# ----------------------------------------------------------------------------- archives


def _is_within(base: str, target: str) -> bool:
    base = os.path.realpath(base)
    return os.path.commonpath([base, os.path.realpath(target)]) == base


def _check_tar_members(archive: tarfile.TarFile, out_dir: str, source: Path) -> None:
    for member in archive.getmembers():
        target = os.path.join(out_dir, member.name)
        if os.path.isabs(member.name) or not _is_within(out_dir, target):
            raise UserError(f"{source}: member {member.name!r} would be written outside {out_dir}; "
                            f"refusing to extract this archive")
        if member.issym() or member.islnk():
            link_base = os.path.dirname(target) if member.issym() else out_dir
            if os.path.isabs(member.linkname) or not _is_within(out_dir, os.path.join(link_base, member.linkname)):
                raise UserError(f"{source}: link {member.name!r} -> {member.linkname!r} points outside "
                                f"{out_dir}; refusing to extract this archive")
        elif not (member.isfile() or member.isdir()):
            raise UserError(f"{source}: member {member.name!r} is a device or pipe; refusing to extract")


def _check_zip_members(archive: zipfile.ZipFile, out_dir: str, source: Path) -> None:
    for name in archive.namelist():
        normalised = name.replace("\\", "/")
        if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised) or \
                not _is_within(out_dir, os.path.join(out_dir, normalised)):
            raise UserError(f"{source}: member {name!r} would be written outside {out_dir}; "
                            f"refusing to extract this archive")


def extract_archive(path: PathLike, out_dir: PathLike) -> Path:
    """Extract a .tar/.tar.gz/.tgz/.zip archive into ``out_dir`` and return ``Path(out_dir)``.

    Every member is checked before anything is written: absolute paths, '..' escapes and links
    pointing outside ``out_dir`` raise UserError. A marker file ``.<archive name>.extracted`` in
    ``out_dir`` is written after a complete extraction, so a second call is a no-op (an interrupted
    extraction has no marker and is redone).
    """
    path, out = Path(path), Path(out_dir)
    if not path.is_file():
        raise UserError(f"{path}: archive not found; download it first")
    marker = out / f".{path.name}.extracted"
    size = str(path.stat().st_size)
    if marker.is_file() and marker.read_text().strip() == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    out_str = os.path.realpath(out)
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                _check_zip_members(archive, out_str, path)
                archive.extractall(out_str)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(path, "r:*") as archive:
                _check_tar_members(archive, out_str, path)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12 / 3.9.17: a second guard
                    archive.extractall(out_str, filter="data")
                else:  # pragma: no cover - older Python: our member checks above are the guard
                    archive.extractall(out_str)
        else:
            raise UserError(f"{path}: unsupported archive type; expected .tar, .tar.gz, .tgz or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path}: damaged or incomplete archive ({type(exc).__name__}); delete it and "
                        f"download it again") from None
    marker.write_text(size + "\n")
    return out
