"""Download and extract the IMDB-WIKI face crops (imdb_crop.tar, about 7 GB; wiki_crop.tar, about 1 GB).

Run from ``imdb-wiki-dir/``:

    python data/download_imdb_wiki.py --data_dir ./data

Each tarball is downloaded to ``<data_dir>/<name>.tar`` with a progress bar; an interrupted download
resumes where it stopped when the command is run again (the partial file is ``<name>.tar.part``). It is
then extracted into ``<data_dir>/`` (giving ``imdb_crop/`` with ``imdb.mat``, and ``wiki_crop/`` with
``wiki.mat``) and a marker file ``<name>/.extracted`` is written, so a rerun skips finished parts.
Next step: ``python data/create_imdb_wiki.py`` (or ``data/download_split.py`` for the published split).
"""
import os

from ranksim.harness.cli import OneLineArgumentParser, UserError, run_cli
from ranksim.harness.data.age_splits import IMDB_WIKI_SOURCES
from ranksim.harness.data.download import download, extract_archive

DEFAULT_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/"
EXTRACTED_MARKER = ".extracted"


def parse_args(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./data", help="where the tarballs and images go (default ./data)")
    parser.add_argument("--base_url", default=DEFAULT_BASE_URL,
                        help="folder URL holding imdb_crop.tar and wiki_crop.tar (default: the ETH Zurich page)")
    parser.add_argument("--parts", nargs="+", choices=[name for name, _ in IMDB_WIKI_SOURCES],
                        default=[name for name, _ in IMDB_WIKI_SOURCES], help="which tarballs (default: both)")
    parser.add_argument("--delete_tar", action="store_true", help="delete each tarball once it is extracted")
    return parser.parse_args(argv)


def fetch_part(struct_name: str, folder: str, data_dir: str, base_url: str, delete_tar: bool) -> None:
    """Download ``<folder>.tar`` (unless already complete), extract it, check ``<folder>/<struct_name>.mat``."""
    out_dir = os.path.join(data_dir, folder)
    marker = os.path.join(out_dir, EXTRACTED_MARKER)
    if os.path.isfile(marker):
        print(f"{out_dir}: already extracted, skipping (delete {marker} to extract again)")
        return
    tar_path = os.path.join(data_dir, f"{folder}.tar")
    if os.path.isfile(tar_path):
        print(f"{tar_path}: already downloaded")
    else:
        download(base_url.rstrip("/") + f"/{folder}.tar", tar_path, desc=f"{folder}.tar")
    print(f"extracting {tar_path} -> {data_dir}")
    extract_archive(tar_path, data_dir)
    mat_path = os.path.join(out_dir, f"{struct_name}.mat")
    if not os.path.isfile(mat_path):
        raise UserError(f"{tar_path}: extracted, but {mat_path} is missing; the tarball is not the IMDB-WIKI "
                        f"{folder}.tar, delete it and run again (check --base_url)")
    with open(marker, "w") as f:
        f.write(f"extracted from {folder}.tar\n")
    if delete_tar:
        os.unlink(tar_path)
    print(f"{out_dir}: ready ({mat_path})")


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    for struct_name, folder in IMDB_WIKI_SOURCES:
        if struct_name in args.parts:
            fetch_part(struct_name, folder, args.data_dir, args.base_url, args.delete_tar)


if __name__ == "__main__":
    run_cli(main)
