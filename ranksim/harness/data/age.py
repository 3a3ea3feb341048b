"""Image datasets of the age benchmarks (AgeDB-DIR, IMDB-WIKI-DIR), docs/published_behaviour.md §6.

A split file ``<data_dir>/<csv_name>`` has columns ``age,path,split`` (path relative to data_dir,
split in train/val/test). :class:`AgeCSVDataset` serves one split; an item is
``(image float32 [3, s, s] in [-1, 1], label float32 [1] (years), weight float32 [1])``.

Per-benchmark subclasses (``agedb-dir/datasets.py``, ``imdb-wiki-dir/datasets.py``) only set the
class attributes below: the split file name, how to create it, and the GM guard of the overall row.
"""
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ranksim.harness.cli import UserError
from ranksim.harness.data.age_splits import read_protocol_split, read_split_csv

SPLITS = ("train", "val", "test")
RANDOM_CROP_PADDING = 16  # docs/published_behaviour.md §6 train augmentation


class ImageReadError(UserError):
    """An image listed in the split file is missing or cannot be decoded.

    DataLoader workers re-raise an exception in the main process as ``type(exc)(text)`` where the
    text is "Caught ImageReadError in DataLoader worker process N. Original Traceback ... \n
    ranksim.harness.data.age.ImageReadError: <message>". The constructor recovers ``<message>`` from that
    text so the user sees the same single line with or without workers.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "DataLoader worker" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class AgeTransform:
    """docs/published_behaviour.md §6 image pipeline, PIL image -> float32 [3, s, s] in [-1, 1]:

    train: Resize((s, s)), RandomCrop(s, padding=16), RandomHorizontalFlip, ToTensor, Normalize(.5, .5);
    val/test: Resize((s, s)), ToTensor, Normalize(.5, .5).

    Written with PIL + NumPy instead of torchvision.transforms because importing torchvision costs
    about 2 s of CPU per process (it pulls in torch._dynamo), which dominates short CPU runs. It makes
    the same calls and the same torch random draws in the same order as torchvision's transforms, so
    the outputs are identical (tests/test_age_train_data.py compares them).
    """

    def __init__(self, img_size: int, train: bool):
        self.img_size = img_size
        self.train = train

    def __call__(self, image: Image.Image) -> torch.Tensor:
        s, pad = self.img_size, RANDOM_CROP_PADDING
        pixels = np.array(image.resize((s, s), Image.BILINEAR), dtype=np.uint8)  # [s, s, 3], writable copy
        if self.train:
            padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))  # zero (black) border
            top = int(torch.randint(0, 2 * pad + 1, size=(1,)).item())
            left = int(torch.randint(0, 2 * pad + 1, size=(1,)).item())
            pixels = padded[top:top + s, left:left + s]
            if torch.rand(1) < 0.5:
                pixels = pixels[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()
        return tensor.to(torch.float32).div(255).sub_(0.5).div_(0.5)


def age_transform(img_size: int, train: bool) -> AgeTransform:
    """The docs/published_behaviour.md §6 transform of a split (train: with augmentation)."""
    return AgeTransform(img_size, train)


class AgeCSVDataset(Dataset):
    """One split of an age benchmark.

    data_dir: folder holding the split CSV and the images (paths in the CSV are relative to it);
    table: the whole split table (age,path,split) as returned by :meth:`read_table`;
    img_size: side s of the square images fed to the model; split: 'train' | 'val' | 'test'
    (train gets augmentation); weights: per-row loss weights [N] for this split (None -> all 1).
    """

    csv_name = "agedb.csv"  # split file inside data_dir
    dataset_name = "agedb"  # value of --dataset
    how_to_create = "run `python data/create_agedb.py` or `python data/download_split.py` in agedb-dir/"
    overall_gm_eps = 0.0  # IMDB-WIKI-DIR adds 1e-10 to the errors of the overall GM (docs/published_behaviour.md §5)

    def __init__(self, data_dir: str, table: pd.DataFrame, img_size: int, split: str = "train",
                 weights: Optional[Sequence[float]] = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        rows = table[table["split"] == split]
        if len(rows) == 0:
            raise UserError(f"{self.csv_path(data_dir)}: no rows with split '{split}'; {self.how_to_create}")
        self.data_dir = data_dir
        self.split = split
        self.paths = [os.path.join(data_dir, p) for p in rows["path"].astype(str)]
        self.labels = rows["age"].to_numpy(dtype=np.float32)
        if weights is None:
            weights = np.ones(len(self.labels), dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        if len(self.weights) != len(self.labels):
            raise ValueError(f"weights: {len(self.weights)} values for {len(self.labels)} {split} rows")
        self.transform = age_transform(img_size, train=split == "train")

    @classmethod
    def csv_path(cls, data_dir: str) -> str:
        return os.path.join(data_dir, cls.csv_name)

    @classmethod
    def read_table(cls, data_dir: str, protocol: Optional[str] = None) -> pd.DataFrame:
        """Read and validate ``<data_dir>/<csv_name>``, or with ``protocol`` (AgeDB only) that stress-test
        protocol's pinned split file (:func:`read_protocol_split`); one-line UserError saying how to get it."""
        if not os.path.isdir(data_dir):
            raise UserError(f"--data_dir {data_dir}: directory not found; {cls.how_to_create}, "
                            f"or pass --data_dir <folder holding {cls.csv_name}>")
        if protocol:
            return read_protocol_split(data_dir, protocol)
        return read_split_csv(cls.csv_path(data_dir), cls.how_to_create)

    @classmethod
    def check_images(cls, data_dir: str, table: pd.DataFrame) -> None:
        """UserError naming the first image of ``table`` (all splits) missing under ``data_dir``, and how
        many are missing, so a run stops before its run directory is made instead of mid-epoch. Only
        os.path.isfile per row (about 1 s for IMDB-WIKI-DIR's 214K images on a local disk); an image
        that exists but cannot be decoded is still found when it is read."""
        paths = [os.path.join(data_dir, p) for p in table["path"].astype(str)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ImageReadError(f"{missing[0]}: image listed in {cls.csv_name} not found ({len(missing)} of "
                                 f"{len(paths)} images missing); check --data_dir and that the images were "
                                 "extracted/created")

    @staticmethod
    def overlap_warning(table: pd.DataFrame) -> Optional[str]:
        """A warning naming how many val/test rows use an image path that is also in train (a copied image
        makes those numbers optimistic), with the first such path; None when the splits are disjoint."""
        train_paths = set(table.loc[table["split"] == "train", "path"].astype(str))
        shared = {split: table.loc[(table["split"] == split) & table["path"].astype(str).isin(train_paths), "path"]
                  for split in ("val", "test")}
        if not any(len(paths) for paths in shared.values()):
            return None
        first = next(str(paths.iloc[0]) for paths in shared.values() if len(paths))
        counts = ", ".join(f"{len(paths)} {split}" for split, paths in shared.items() if len(paths))
        return (f"warning: {counts} image path(s) also appear in the train split (e.g. {first}); their metrics "
                "are optimistic; re-create the split file so the splits are disjoint")

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")  # convert() decodes now: a truncated file fails here
        except FileNotFoundError:
            raise ImageReadError(f"{path}: image listed in {self.csv_name} not found; check --data_dir "
                                 f"and that the images were extracted/created") from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ImageReadError(f"{path}: cannot read image ({reason}); replace the file or remove its "
                                 f"row from {self.csv_name}") from None

    def __getitem__(self, index: int):
        image = self.transform(self.load_image(index))
        label = torch.tensor([self.labels[index]], dtype=torch.float32)
        weight = torch.tensor([self.weights[index]], dtype=torch.float32)
        return image, label, weight
