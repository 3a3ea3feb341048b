"""Download the published IMDB-WIKI-DIR split ``imdb_wiki.csv`` (the one the paper's numbers use).

Run from ``imdb-wiki-dir/``:

    python data/download_split.py --data_dir ./data

Fetches ``imdb-wiki-dir/data/imdb_wiki.csv`` from the RankSim repository at a pinned commit and
writes ``<data_dir>/imdb_wiki.csv`` (replaced only with ``--force``). No checksum of this file is
recorded, so only its layout is verified: columns age,path,split, whole-number ages in 0..200,
non-empty paths, every split non-empty. The published sizes are about 191.5K / 11.0K / 11.0K.
The images come from ``data/download_imdb_wiki.py``.
"""
import argparse
import os

from ranksim.age_splits import (
    PUBLISHED_COMMIT,
    PUBLISHED_REPO,
    download_split_csv,
    raw_github_url,
    split_summary,
)
from ranksim.errors import run_cli

DEFAULT_URL = raw_github_url(PUBLISHED_REPO, PUBLISHED_COMMIT, "imdb-wiki-dir/data/imdb_wiki.csv")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data", help="where imdb_wiki.csv goes (default ./data)")
    parser.add_argument("--url", default=DEFAULT_URL, help="source of imdb_wiki.csv (default: the pinned commit)")
    parser.add_argument("--sha256", default=None,
                        help="expected sha256 of the file, if you have one (none is published)")
    parser.add_argument("--force", action="store_true", help="replace an existing imdb_wiki.csv")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dest = os.path.join(args.data_dir, "imdb_wiki.csv")
    table = download_split_csv(args.url, dest, sha256=args.sha256, force=args.force)
    checked = "sha256 verified" if args.sha256 else "layout verified (no published checksum)"
    print(f"{dest}: {checked}, {split_summary(table)}")


if __name__ == "__main__":
    run_cli(main)
