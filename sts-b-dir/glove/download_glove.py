"""Download GloVe 840B 300-d word vectors (2.0 GB zip, 5.6 GB text) for STS-B-DIR.

Run from ``sts-b-dir/``:

    python glove/download_glove.py        # -> glove/glove.840B.300d.txt (train.py's default --word_embs_file)

The download shows a progress bar and resumes where it stopped when run again (the partial file is
``<zip>.part``). The zip is unpacked next to it and deleted afterwards unless --keep_zip. The first
training run reads the text once and caches the vectors of its vocabulary next to it
(``glove.840B.300d.txt.vocab-<key>.pt``), so later runs start in seconds.
"""
from pathlib import Path

from ranksim.harness.cli import OneLineArgumentParser, UserError, run_cli
from ranksim.harness.data.download import download, extract_archive

GLOVE_URL = "https://nlp.stanford.edu/data/glove.840B.300d.zip"
GLOVE_DIR = Path(__file__).resolve().parent


def main(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=GLOVE_URL, help="GloVe zip (e.g. a mirror)")
    parser.add_argument("--out_dir", default=str(GLOVE_DIR), help="where the text file goes (default: sts-b-dir/glove)")
    parser.add_argument("--sha256", default=None,
                        help="expected sha256 of the zip (checked when given; Stanford publishes none)")
    parser.add_argument("--keep_zip", action="store_true", help="keep the zip after unpacking it")
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir)
    archive = out_dir / args.url.rstrip("/").rsplit("/", 1)[-1]
    if archive.suffix != ".zip":
        raise UserError(f"--url {args.url}: expected a .zip file (like {GLOVE_URL})")
    text = out_dir / (archive.stem + ".txt")
    if text.is_file() and not archive.is_file():
        print(f"{text}: already there")
        return text
    download(args.url, archive, sha256=args.sha256, desc=archive.name)
    print(f"unpacking {archive} (a few minutes for the 840B file)")
    extract_archive(archive, out_dir)
    if not text.is_file():
        raise UserError(f"{archive}: holds no {text.name}; pass --url of a GloVe zip such as {GLOVE_URL}")
    if not args.keep_zip:
        archive.unlink()
    print(f"{text}: ready; train.py --word_embs_file {text}")
    return text


if __name__ == "__main__":
    run_cli(main)
