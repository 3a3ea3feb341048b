"""Write a tiny synthetic STS-B-DIR (TSVs in the published 10-column layout) and a tiny GloVe file.

For smoke runs and tests without downloads: sentence 2 is sentence 1 with some words replaced, and
the score is 5 * (share of words kept), rounded to 0.1, so a model can learn it. Scores are
imbalanced (most pairs are similar), like STS-B-DIR's train split.

    python data/make_synthetic_sts_b.py --out_dir ./synthetic/STS-B --glove ./synthetic/glove.txt --d_word 8
    python train.py --data_dir ./synthetic/STS-B --word_embs_file ./synthetic/glove.txt --d_word 8 \
        --d_hid 16 --val_interval 10 --max_vals 3
"""
import argparse
import os
from pathlib import Path

import numpy as np

from ranksim.harness.cli import OneLineArgumentParser

WORDS = ("a man woman dog cat is are playing eating running guitar piano ball the park street "
         "red blue small big child car riding walking on in with two people old young").split()
HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
SIZES = {"train": 120, "dev": 40, "test": 40}


def synthetic_rows(rng: np.random.Generator, n: int):
    """n (sentence1, sentence2, score string) triples."""
    rows = []
    for _ in range(n):
        length = int(rng.integers(4, 9))
        words = list(rng.choice(WORDS, size=length))
        # imbalanced: few replacements are common, many are rare
        replaced = min(length, int(rng.geometric(0.45)) - 1)
        other = list(words)
        for position in rng.choice(length, size=replaced, replace=False):
            other[position] = str(rng.choice(WORDS))
        kept = sum(a == b for a, b in zip(words, other))
        score = round(5.0 * kept / length, 1)
        rows.append((" ".join(words) + ".", " ".join(other).capitalize() + ".", f"{score:.3f}"))
    return rows


def write_tsv(path: "str | os.PathLike", rows, genre: str = "main-captions") -> None:
    """Write ``rows`` of (sentence1, sentence2, score string) in the 10-column STS-B-DIR layout."""
    lines = [HEADER] + [f"{i}\t{genre}\tsynthetic\t2024\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score}"
                        for i, (s1, s2, score) in enumerate(rows)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_synthetic_splits(out_dir: "str | os.PathLike", seed: int = 0, sizes=None) -> Path:
    """train_new.tsv / dev_new.tsv / test_new.tsv under out_dir; returns out_dir as a Path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (sizes or SIZES).items():
        write_tsv(out_dir / f"{split}_new.tsv", synthetic_rows(rng, n))
    return out_dir


def write_synthetic_glove(path: "str | os.PathLike", d_word: int, seed: int = 0, skip=("cat", "guitar")) -> Path:
    """A GloVe-format text file for WORDS (minus ``skip``, left unknown), '.', and a token with a space."""
    rng = np.random.default_rng(seed)
    tokens = [w for w in WORDS if w not in skip] + [".", "A", "new york"]
    lines = [token + " " + " ".join(f"{x:.5f}" for x in rng.standard_normal(d_word)) for token in tokens]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def main(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", default="./synthetic/STS-B",
                        help="folder for train_new.tsv, dev_new.tsv, test_new.tsv (train.py --data_dir)")
    parser.add_argument("--glove", default="./synthetic/glove.txt",
                        help="GloVe-format word-vector file to write (train.py --word_embs_file)")
    parser.add_argument("--d_word", type=int, default=8, help="word vector size (train.py --d_word)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sentences, scores and vectors")
    args = parser.parse_args(argv)
    print(f"wrote {write_synthetic_splits(args.out_dir, args.seed)} and "
          f"{write_synthetic_glove(args.glove, args.d_word, args.seed)}")


if __name__ == "__main__":
    main()
