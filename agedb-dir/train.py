"""Train / evaluate on AgeDB-DIR (RankSim, ICML 2022). Run from this folder, e.g.

    python train.py --reweight sqrt_inv --regularization_weight=100 --interpolation_lambda=2 \
        --batch_size 64 --lr 2.5e-4

The whole program lives in ranksim/harness/age_program.py (shared with imdb-wiki-dir); `python train.py -h`
lists every flag. This file only holds what is specific to AgeDB-DIR.
"""
import sys

from datasets import AgeDB

from ranksim.harness.age_program import main
from ranksim.harness.cli import run_cli

# AgeDB-DIR values of the flags whose defaults differ between the two age benchmarks (docs/published_behaviour.md §7).
DEFAULTS = {"dataset": "agedb", "lds_ks": 9, "fds_ks": 9, "bucket_start": 3, "epoch": 120}

if __name__ == "__main__":
    run_cli(main, sys.argv[1:], DEFAULTS, AgeDB)
