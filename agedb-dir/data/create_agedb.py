"""Build the AgeDB-DIR split file ``<data_dir>/agedb.csv`` from the raw AgeDB images.

Run from ``agedb-dir/``:

    python data/create_agedb.py --data_dir ./data

Reads ``<data_dir>/AgeDB/<id>_<name>_<age>_<gender>.jpg``, writes the metadata ``agedb_meta.csv``
(age,path; files in name order) and the balanced split ``agedb.csv`` (age,path,split; val/test hold
min(count // 3, 30) images of every age 0..120, seed 666; docs/published_behaviour.md §6). Existing files are replaced only
with ``--force``. For the exact split of the paper use ``data/download_split.py`` instead: the split
has the same per-age sizes, but which image lands where depends on the order of the metadata rows.
"""
import os
import sys

from ranksim.harness.cli import run_cli
from ranksim.harness.data.age_splits import (
    AGEDB_CAP,
    AGEDB_DIRNAME,
    AGEDB_K,
    agedb_metadata,
    create_split_files,
    split_creation_parser,
)


def parse_args(argv=None):
    parser = split_creation_parser(__doc__.split("\n\n")[0], "agedb",
                                   data_dir_help="folder holding AgeDB/ (default ./data)")
    return parser.parse_args(argv)


def read_metadata(data_dir):
    """AgeDB's rows and the folder they came from; files not named like AgeDB's are skipped with a warning."""
    meta, skipped = agedb_metadata(data_dir)
    if skipped:
        print(f"warning: {os.path.join(data_dir, AGEDB_DIRNAME)}: skipped {len(skipped)} file(s) not named "
              f"<id>_<name>_<age>_<gender>.jpg, e.g. {skipped[0]!r}", file=sys.stderr)
    return meta, os.path.join(data_dir, AGEDB_DIRNAME)


def main(argv=None):
    args = parse_args(argv)
    create_split_files(args.data_dir, "agedb", args.force, read_metadata, k=AGEDB_K, cap=AGEDB_CAP)


if __name__ == "__main__":
    run_cli(main)
