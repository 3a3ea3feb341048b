"""Download the published IMDB-WIKI-DIR split ``imdb_wiki.csv`` (the one the paper's numbers use).

Run from ``imdb-wiki-dir/``:

    python data/download_split.py --data_dir ./data

Fetches ``imdb-wiki-dir/data/imdb_wiki.csv`` from the RankSim repository at a pinned commit and
writes ``<data_dir>/imdb_wiki.csv`` (replaced only with ``--force``). No checksum of this file is
recorded, so only its layout is verified: columns age,path,split, whole-number ages in 0..200,
non-empty paths, every split non-empty. The published sizes are about 191.5K / 11.0K / 11.0K.
The images come from ``data/download_imdb_wiki.py``.
"""
from ranksim.harness.cli import run_cli
from ranksim.harness.data.age_splits import (
    PUBLISHED_COMMIT,
    PUBLISHED_REPO,
    download_split,
    raw_github_url,
    split_download_parser,
)

CSV_NAME = "imdb_wiki.csv"
DEFAULT_URL = raw_github_url(PUBLISHED_REPO, PUBLISHED_COMMIT, "imdb-wiki-dir/data/imdb_wiki.csv")


def parse_args(argv=None):
    parser = split_download_parser(__doc__.split("\n\n")[0], CSV_NAME, DEFAULT_URL, None,
                                   sha256_help="expected sha256 of the file, if you have one (none is published)")
    return parser.parse_args(argv)


def main(argv=None):
    download_split(parse_args(argv), CSV_NAME)


if __name__ == "__main__":
    run_cli(main)
