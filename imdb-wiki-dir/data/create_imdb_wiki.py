"""Build the IMDB-WIKI-DIR split file ``<data_dir>/imdb_wiki.csv`` from the IMDB-WIKI metadata.

Run from ``imdb-wiki-dir/`` after ``python data/download_imdb_wiki.py``:

    python data/create_imdb_wiki.py --data_dir ./data

Reads ``<data_dir>/imdb_crop/imdb.mat`` and ``<data_dir>/wiki_crop/wiki.mat``, keeps faces with
face_score >= 1, no second face and 0 <= age <= 200 (age = photo year - birth year, minus one when
born in July or later), writes the metadata ``imdb_wiki_meta.csv`` (age,path; imdb rows then wiki
rows, in file order) and the balanced split ``imdb_wiki.csv`` (age,path,split; val/test hold
min(count // 5, 150) images of every age 0..120, seed 666; SPEC §6). Existing files are replaced
only with ``--force``. ``data/download_split.py`` fetches the paper's published split instead.
"""
import argparse
import os

from ranksim.age_splits import (
    IMDB_WIKI_CAP,
    IMDB_WIKI_K,
    imdb_wiki_metadata,
    make_split_table,
    refuse_overwrite,
    split_summary,
    write_csv_atomic,
    write_split_csv,
)
from ranksim.errors import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data",
                        help="folder holding imdb_crop/ and wiki_crop/ (default ./data)")
    parser.add_argument("--force", action="store_true", help="replace existing imdb_wiki.csv / imdb_wiki_meta.csv")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    split_path = os.path.join(args.data_dir, "imdb_wiki.csv")
    meta_path = os.path.join(args.data_dir, "imdb_wiki_meta.csv")
    for path in (split_path, meta_path):  # check both before writing either
        refuse_overwrite(path, args.force)

    meta, counts = imdb_wiki_metadata(args.data_dir)
    for name, (kept, total) in counts.items():
        print(f"{name}.mat: kept {kept} of {total} rows")
    table = make_split_table(meta, k=IMDB_WIKI_K, cap=IMDB_WIKI_CAP, source=args.data_dir)

    write_csv_atomic(meta, meta_path, force=args.force)
    print(f"metadata: {len(meta)} images, ages {meta['age'].min()}..{meta['age'].max()} -> {meta_path}")
    write_split_csv(table, split_path, force=args.force)
    print(f"split: {split_summary(table)} -> {split_path}")


if __name__ == "__main__":
    run_cli(main)
