"""Build the AgeDB-DIR split file ``<data_dir>/agedb.csv`` from the raw AgeDB images.

Run from ``agedb-dir/``:

    python data/create_agedb.py --data_dir ./data

Reads ``<data_dir>/AgeDB/<id>_<name>_<age>_<gender>.jpg``, writes the metadata ``agedb_meta.csv``
(age,path; files in name order) and the balanced split ``agedb.csv`` (age,path,split; val/test hold
min(count // 3, 30) images of every age 0..120, seed 666; SPEC §6). Existing files are replaced only
with ``--force``. For the exact split of the paper use ``data/download_split.py`` instead: the split
has the same per-age sizes, but which image lands where depends on the order of the metadata rows.
"""
import argparse
import os
import sys

from ranksim.age_splits import (
    AGEDB_CAP,
    AGEDB_DIRNAME,
    AGEDB_K,
    agedb_metadata,
    make_split_table,
    refuse_overwrite,
    split_summary,
    write_csv_atomic,
    write_split_csv,
)
from ranksim.errors import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data", help="folder holding AgeDB/ (default ./data)")
    parser.add_argument("--force", action="store_true", help="replace existing agedb.csv / agedb_meta.csv")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    split_path = os.path.join(args.data_dir, "agedb.csv")
    meta_path = os.path.join(args.data_dir, "agedb_meta.csv")
    for path in (split_path, meta_path):  # check both before writing either
        refuse_overwrite(path, args.force)

    meta, skipped = agedb_metadata(args.data_dir)
    if skipped:
        print(f"warning: {os.path.join(args.data_dir, AGEDB_DIRNAME)}: skipped {len(skipped)} file(s) not named "
              f"<id>_<name>_<age>_<gender>.jpg, e.g. {skipped[0]!r}", file=sys.stderr)
    table = make_split_table(meta, k=AGEDB_K, cap=AGEDB_CAP, source=os.path.join(args.data_dir, AGEDB_DIRNAME))

    write_csv_atomic(meta, meta_path, force=args.force)
    print(f"metadata: {len(meta)} images, ages {meta['age'].min()}..{meta['age'].max()} -> {meta_path}")
    write_split_csv(table, split_path, force=args.force)
    print(f"split: {split_summary(table)} -> {split_path}")


if __name__ == "__main__":
    run_cli(main)
