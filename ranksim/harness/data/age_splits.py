"""Data preparation shared by AgeDB-DIR and IMDB-WIKI-DIR: metadata rows, balanced split, split CSVs.

The pipeline of both benchmarks is: raw images -> metadata rows ``(age, path)`` -> balanced
val/test split -> ``<data_dir>/<name>.csv`` with columns ``age,path,split`` (paths relative to
``data_dir``). This module holds every step the two benchmarks share, down to their data scripts'
common flags, so the scripts under ``agedb-dir/data/`` and ``imdb-wiki-dir/data/`` stay thin:

- :func:`balanced_split` / :func:`make_split_table`: the DIR balanced split (docs/published_behaviour.md §6). For each integer
  age 0..120 in order, that age's rows are shuffled with Python's ``random`` seeded 666; the first
  ``min(count // k, cap)`` go to val, the next as many to test, the rest (and every age outside
  0..120) to train. AgeDB uses k=3, cap=30; IMDB-WIKI k=5, cap=150.
- :func:`agedb_metadata`: rows from the raw AgeDB folder (``<id>_<name>_<age>_<gender>.jpg``).
- :func:`imdb_wiki_metadata`: rows from ``imdb_crop/imdb.mat`` / ``wiki_crop/wiki.mat`` (MATLAB
  ``datenum`` birth dates, face-score filters).
- :func:`write_split_csv`, :func:`read_split_csv`, :func:`validate_split_table`: CSV I/O that never
  overwrites without ``force`` and reports bad files as one-line :class:`UserError` messages.
- :func:`download_split_csv`: a published split CSV, checked before it is installed.
- :func:`split_creation_parser` / :func:`create_split_files` and :func:`split_download_parser` /
  :func:`download_split`: the command lines and steps the two folders' ``create_*.py`` and
  ``download_split.py`` scripts share; each script only names its files, defaults and help texts.
"""
import argparse
import os
import random
import re
import tempfile
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from ranksim.harness.cli import OneLineArgumentParser, UserError

SPLIT_SEED = 666  # the seed the published splits were drawn with
MIN_AGE, MAX_AGE = 0, 120  # ages visited by the balanced split; others always go to train
SPLIT_COLUMNS = ("age", "path", "split")
SPLITS = ("train", "val", "test")
AGEDB_K, AGEDB_CAP = 3, 30
IMDB_WIKI_K, IMDB_WIKI_CAP = 5, 150


# ---------------------------------------------------------------------------------------------------
# Balanced split
# ---------------------------------------------------------------------------------------------------

def _integer_ages(ages: Sequence) -> np.ndarray:
    """Ages as an int64 array [N]; ValueError if any age is not a whole number."""
    ages = np.asarray(ages)
    if ages.ndim != 1:
        raise ValueError(f"ages must be one-dimensional, got shape {ages.shape}")
    if ages.dtype.kind == "f":
        if not np.all(np.isfinite(ages)) or np.any(ages != np.round(ages)):
            raise ValueError("ages must be whole numbers (the split groups rows by integer age)")
    elif ages.size and ages.dtype.kind not in "iu":
        raise ValueError(f"ages must be numbers, got dtype {ages.dtype}")
    return ages.astype(np.int64)


def balanced_split(ages: Sequence, k: int, cap: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Assign every row to train/val/test with the DIR balanced val/test construction (docs/published_behaviour.md §6).

    ages: [N] integer ages, one per row, in the row order of the metadata (the order matters: it is
        the order each age's rows have before they are shuffled).
    k, cap: per age, ``curr = min(count // k, cap)`` rows go to val and the next ``curr`` to test.
    seed: seed of the private ``random.Random`` used for the shuffles (same stream as
        ``random.seed(seed)`` followed by ``random.shuffle`` calls, without touching global state).
    Returns an object array [N] of "train" / "val" / "test".
    """
    if k < 1 or cap < 0:
        raise ValueError(f"need k >= 1 and cap >= 0, got k={k}, cap={cap}")
    ages = _integer_ages(ages)
    split = np.full(len(ages), "train", dtype=object)
    rng = random.Random(seed)
    # Row indices per age in row order; shuffling indices permutes exactly like shuffling paths
    # (random.shuffle only depends on the list length), and stays correct with duplicate paths.
    order = np.argsort(ages, kind="stable")
    sorted_ages = ages[order]
    for age in range(MIN_AGE, MAX_AGE + 1):
        lo, hi = np.searchsorted(sorted_ages, [age, age + 1])
        rows = order[lo:hi].tolist()
        rng.shuffle(rows)  # no-op (and no random draws) for fewer than two rows
        curr = min(len(rows) // k, cap)
        split[rows[:curr]] = "val"
        split[rows[curr:2 * curr]] = "test"
    return split


def expected_split_sizes(ages: Sequence, k: int, cap: int) -> Dict[str, int]:
    """Split sizes {"train","val","test"} that :func:`balanced_split` yields for ``ages``, from counts alone."""
    ages = _integer_ages(ages)
    counts = np.bincount(ages[(ages >= MIN_AGE) & (ages <= MAX_AGE)] - MIN_AGE, minlength=0)
    held_out = int(np.minimum(counts // k, cap).sum())
    return {"train": len(ages) - 2 * held_out, "val": held_out, "test": held_out}


def make_split_table(meta: pd.DataFrame, k: int, cap: int, seed: int = SPLIT_SEED,
                     source: str = "metadata") -> pd.DataFrame:
    """Metadata ``age,path`` rows -> the split table ``age,path,split`` (same row order).

    UserError (naming ``source``) when no age 0..120 has the ``k`` rows needed to hold one out, since
    val and test would be empty: the raw data is then incomplete.
    """
    table = pd.DataFrame({"age": _integer_ages(meta["age"].to_numpy()), "path": meta["path"].to_numpy()})
    table["split"] = balanced_split(table["age"].to_numpy(), k=k, cap=cap, seed=seed)
    if cap > 0 and not (table["split"] == "val").any():
        raise UserError(f"{source}: {len(table)} images leave val and test empty (an age needs at least {k} "
                        f"images to give one to each); is the raw data complete?")
    return table


def split_summary(table: pd.DataFrame) -> str:
    """One line with the size of each split, e.g. ``train 12208 / val 2140 / test 2140 rows``."""
    counts = table["split"].value_counts()
    return " / ".join(f"{name} {int(counts.get(name, 0))}" for name in SPLITS) + " rows"


# ---------------------------------------------------------------------------------------------------
# CSV files
# ---------------------------------------------------------------------------------------------------

def refuse_overwrite(path: "str | os.PathLike", force: bool) -> None:
    """UserError if ``path`` exists and ``force`` is False: prepared data is never replaced silently."""
    if os.path.exists(path) and not force:
        raise UserError(f"{os.fspath(path)}: already exists; pass --force to replace it "
                        f"(or move it away first)")


def write_csv_atomic(table: pd.DataFrame, path: "str | os.PathLike", force: bool = False) -> None:
    """Write ``table`` as CSV (no index) to ``path`` via a temp file + rename, so a crash leaves either
    the old file or the complete new one. Refuses to replace an existing file unless ``force``."""
    refuse_overwrite(path, force)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            table.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_split_csv(table: pd.DataFrame, path: "str | os.PathLike", force: bool = False) -> None:
    """Validate and write a split table (columns exactly ``age,path,split``) atomically."""
    validate_split_table(table, os.fspath(path))
    write_csv_atomic(table[list(SPLIT_COLUMNS)], path, force=force)


def validate_split_table(table: pd.DataFrame, source: str, max_age: int = 200) -> pd.DataFrame:
    """Check the published split layout; returns ``table`` with ``age`` as int64.

    Requires columns age,path,split; whole-number ages in [0, max_age]; non-empty paths; split values
    in {train,val,test}; no split empty. ``source`` names the file in the UserError message.
    """
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {','.join(missing)} (found {','.join(map(str, table.columns))}); "
                        f"a split file needs the header age,path,split")
    if len(table) == 0:
        raise UserError(f"{source}: has a header but no rows; recreate or re-download it")
    ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(ages) | (ages != np.round(ages)) | (ages < 0) | (ages > max_age)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{source}: row {row + 2} has age {table['age'].iloc[row]!r}, expected a whole number "
                        f"in 0..{max_age} ({int(bad.sum())} such rows); recreate or re-download the file")
    paths = table["path"]
    bad_path = paths.isna() | (paths.astype(str).str.strip() == "")
    if bad_path.any():
        row = int(np.flatnonzero(bad_path.to_numpy())[0])
        raise UserError(f"{source}: row {row + 2} has an empty path ({int(bad_path.sum())} such rows); "
                        f"recreate or re-download the file")
    bad_split = ~table["split"].isin(SPLITS)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise UserError(f"{source}: row {row + 2} has split {table['split'].iloc[row]!r}, expected one of "
                        f"train/val/test; recreate or re-download the file")
    empty = [name for name in SPLITS if not (table["split"] == name).any()]
    if empty:
        raise UserError(f"{source}: no rows in split(s) {','.join(empty)}; recreate or re-download the file")
    table = table.copy()
    table["age"] = ages.astype(np.int64)
    return table


def read_split_csv(path: "str | os.PathLike", how_to_get: str) -> pd.DataFrame:
    """Read and validate a split CSV; one-line UserError (mentioning ``how_to_get``) if missing or bad."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: split file not found; {how_to_get}")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({type(exc).__name__}); {how_to_get}") from None
    return validate_split_table(table, path)


# ---------------------------------------------------------------------------------------------------
# AgeDB: raw folder -> metadata rows
# ---------------------------------------------------------------------------------------------------

AGEDB_DIRNAME = "AgeDB"
# <id>_<name>_<age>_<gender>.jpg, e.g. 11706_OliviaHussey_31_f.jpg (the name may itself hold "_").
AGEDB_FILE_PATTERN = re.compile(r"^(?P<id>\d+)_(?P<name>.+)_(?P<age>\d+)_(?P<gender>[mfMF])\.jpg$",
                                re.IGNORECASE)
AGEDB_HOW_TO_GET = ("AgeDB is distributed on request by its authors (https://ibug.doc.ic.ac.uk/resources/agedb/); "
                    "unzip it so the images are in {raw_dir}/")


def agedb_metadata(data_dir: "str | os.PathLike") -> Tuple[pd.DataFrame, List[str]]:
    """Metadata rows of the raw AgeDB folder ``<data_dir>/AgeDB/``.

    Returns (DataFrame with columns age (int64), path ("AgeDB/<file>"), in sorted file-name order so
    the result does not depend on the file system's listing order; names of the files skipped
    because they do not match ``<id>_<name>_<age>_<gender>.jpg``). Hidden files are ignored.
    UserError if the folder is missing or no file matches.
    """
    raw_dir = os.path.join(os.fspath(data_dir), AGEDB_DIRNAME)
    if not os.path.isdir(raw_dir):
        raise UserError(f"{raw_dir}: raw AgeDB folder not found; " + AGEDB_HOW_TO_GET.format(raw_dir=raw_dir))
    ages, paths, skipped = [], [], []
    for name in sorted(os.listdir(raw_dir)):
        if name.startswith("."):
            continue
        match = AGEDB_FILE_PATTERN.match(name)
        if match is None or not os.path.isfile(os.path.join(raw_dir, name)):
            skipped.append(name)
            continue
        ages.append(int(match.group("age")))
        paths.append(f"{AGEDB_DIRNAME}/{name}")
    if not paths:
        example = f" (e.g. {skipped[0]!r})" if skipped else ""
        raise UserError(f"{raw_dir}: no file named <id>_<name>_<age>_<gender>.jpg among {len(skipped)} entries"
                        f"{example}; " + AGEDB_HOW_TO_GET.format(raw_dir=raw_dir))
    return pd.DataFrame({"age": np.asarray(ages, dtype=np.int64), "path": paths}), skipped


# ---------------------------------------------------------------------------------------------------
# IMDB-WIKI: .mat metadata -> rows
# ---------------------------------------------------------------------------------------------------

IMDB_WIKI_SOURCES = (("imdb", "imdb_crop"), ("wiki", "wiki_crop"))  # (struct name, folder), in row order
IMDB_WIKI_MAX_AGE = 200
_MATLAB_YEAR0_DAYS = 366  # MATLAB datenum 1 is 0000-01-01; Python ordinal 1 is 0001-01-01 (year 0 is leap)
_UNIX_EPOCH_ORDINAL = 719163  # datetime.date(1970, 1, 1).toordinal()
_MAX_ORDINAL = 3652059  # datetime.date.max.toordinal()


def matlab_datenum_birth(dob: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calendar year and month of MATLAB datenums, vectorised.

    Same result as ``d = datetime.fromordinal(int(dob) - 366)`` per entry (fractions of a day are
    dropped), via numpy datetime64 instead of a Python loop over ~500K rows.
    dob: [N] float datenums. Returns (year int64 [N], month int64 [N] in 1..12, valid bool [N]);
    entries that are NaN/inf or outside datetime's range (e.g. dob 0) have valid False (year/month
    then hold a placeholder).
    """
    dob = np.asarray(dob, dtype=np.float64).ravel()
    finite = np.isfinite(dob)
    ordinal = np.trunc(np.where(finite, dob, 0.0)) - _MATLAB_YEAR0_DAYS
    valid = finite & (ordinal >= 1) & (ordinal <= _MAX_ORDINAL)
    days_since_epoch = np.where(valid, ordinal, _UNIX_EPOCH_ORDINAL).astype(np.int64) - _UNIX_EPOCH_ORDINAL
    dates = days_since_epoch.astype("datetime64[D]")
    year = dates.astype("datetime64[Y]").astype(np.int64) + 1970
    month = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    return year, month, valid


def imdb_wiki_ages(dob: Sequence[float], photo_taken: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Age at the photo: photo year - birth year, minus one when born in July or later (the photo is
    assumed to be taken mid-year). Returns (age int64 [N], valid bool [N] = dob and year usable)."""
    year, month, valid = matlab_datenum_birth(dob)
    taken = np.asarray(photo_taken, dtype=np.float64).ravel()
    valid &= np.isfinite(taken)
    age = np.where(valid, taken, 0).astype(np.int64) - year - (month >= 7)
    return age, valid


def _mat_field(struct: np.void, field: str, mat_path: str) -> np.ndarray:
    try:
        return np.asarray(struct[field]).ravel()
    except (KeyError, ValueError, IndexError):
        raise UserError(f"{mat_path}: field {field!r} missing from the metadata struct; the file is not the "
                        f"IMDB-WIKI metadata, re-run data/download_imdb_wiki.py") from None


def _cell_string(cell) -> str:
    """A MATLAB cell entry holding one string (loaded as a nested array) -> str."""
    while isinstance(cell, np.ndarray):
        if cell.size == 0:
            return ""
        cell = cell.flat[0]
    return str(cell)


def imdb_wiki_mat_rows(mat_path: "str | os.PathLike", struct_name: str, folder: str) -> Tuple[pd.DataFrame, int]:
    """Rows ``age,path`` kept from one IMDB-WIKI metadata file (``imdb.mat`` or ``wiki.mat``).

    The file holds a 1x1 struct ``struct_name`` whose fields are [1, N] arrays: dob (MATLAB datenum),
    photo_taken (year), full_path (cell of strings), face_score (-inf when no face), second_face_score
    (NaN when there is no second face). Kept rows: valid dob, face_score >= 1, second_face_score NaN or
    <= 0, 0 <= age <= 200. path = ``<folder>/<full_path>``. Returns (rows in file order, total rows).
    """
    import scipy.io  # local import: only the data scripts need it

    mat_path = os.fspath(mat_path)
    if not os.path.isfile(mat_path):
        raise UserError(f"{mat_path}: IMDB-WIKI metadata not found; run `python data/download_imdb_wiki.py` "
                        f"(downloads and extracts imdb_crop.tar and wiki_crop.tar into the data folder)")
    try:
        mat = scipy.io.loadmat(mat_path)
    except Exception as exc:  # scipy raises several types (ValueError, TypeError, OSError) for bad files
        raise UserError(f"{mat_path}: not a readable MATLAB file ({type(exc).__name__}); the download or "
                        f"extraction was probably cut short, delete it and re-run data/download_imdb_wiki.py") from None
    if struct_name not in mat:
        raise UserError(f"{mat_path}: no {struct_name!r} struct inside (found {sorted(k for k in mat if not k.startswith('__'))}); "
                        f"expected the IMDB-WIKI metadata, re-run data/download_imdb_wiki.py")
    struct = np.asarray(mat[struct_name]).ravel()[0]
    dob = _mat_field(struct, "dob", mat_path).astype(np.float64)
    taken = _mat_field(struct, "photo_taken", mat_path).astype(np.float64)
    full_path = _mat_field(struct, "full_path", mat_path)
    face = _mat_field(struct, "face_score", mat_path).astype(np.float64)
    second = _mat_field(struct, "second_face_score", mat_path).astype(np.float64)
    lengths = {len(dob), len(taken), len(full_path), len(face), len(second)}
    if len(lengths) != 1:
        raise UserError(f"{mat_path}: fields dob/photo_taken/full_path/face_score/second_face_score have "
                        f"different lengths {sorted(lengths)}; re-run data/download_imdb_wiki.py")
    age, valid = imdb_wiki_ages(dob, taken)
    with np.errstate(invalid="ignore"):  # NaN comparisons are False, which is what we want
        keep = (valid & (face >= 1) & (np.isnan(second) | (second <= 0))
                & (age >= 0) & (age <= IMDB_WIKI_MAX_AGE))
    kept = np.flatnonzero(keep)
    paths = [f"{folder}/{_cell_string(full_path[i])}" for i in kept]
    return pd.DataFrame({"age": age[kept], "path": paths}), len(dob)


def imdb_wiki_metadata(data_dir: "str | os.PathLike") -> Tuple[pd.DataFrame, Dict[str, Tuple[int, int]]]:
    """Metadata rows from ``<data_dir>/imdb_crop/imdb.mat`` then ``<data_dir>/wiki_crop/wiki.mat``.

    Returns (rows ``age,path``, {struct name: (kept rows, total rows)}).
    """
    frames, counts = [], {}
    for struct_name, folder in IMDB_WIKI_SOURCES:
        mat_path = os.path.join(os.fspath(data_dir), folder, f"{struct_name}.mat")
        rows, total = imdb_wiki_mat_rows(mat_path, struct_name, folder)
        frames.append(rows)
        counts[struct_name] = (len(rows), total)
    return pd.concat(frames, ignore_index=True), counts


# ---------------------------------------------------------------------------------------------------
# Published split files
# ---------------------------------------------------------------------------------------------------

# The RankSim repository at the commit whose split files the paper's numbers were produced with (docs/published_behaviour.md §6).
PUBLISHED_REPO = "BorealisAI/ranksim-imbalanced-regression"
PUBLISHED_COMMIT = "9e1c862906e9c4c699803e0fece8b843ba6f3bc2"
AGEDB_CSV_SHA256 = "ab9f8d4c7099a9d74ec5094c42b6fe9f1927a166a48d2ab800a88b2fd6081252"


def raw_github_url(repo: str, commit: str, path: str) -> str:
    """URL of ``path`` in GitHub repository ``repo`` ("owner/name") at ``commit``."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def download_split_csv(url: str, dest: "str | os.PathLike", sha256: "str | None" = None,
                       force: bool = False) -> pd.DataFrame:
    """Download a published split CSV to ``dest`` and return its validated table.

    The file is fetched (resumably) to ``<dest>.download``; its sha256 (when given) and its layout
    (:func:`validate_split_table`) are checked before it is renamed to ``dest``, so ``dest`` only ever
    holds a verified file. A file that fails a check is deleted. ``dest`` is replaced only with ``force``.
    """
    from ranksim.harness.data.download import download  # local import: only the download scripts need it

    dest = os.fspath(dest)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UserError(f"--sha256 {sha256}: not a sha256 digest (64 hex digits); pass the full hex digest")
    refuse_overwrite(dest, force)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    staging = dest + ".download"
    download(url, staging, sha256=sha256, desc=os.path.basename(dest))
    try:
        table = read_split_csv(staging, f"check --url {url}")
    except UserError as exc:
        os.unlink(staging)
        raise UserError(f"{url}: the downloaded file is not a split CSV and was deleted ({exc}); "
                        f"check --url") from None
    os.replace(staging, dest)
    return table


# ---------------------------------------------------------------------------------------------------
# The data scripts' command lines (agedb-dir/data/, imdb-wiki-dir/data/)
# ---------------------------------------------------------------------------------------------------

def split_creation_parser(description: str, name: str, data_dir_help: str) -> argparse.ArgumentParser:
    """Flags of ``create_agedb.py`` / ``create_imdb_wiki.py``: ``--data_dir`` and ``--force``.

    ``name`` is the split file's stem: the script writes ``<name>.csv`` and ``<name>_meta.csv``.
    """
    parser = OneLineArgumentParser(description=description)
    parser.add_argument("--data_dir", default="./data", help=data_dir_help)
    parser.add_argument("--force", action="store_true", help=f"replace existing {name}.csv / {name}_meta.csv")
    return parser


def create_split_files(data_dir: str, name: str, force: bool,
                       read_metadata: Callable[[str], Tuple[pd.DataFrame, str]], k: int, cap: int) -> None:
    """Write ``<data_dir>/<name>_meta.csv`` (age,path) and the balanced split ``<data_dir>/<name>.csv``.

    ``read_metadata(data_dir)`` returns the metadata rows and the folder / file they came from (named
    in errors); it prints its own notes. Both outputs are checked for overwriting before anything is
    read or written, and each is written atomically; one summary line is printed per file.
    """
    split_path = os.path.join(data_dir, f"{name}.csv")
    meta_path = os.path.join(data_dir, f"{name}_meta.csv")
    for path in (split_path, meta_path):  # check both before writing either
        refuse_overwrite(path, force)

    meta, source = read_metadata(data_dir)
    table = make_split_table(meta, k=k, cap=cap, source=source)

    write_csv_atomic(meta, meta_path, force=force)
    print(f"metadata: {len(meta)} images, ages {meta['age'].min()}..{meta['age'].max()} -> {meta_path}")
    write_split_csv(table, split_path, force=force)
    print(f"split: {split_summary(table)} -> {split_path}")


def split_download_parser(description: str, csv_name: str, default_url: str, default_sha256: "str | None",
                          sha256_help: str) -> argparse.ArgumentParser:
    """Flags of the two ``download_split.py`` scripts: ``--data_dir``, ``--url``, ``--sha256``, ``--force``."""
    parser = OneLineArgumentParser(description=description)
    parser.add_argument("--data_dir", default="./data", help=f"where {csv_name} goes (default ./data)")
    parser.add_argument("--url", default=default_url, help=f"source of {csv_name} (default: the pinned commit)")
    parser.add_argument("--sha256", default=default_sha256, help=sha256_help)
    parser.add_argument("--force", action="store_true", help=f"replace an existing {csv_name}")
    return parser


def download_split(args: argparse.Namespace, csv_name: str) -> None:
    """Download ``args.url`` to ``<args.data_dir>/<csv_name>`` (:func:`download_split_csv`) and print
    one line saying what was verified and the split sizes."""
    dest = os.path.join(args.data_dir, csv_name)
    table = download_split_csv(args.url, dest, sha256=args.sha256, force=args.force)
    checked = "sha256 verified" if args.sha256 else "layout verified (no published checksum)"
    print(f"{dest}: {checked}, {split_summary(table)}")


# ---------------------------------------------------------------------------------------------------
# Puetz et al.'s AgeDB stress-test protocols (--protocol of agedb-dir/train.py)
# ---------------------------------------------------------------------------------------------------

# Puetz et al., "Deconstructing Deep Imbalanced Regression", Artif. Intell. Rev. 2026 (doi
# 10.1007/s10462-026-11570-1); MIT-licensed code noah-puetz/deconstructing_deep_imbalanced_regression,
# folder data/ (files from commit d01c3ef, unchanged at 03fc357). The authors' generator does not
# regenerate these files bit for bit, so the shipped files are the reference, pinned by their SHA-256.
PROTOCOL_REPO = "noah-puetz/deconstructing_deep_imbalanced_regression"
PROTOCOL_COMMIT = "03fc357"
# protocol -> (file name, URL, sha256). Tests point an entry at a local HTTP server (monkeypatch).
PROTOCOL_SOURCES: Dict[str, Tuple[str, str, str]] = {
    name: (f"agedb_{name}.csv", raw_github_url(PROTOCOL_REPO, PROTOCOL_COMMIT, f"data/agedb_{name}.csv"), digest)
    for name, digest in (
        ("extrapolation", "fa3ebf9e1c47ba7b28f3227d9a3a040c256d60f73133c7eef707493ce7be601a"),
        ("interpolation", "a50949bcec3ac3a8f26d2bce2e675257f1228f27468d8be8aea37c845a734976"),
        ("blindspot", "3d08e426b3ad4a0b79e22fa81739a4c5492c943c2648eae5ac2614c18378fae6"),
    )
}
PROTOCOLS = tuple(PROTOCOL_SOURCES)


def protocol_source(protocol: str) -> Tuple[str, str, str]:
    """(file name, URL, sha256) of ``protocol``'s split file; UserError naming the valid protocols."""
    if protocol not in PROTOCOL_SOURCES:
        raise UserError(f"--protocol {protocol}: unknown protocol; use one of {', '.join(PROTOCOLS)} "
                        f"(or leave out --protocol for the published AgeDB-DIR split)")
    return PROTOCOL_SOURCES[protocol]


def read_protocol_split(data_dir: "str | os.PathLike", protocol: str) -> pd.DataFrame:
    """The split table (age,path,split) of ``protocol``, from ``<data_dir>/agedb_<protocol>.csv``.

    A missing file is downloaded from the pinned URL and installed only after its sha256 matched; a
    file already there must have the pinned sha256 too (it is never replaced: the user is told to
    delete it). Train rows keep their duplicates: the protocols drew them with replacement, and the
    duplicates count in the shot regions (many > 100, few < 20 train rows of the age).
    """
    from ranksim.harness.data.download import sha256_of  # local import: only protocol runs need it

    name, url, digest = protocol_source(protocol)
    dest = os.path.join(os.fspath(data_dir), name)
    if not os.path.isfile(dest):
        try:
            download_split_csv(url, dest, sha256=digest)
        except UserError as exc:  # offline machines: say where a copy fetched elsewhere goes
            raise UserError(f"--protocol {protocol}: {dest} not found and {exc}; or copy the authors' {name} "
                            f"there (sha256 {digest})") from None
    elif sha256_of(dest) != digest:
        raise UserError(f"{dest}: sha256 {sha256_of(dest)[:16]}... is not the pinned {digest[:16]}... of the "
                        f"--protocol {protocol} split; delete the file to download the authors' one again")
    return read_split_csv(dest, f"delete it and rerun to download it from {url}")
