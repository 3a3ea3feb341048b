"""Build STS-B-DIR from GLUE STS-B: download the GLUE zip, then make a balanced dev/test split (docs/published_behaviour.md §8).

Run from ``sts-b-dir/``:

    python data/create_sts_b_dir.py            # -> glue_data/STS-B/{train,dev,test}_new.tsv

Recipe: pool GLUE STS-B train.tsv and dev.tsv; put each pair into one of 20 equal score bins on
[0, 5] (a score of 5 goes to the last); from every bin draw 100 pairs at random (numpy generator
seeded with --seed), the first 50 for dev and the next 50 for test; everything else is train. Rows
keep their GLUE columns (the GLUE index stays in ``old_index``) and are re-indexed from 0 per split,
in pooled order. This makes a split LIKE the published ones, not the same rows: the published
files came from an unrecorded random draw, so the paper's numbers need the published files
(``python data/download_sts_b_dir.py``).
"""
import csv
from pathlib import Path
from typing import Dict, List

import numpy as np

from ranksim.harness.cli import OneLineArgumentParser, UserError, run_cli
from ranksim.harness.data.download import download, extract_archive

GLUE_STSB_URL = "https://dl.fbaipublicfiles.com/glue/data/STS-B.zip"
GLUE_DIR = Path(__file__).resolve().parents[1] / "glue_data"
NUM_BINS = 20
PER_BIN = 100  # drawn per bin for dev + test, half each
HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
          "score"]


def read_glue_tsv(path: Path) -> List[List[str]]:
    """Rows (lists of the 10 GLUE columns) of a GLUE STS-B train.tsv / dev.tsv, header removed."""
    if not path.is_file():
        raise UserError(f"GLUE STS-B file not found: {path}; the GLUE zip did not contain it "
                        "(pass --url of the GLUE STS-B zip)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            raise UserError(f"{path}, line {line_number}: {len(row)} tab-separated columns, expected "
                            f"{len(HEADER)}; is this GLUE STS-B?")
    return [row for row in rows[1:] if row]


def score_bins(rows: List[List[str]], num_bins: int = NUM_BINS) -> np.ndarray:
    """Bin (0..num_bins-1) of each row's score: equal bins on [0, 5], 5 in the last."""
    try:
        scores = np.array([float(row[-1]) for row in rows])
    except ValueError:
        raise UserError("GLUE STS-B: a score that is not a number; is this GLUE STS-B?") from None
    if ((scores < 0) | (scores > 5)).any():
        raise UserError("GLUE STS-B: a score outside [0, 5]; is this GLUE STS-B?")
    return np.minimum((scores * num_bins / 5.0).astype(np.int64), num_bins - 1)


def balanced_split(rows: List[List[str]], seed: int, per_bin: int = PER_BIN,
                   num_bins: int = NUM_BINS, log=print) -> Dict[str, List[List[str]]]:
    """{"train", "dev", "test"}: lists of rows, each in pooled order (see the module docstring)."""
    bins = score_bins(rows, num_bins)
    rng = np.random.default_rng(seed)
    split_of = np.full(len(rows), "train", dtype=object)
    for b in range(num_bins):
        members = np.flatnonzero(bins == b)
        if len(members) < per_bin:
            log(f"note: score bin {b} holds only {len(members)} pairs (< {per_bin}); all of them go to dev/test")
        drawn = rng.permutation(members)[:per_bin]
        half = (len(drawn) + 1) // 2
        split_of[drawn[:half]] = "dev"
        split_of[drawn[half:]] = "test"
    return {name: [row for row, s in zip(rows, split_of) if s == name] for name in ("train", "dev", "test")}


def write_split(path: Path, rows: List[List[str]]) -> None:
    """Write rows with the published header, re-indexed from 0 (atomically: temp file + rename)."""
    lines = ["\t".join(HEADER)] + ["\t".join([str(i)] + row[1:]) for i, row in enumerate(rows)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue_dir", default=str(GLUE_DIR),
                        help="where STS-B.zip is downloaded and unpacked; the split files go to <glue_dir>/STS-B "
                             "(default: sts-b-dir/glue_data, so train.py's default --data_dir finds them)")
    parser.add_argument("--url", default=GLUE_STSB_URL, help="GLUE STS-B zip")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the zip (checked when given)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    parser.add_argument("--per_bin", type=int, default=PER_BIN, help="pairs per score bin for dev + test")
    parser.add_argument("--force", action="store_true", help="replace existing *_new.tsv files")
    args = parser.parse_args(argv)

    glue_dir = Path(args.glue_dir)
    out_dir = glue_dir / "STS-B"
    targets = [out_dir / f"{name}_new.tsv" for name in ("train", "dev", "test")]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        raise UserError(f"{existing[0]}: exists (maybe the published split); pass --force to replace it or "
                        "--glue_dir to write elsewhere")
    archive = download(args.url, glue_dir / "STS-B.zip", sha256=args.sha256, desc="GLUE STS-B")
    extract_archive(archive, glue_dir)
    rows = read_glue_tsv(out_dir / "train.tsv") + read_glue_tsv(out_dir / "dev.tsv")
    splits = balanced_split(rows, args.seed, args.per_bin)
    for path, name in zip(targets, ("train", "dev", "test")):
        write_split(path, splits[name])
        print(f"{path}: {len(splits[name])} pairs")


if __name__ == "__main__":
    run_cli(main)
