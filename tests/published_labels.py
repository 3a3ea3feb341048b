"""The published AgeDB-DIR / STS-B-DIR labels, rebuilt from the per-label counts in tests/fixtures/
(``agedb_labels.json``, ``stsb_labels.json``; see tests/fixtures/make_fixtures.py).

Usage in a test::

    from published_labels import agedb_labels, stsb_labels

    train = agedb_labels("train")   # float32 [12208], integer ages in ascending order
"""
import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def agedb_labels(split: str) -> np.ndarray:
    """AgeDB-DIR ages of ``split`` ("train" / "val" / "test"): float32, sorted, one per image."""
    counts = json.loads((FIXTURES / "agedb_labels.json").read_text())["counts"][split]
    return np.repeat(np.arange(len(counts)), counts).astype(np.float32)


def stsb_labels(split: str) -> np.ndarray:
    """STS-B-DIR similarity scores of ``split`` ("train" / "dev" / "test"): float32, grouped by score, one per sentence pair."""
    counts = json.loads((FIXTURES / "stsb_labels.json").read_text())["counts"][split]
    return np.repeat(np.array([float(s) for s in counts]), list(counts.values())).astype(np.float32)
