"""Download the published AgeDB-DIR split ``agedb.csv`` (the one the paper's numbers use).

Run from ``agedb-dir/``:

    python data/download_split.py --data_dir ./data

Fetches ``agedb-dir/data/agedb.csv`` from the RankSim repository at a pinned commit, checks its
sha256 and its columns (age,path,split), then writes ``<data_dir>/agedb.csv`` (replaced only with
``--force``). The images themselves still have to be requested from the AgeDB authors and unzipped
into ``<data_dir>/AgeDB/``.
"""
import argparse
import os

from ranksim.age_splits import (
    AGEDB_CSV_SHA256,
    PUBLISHED_COMMIT,
    PUBLISHED_REPO,
    download_split_csv,
    raw_github_url,
    split_summary,
)
from ranksim.errors import run_cli

DEFAULT_URL = raw_github_url(PUBLISHED_REPO, PUBLISHED_COMMIT, "agedb-dir/data/agedb.csv")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data", help="where agedb.csv goes (default ./data)")
    parser.add_argument("--url", default=DEFAULT_URL, help="source of agedb.csv (default: the pinned commit)")
    parser.add_argument("--sha256", default=AGEDB_CSV_SHA256,
                        help="expected sha256 of the file (default: the published file's)")
    parser.add_argument("--force", action="store_true", help="replace an existing agedb.csv")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dest = os.path.join(args.data_dir, "agedb.csv")
    table = download_split_csv(args.url, dest, sha256=args.sha256, force=args.force)
    print(f"{dest}: sha256 verified, {split_summary(table)}")


if __name__ == "__main__":
    run_cli(main)
