"""Download the published STS-B-DIR split files (train_new.tsv, dev_new.tsv, test_new.tsv).

Run from ``sts-b-dir/``:

    python data/download_sts_b_dir.py                   # RankSim's files (the paper's numbers use these)
    python data/download_sts_b_dir.py --source yang     # Yang et al.'s (ICML 2021) files

Both are random balanced splits of GLUE STS-B train+dev, and they differ (docs/published_behaviour.md §8). Each file is
fetched from ``sts-b-dir/glue_data/STS-B/`` of its repository at a pinned commit, its sha256 is
checked before it is put in place (a mismatch leaves nothing behind), and an existing file is
replaced only with ``--force``. Interrupted downloads resume.
"""
from pathlib import Path
from typing import Dict, Optional

from ranksim.harness.cli import OneLineArgumentParser, UserError, run_cli
from ranksim.harness.data.age_splits import raw_github_url
from ranksim.harness.data.download import download, sha256_of

FILES = ("train_new.tsv", "dev_new.tsv", "test_new.tsv")
REPO_PATH = "sts-b-dir/glue_data/STS-B"
SOURCES = {
    "ranksim": {
        "repo": "BorealisAI/ranksim-imbalanced-regression",
        "commit": "9e1c862906e9c4c699803e0fece8b843ba6f3bc2",
        "sha256": {
            "train_new.tsv": "cc71336eb2061891c3f165fa9f812c780f1e86eca0f81e62b4da49ecb9dfb3d1",
            "dev_new.tsv": "e5b56cd14e68a5d02ec2a05bfe11d1a45d74582170e61e679c1288f05aa82535",
            "test_new.tsv": "8fd7e51459a3deb30adedde0d6a777fea60d2f8a4c65ac86c76d25ca560f3bc8",
        },
    },
    "yang": {
        "repo": "YyzHarry/imbalanced-regression",
        "commit": "a6fdc45d45c04e6f5c40f43925bc66e580911084",
        "sha256": {
            "train_new.tsv": "4da3322ae29f7ad1b7d03cdeafcb2480c276e5df1d08737678a7856697218a9a",
            "dev_new.tsv": "9ec12d785aa817ffe4b0f88fde442d3bf57161d8cbeaa84aaa1fdf764cca6dd6",
            "test_new.tsv": "55f90b3c5a0b2947d5ff64c41536191e9e1ba3bb5ffe64aca5465ab25fa8e94c",
        },
    },
}
DEFAULT_OUT_DIR = Path(__file__).resolve().parents[1] / "glue_data" / "STS-B"


def file_urls(source: str, base_url: Optional[str] = None) -> Dict[str, str]:
    """URL of each split file: the pinned upstream commit, or ``<base_url>/<file>`` (a mirror)."""
    if base_url:
        return {name: f"{base_url.rstrip('/')}/{name}" for name in FILES}
    info = SOURCES[source]
    return {name: raw_github_url(info["repo"], info["commit"], f"{REPO_PATH}/{name}") for name in FILES}


def download_split_files(urls: Dict[str, str], checksums: Dict[str, str], out_dir: "str | Path",
                         force: bool = False) -> Dict[str, Path]:
    """Download each file of ``urls`` into out_dir, verified against ``checksums`` (hex sha256).

    An existing file with the expected sha256 is kept as is; one with another sha256 is an error
    unless ``force`` (then it is replaced, only by a verified download).
    """
    out_dir = Path(out_dir)
    for name in urls:  # refuse before downloading anything
        dest = out_dir / name
        if dest.is_file() and not force and sha256_of(dest) != checksums[name]:
            raise UserError(f"{dest}: exists and differs from the published file (sha256); "
                            "move it away or pass --force to replace it")
    paths = {}
    for name, url in urls.items():
        # download() keeps a verified file, and replaces a differing one (--force) only once the new
        # download is verified
        paths[name] = download(url, out_dir / name, sha256=checksums[name], desc=name)
    return paths


def main(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="ranksim", choices=sorted(SOURCES),
                        help="whose split files: RankSim's (default) or Yang et al.'s")
    parser.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR),
                        help="where the files go (default: sts-b-dir/glue_data/STS-B, train.py's --data_dir)")
    parser.add_argument("--base_url", default=None,
                        help="download <base_url>/<file> instead of the pinned GitHub commit (a mirror); "
                             "the pinned sha256 checks still apply")
    parser.add_argument("--force", action="store_true", help="replace existing files that differ")
    args = parser.parse_args(argv)
    paths = download_split_files(file_urls(args.source, args.base_url), SOURCES[args.source]["sha256"],
                                 args.out_dir, args.force)
    for path in paths.values():
        print(f"{path}: sha256 verified")


if __name__ == "__main__":
    run_cli(main)
