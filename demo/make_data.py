"""Generate the demo's synthetic AgeDB-DIR look-alike: ``demo_data/agedb/agedb.csv`` + ``AgeDB/*.jpg``.

    python demo/make_data.py [--out demo_data/agedb] [--force]

What it is (and why):
- Train labels follow the published AgeDB-DIR train histogram (121 integer ages, committed below as
  AGEDB_TRAIN_COUNTS) scaled by train_scale = 0.4 (DEFAULTS), rounding up so that no age present in
  AgeDB-DIR disappears: 4,922 train images. The shot groups use ABSOLUTE train counts (many > 100,
  few < 20, the paper's protocol; ranksim/metrics.py), so the scale decides which groups exist: at 0.4
  the peak ages have up to 142 images and many / medium / few are all populated (a 3,000-image set
  would have no many-shot age at all). tests/test_demo.py checks these numbers against split_ages().
- Val and test copy the published balanced test histogram (30 per age in the middle, fewer in the
  tails; AGEDB_TEST_COUNTS) scaled by eval_scale = 1/3, rounded up: at most 10 per age, 725 images each.
- Images (32x32 RGB JPEG) come from :func:`ranksim.harness.data.synthetic.draw_age_image`: a disc whose radius
  grows with the age, at a random position, in random fore/background colours, with pixel noise.
  The radius is drawn from the APPARENT age = age + N(0, apparent_age_sd = 4 years): like faces,
  the picture does not determine the label exactly, so the best possible MAE is not 0 and a model that
  cannot tell the ages apart falls back on the (imbalanced) train prior - the effect DIR methods target.
- Deterministic: everything is drawn from ``numpy.random.default_rng(seed)``. Generation is skipped
  when the folder already holds a dataset made with the same parameters (``demo_params.json``).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ranksim.harness.cli import UserError, run_cli
from ranksim.harness.data.synthetic import draw_age_image

REPO = Path(__file__).resolve().parent.parent

# Number of images per integer age 0..120 in the published AgeDB-DIR split file (agedb.csv,
# sha256 ab9f8d4c...; 12,208 train / 2,140 test images).
AGEDB_TRAIN_COUNTS = (
    0, 1, 0, 4, 2, 2, 4, 5, 4, 2, 5, 8, 6, 8, 9, 15, 18, 28, 60, 50,
    101, 103, 123, 152, 199, 224, 215, 244, 287, 253, 325, 256, 318, 278, 302, 353, 287, 310, 322, 261,
    326, 260, 296, 265, 221, 282, 227, 229, 251, 207, 257, 227, 250, 190, 198, 234, 167, 183, 186, 153,
    185, 147, 178, 158, 133, 171, 117, 117, 155, 90, 156, 85, 115, 96, 78, 98, 49, 44, 46, 26,
    31, 26, 24, 19, 15, 20, 13, 10, 7, 7, 7, 7, 5, 5, 3, 3, 2, 1, 2, 1,
    2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
)
AGEDB_TEST_COUNTS = (
    0, 0, 0, 2, 0, 1, 2, 3, 2, 2, 4, 6, 4, 7, 7, 14, 17, 27, 30, 30,
    30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
    30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
    30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 25,
    30, 25, 22, 19, 14, 19, 11, 10, 7, 6, 6, 5, 3, 5, 2, 3, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
)

DEFAULTS = {
    "seed": 0,
    "img_size": 32,
    "train_scale": 0.4,
    "eval_scale": 1 / 3,
    "apparent_age_sd": 4.0,   # years: how far the picture's age may be from the label
    "age_range": [0, 101],    # ages mapped to the smallest / largest disc (AgeDB-DIR's ages are 1..101)
}


def scaled_counts(counts, scale: float) -> np.ndarray:
    """Per-age counts times ``scale``, rounded up (an age present stays present). int64 [121]."""
    return np.ceil(np.asarray(counts, dtype=np.float64) * scale - 1e-9).astype(np.int64)


def split_ages(params: dict) -> dict:
    """{"train"|"val"|"test": int64 array of ages, sorted}: the demo's label histograms."""
    ages = np.arange(len(AGEDB_TRAIN_COUNTS))
    train = np.repeat(ages, scaled_counts(AGEDB_TRAIN_COUNTS, params["train_scale"]))
    held_out = scaled_counts(AGEDB_TEST_COUNTS, params["eval_scale"])
    return {"train": train, "val": np.repeat(ages, held_out), "test": np.repeat(ages, held_out)}


def make_demo_dataset(out: "str | os.PathLike", force: bool = False, **overrides) -> Path:
    """Write the demo dataset under ``out`` (agedb.csv + AgeDB/*.jpg) unless it is already there.

    Returns the path of agedb.csv. ``overrides`` replace entries of DEFAULTS (tests use smaller scales).
    """
    params = {**DEFAULTS, **overrides}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown demo dataset parameter(s): {', '.join(sorted(unknown))}")
    out = Path(out)
    csv_path, params_path = out / "agedb.csv", out / "demo_params.json"
    if csv_path.is_file() and params_path.is_file() and not force:
        if json.loads(params_path.read_text()) == json.loads(json.dumps(params)):
            print(f"demo data: {csv_path} already present (delete {out} or pass --force to regenerate)")
            return csv_path
        print(f"demo data: {out} was made with other parameters; regenerating")
    elif out.exists() and any(out.iterdir()) and not params_path.is_file():
        raise UserError(f"{out}: exists and is not a demo dataset (no demo_params.json); "
                        "choose an empty or new --out folder")

    rng = np.random.default_rng(params["seed"])
    age_range = tuple(params["age_range"])
    (out / "AgeDB").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, ages in split_ages(params).items():
        for age in rng.permutation(ages):
            apparent = float(age) + rng.normal(0.0, params["apparent_age_sd"])
            image = draw_age_image(rng, apparent, age_range, params["img_size"])
            gender = "mf"[int(rng.integers(2))]
            rel = f"AgeDB/{len(rows):05d}_Synthetic_{int(age)}_{gender}.jpg"
            Image.fromarray(image).save(out / rel, quality=90)
            rows.append(f"{int(age)},{rel},{split}")
    # CSV last and atomically: its presence (with the parameters) marks a complete dataset.
    params_path.write_text(json.dumps(params, indent=1) + "\n")
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    tmp.write_text("age,path,split\n" + "\n".join(rows) + "\n")
    os.replace(tmp, csv_path)
    sizes = {s: len(a) for s, a in split_ages(params).items()}
    print(f"demo data: wrote {csv_path} (train {sizes['train']} / val {sizes['val']} / test {sizes['test']} "
          f"images, {params['img_size']}x{params['img_size']} px)")
    return csv_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "demo_data" / "agedb"), help="output folder")
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    opts = parser.parse_args(argv)
    make_demo_dataset(opts.out, force=opts.force)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
