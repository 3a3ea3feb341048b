"""Print what train.py will read from a STS-B-DIR folder: pairs per split, skipped rows, test shot
groups, vocabulary size. Use it to check downloaded or created files.

    python data/summarize_split.py --data_dir ./glue_data/STS-B

RankSim's published files give train/val/test 5,249 / 1,000 / 1,000 pairs and test groups
many/medium/few 775 / 175 / 50 (docs/published_behaviour.md §5).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sts-b-dir/datasets.py
from datasets import build_vocab, load_splits  # noqa: E402

from ranksim.harness.cli import OneLineArgumentParser, run_cli  # noqa: E402
from ranksim.metrics import stsb_shot_groups  # noqa: E402


def main(argv=None):
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="./glue_data/STS-B")
    parser.add_argument("--max_seq_len", type=int, default=40)
    parser.add_argument("--max_word_v_size", type=int, default=30000)
    args = parser.parse_args(argv)
    splits = load_splits(args.data_dir, args.max_seq_len)
    for name, split in splits.items():
        print(f"{name:<5} {len(split):>6} pairs ({split.skipped} rows skipped)  {split.path}")
    groups = stsb_shot_groups(np.asarray(splits["test"].scores, dtype=np.float32))
    print("test shot groups: " + ", ".join(f"{g} {int(mask.sum())}" for g, mask in groups.items()))
    print(f"vocabulary: {len(build_vocab(splits, args.max_word_v_size))} entries (padding and unknown included)")


if __name__ == "__main__":
    run_cli(main)
