"""Download the published AgeDB-DIR split ``agedb.csv`` (the one the paper's numbers use).

Run from ``agedb-dir/``:

    python data/download_split.py --data_dir ./data

Fetches ``agedb-dir/data/agedb.csv`` from the RankSim repository at a pinned commit, checks its
sha256 and its columns (age,path,split), then writes ``<data_dir>/agedb.csv`` (replaced only with
``--force``). The images themselves still have to be requested from the AgeDB authors and unzipped
into ``<data_dir>/AgeDB/``.
"""
from ranksim.harness.cli import run_cli
from ranksim.harness.data.age_splits import (
    AGEDB_CSV_SHA256,
    PUBLISHED_COMMIT,
    PUBLISHED_REPO,
    download_split,
    raw_github_url,
    split_download_parser,
)

CSV_NAME = "agedb.csv"
DEFAULT_URL = raw_github_url(PUBLISHED_REPO, PUBLISHED_COMMIT, "agedb-dir/data/agedb.csv")


def parse_args(argv=None):
    parser = split_download_parser(__doc__.split("\n\n")[0], CSV_NAME, DEFAULT_URL, AGEDB_CSV_SHA256,
                                   sha256_help="expected sha256 of the file (default: the published file's)")
    return parser.parse_args(argv)


def main(argv=None):
    download_split(parse_args(argv), CSV_NAME)


if __name__ == "__main__":
    run_cli(main)
