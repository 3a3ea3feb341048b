"""Synthetic age-regression images in the AgeDB-DIR on-disk layout (tests, demo, benchmarks).

``make_synthetic_age_dataset(root, ...)`` writes JPEGs under ``root/images/`` and a split file
``root/<csv_name>`` with columns ``age,path,split`` (paths relative to root), so
``train.py --data_dir root`` reads it like the real benchmark.

Each image shows a disc whose radius grows linearly with the age, on a random background, at a
random position, in a random colour, with pixel noise: the label is learnable but not trivially so.
Train ages are long-tailed (a discretised normal around the middle of the age range, like the
published AgeDB-DIR train histogram's single hump); val/test ages are uniform over the range
(balanced, as in the DIR splits). Everything is drawn from ``numpy.random.default_rng(seed)``, so the
same arguments give the same files.
"""
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image


def synthetic_ages(rng: np.random.Generator, n: int, age_range: Tuple[int, int], balanced: bool) -> np.ndarray:
    """n integer ages in [lo, hi]: uniform if balanced, else normal(mid, width/6) clipped (long tails)."""
    lo, hi = age_range
    if balanced:
        return rng.integers(lo, hi + 1, size=n)
    mid, spread = (lo + hi) / 2, (hi - lo) / 6
    return np.clip(np.rint(rng.normal(mid, spread, size=n)), lo, hi).astype(np.int64)


def draw_age_image(rng: np.random.Generator, age: int, age_range: Tuple[int, int], img_size: int,
                   noise: float = 20.0) -> np.ndarray:
    """uint8 [img_size, img_size, 3]: a disc of radius proportional to ``age`` plus nuisances."""
    lo, hi = age_range
    frac = (age - lo) / max(hi - lo, 1)
    radius = img_size * (0.08 + 0.34 * frac)
    cy, cx = rng.uniform(radius * 0.6, img_size - radius * 0.6, size=2)  # may touch the border
    yy, xx = np.mgrid[0:img_size, 0:img_size]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    background = rng.uniform(0, 110, size=3)
    foreground = rng.uniform(150, 255, size=3)
    image = np.where(inside[..., None], foreground, background)
    image = image + rng.normal(0, noise, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_age_dataset(root, n_train: int = 200, n_val: int = 40, n_test: int = 40, img_size: int = 32,
                               seed: int = 0, csv_name: str = "agedb.csv", age_range: Tuple[int, int] = (0, 100),
                               train_ages: Optional[Sequence[int]] = None) -> Path:
    """Write a synthetic age dataset under ``root`` and return the path of its split CSV.

    root: output folder (created); n_train/n_val/n_test: images per split; img_size: side in pixels;
    seed: RNG seed (same arguments -> same files); csv_name: 'agedb.csv' or 'imdb_wiki.csv';
    age_range: inclusive (lo, hi) integer ages; train_ages: explicit train ages (overrides n_train
    and the long-tailed draw, e.g. to mimic a published histogram).
    """
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if train_ages is None:
        train_ages = synthetic_ages(rng, n_train, age_range, balanced=False)
    splits = [("train", np.asarray(train_ages, dtype=np.int64)),
              ("val", synthetic_ages(rng, n_val, age_range, balanced=True)),
              ("test", synthetic_ages(rng, n_test, age_range, balanced=True))]
    rows = ["age,path,split"]
    for split, ages in splits:
        for i, age in enumerate(ages):
            rel = f"images/{split}_{i:06d}_{int(age)}.jpg"
            Image.fromarray(draw_age_image(rng, int(age), age_range, img_size)).save(root / rel, quality=90)
            rows.append(f"{int(age)},{rel},{split}")
    csv_path = root / csv_name
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    os.replace(tmp, csv_path)
    return csv_path
