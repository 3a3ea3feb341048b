"""Build the IMDB-WIKI-DIR split file ``<data_dir>/imdb_wiki.csv`` from the IMDB-WIKI metadata.

Run from ``imdb-wiki-dir/`` after ``python data/download_imdb_wiki.py``:

    python data/create_imdb_wiki.py --data_dir ./data

Reads ``<data_dir>/imdb_crop/imdb.mat`` and ``<data_dir>/wiki_crop/wiki.mat``, keeps faces with
face_score >= 1, no second face and 0 <= age <= 200 (age = photo year - birth year, minus one when
born in July or later), writes the metadata ``imdb_wiki_meta.csv`` (age,path; imdb rows then wiki
rows, in file order) and the balanced split ``imdb_wiki.csv`` (age,path,split; val/test hold
min(count // 5, 150) images of every age 0..120, seed 666; docs/published_behaviour.md §6). Existing files are replaced
only with ``--force``. ``data/download_split.py`` fetches the paper's published split instead.
"""
from ranksim.harness.cli import run_cli
from ranksim.harness.data.age_splits import (
    IMDB_WIKI_CAP,
    IMDB_WIKI_K,
    create_split_files,
    imdb_wiki_metadata,
    split_creation_parser,
)


def parse_args(argv=None):
    parser = split_creation_parser(__doc__.split("\n\n")[0], "imdb_wiki",
                                   data_dir_help="folder holding imdb_crop/ and wiki_crop/ (default ./data)")
    return parser.parse_args(argv)


def read_metadata(data_dir):
    """IMDB-WIKI's rows (imdb then wiki) and the folder they came from; prints how many rows each kept."""
    meta, counts = imdb_wiki_metadata(data_dir)
    for name, (kept, total) in counts.items():
        print(f"{name}.mat: kept {kept} of {total} rows")
    return meta, data_dir


def main(argv=None):
    args = parse_args(argv)
    create_split_files(args.data_dir, "imdb_wiki", args.force, read_metadata, k=IMDB_WIKI_K, cap=IMDB_WIKI_CAP)


if __name__ == "__main__":
    run_cli(main)
