"""Age image datasets (docs/published_behaviour.md §6): split CSV validation, items and transforms, unreadable images
(also from DataLoader workers), and the synthetic-data generator."""
import gc
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ranksim.harness.cli import UserError, one_line
from ranksim.harness.data.age import AgeCSVDataset, ImageReadError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ages")
    make_synthetic_age_dataset(root, n_train=12, n_val=4, n_test=4, img_size=20, seed=3)
    return root


def test_items_shapes_dtypes_and_normalisation(data_dir):
    table = AgeCSVDataset.read_table(str(data_dir))
    weights = np.arange(1, 13, dtype=np.float32)
    ds = AgeCSVDataset(str(data_dir), table, img_size=16, split="train", weights=weights)
    assert len(ds) == 12
    image, label, weight = ds[3]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert label.shape == (1,) and label.dtype == torch.float32 and weight.shape == (1,)
    train_rows = table[table["split"] == "train"]
    assert label.item() == float(train_rows["age"].iloc[3]) and weight.item() == 4.0
    # val: Resize, ToTensor, Normalize(0.5, 0.5) -> exactly (pixel / 255 - 0.5) / 0.5 at the native size
    val = AgeCSVDataset(str(data_dir), table, img_size=20, split="val")
    image, _, weight = val[0]
    pixels = np.asarray(Image.open(val.paths[0]).convert("RGB"), dtype=np.float32)
    expected = torch.from_numpy((pixels / 255.0 - 0.5) / 0.5).permute(2, 0, 1)
    assert torch.allclose(image, expected, atol=1e-6) and weight.item() == 1.0
    assert torch.equal(val[0][0], val[0][0])  # no augmentation outside train


def test_train_augmentation_crops_with_padding_and_flips(data_dir):
    table = AgeCSVDataset.read_table(str(data_dir))
    ds = AgeCSVDataset(str(data_dir), table, img_size=20, split="train")
    torch.manual_seed(0)
    views = torch.stack([ds[0][0] for _ in range(30)])
    assert not all(torch.equal(views[0], v) for v in views[1:])  # random crop/flip
    assert (views == -1).any()  # zero padding (pixel 0 -> -1 after Normalize) shows up in crops


def write_csv(path, text):
    path.write_text(text)
    return path


def test_missing_data_dir_and_csv_say_which_command_creates_them(tmp_path):
    with pytest.raises(UserError, match=r"--data_dir .*nowhere.*create_agedb\.py"):
        AgeCSVDataset.read_table(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"agedb\.csv.*not found.*create_agedb\.py.*download_split\.py"):
        AgeCSVDataset.read_table(str(tmp_path))


def test_bad_columns_and_empty_split(tmp_path):
    write_csv(tmp_path / "agedb.csv", "age,file,split\n3,a.jpg,train\n")
    with pytest.raises(UserError, match=r"agedb\.csv.*missing column.*path"):
        AgeCSVDataset.read_table(str(tmp_path))
    # a split with no rows: refused when the file is read
    write_csv(tmp_path / "agedb.csv", "age,path,split\n3,a.jpg,train\n4,b.jpg,val\n")
    with pytest.raises(UserError, match=r"no rows in split.*test"):
        AgeCSVDataset.read_table(str(tmp_path))
    # ... and by the dataset itself when handed such a table
    table = pd.DataFrame({"age": [3, 4], "path": ["a.jpg", "b.jpg"], "split": ["train", "val"]})
    with pytest.raises(UserError, match=r"no rows with split 'test'"):
        AgeCSVDataset(str(tmp_path), table, 16, split="test")


def broken_dataset(tmp_path, workers_subdir=""):
    """A split file whose 2nd train image is missing and whose 3rd is not a JPEG."""
    make_synthetic_age_dataset(tmp_path, n_train=4, n_val=2, n_test=2, img_size=8, seed=0)
    table = AgeCSVDataset.read_table(str(tmp_path))
    ds = AgeCSVDataset(str(tmp_path), table, 8, split="train")
    (tmp_path / table["path"].iloc[1]).unlink()
    (tmp_path / table["path"].iloc[2]).write_bytes(b"not a jpeg at all")
    return ds, table


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    ds, table = broken_dataset(tmp_path)
    with pytest.raises(ImageReadError, match=r"train_000001_\d+\.jpg: image listed in agedb\.csv not found"):
        ds[1]
    with pytest.raises(ImageReadError, match=r"train_000002_\d+\.jpg: cannot read image"):
        ds[2]


def test_image_error_from_loader_workers_is_the_same_single_line(tmp_path, monkeypatch):
    ds, _ = broken_dataset(tmp_path)
    with pytest.raises(ImageReadError) as direct:
        ds[1]
    # After a worker error PyTorch's iterator clean-up waits MP_STATUS_CHECK_INTERVAL (5 s) per worker;
    # shorten it so that the garbage collection below does not stall the test suite.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    loader = DataLoader(torch.utils.data.Subset(ds, [1, 0]), batch_size=1, num_workers=2)
    with pytest.raises(UserError) as from_worker:
        list(loader)
    message = str(from_worker.value)
    del from_worker, loader
    gc.collect()  # shut the workers down now, while the short interval applies
    assert message == str(direct.value)
    assert "\n" not in message and one_line(message) == message and "Traceback" not in message


def test_synthetic_dataset_is_deterministic_and_label_dependent(tmp_path):
    a = make_synthetic_age_dataset(tmp_path / "a", n_train=30, n_val=10, n_test=10, img_size=24, seed=5)
    b = make_synthetic_age_dataset(tmp_path / "b", n_train=30, n_val=10, n_test=10, img_size=24, seed=5)
    assert a.read_text() == b.read_text()
    table = pd.read_csv(a)
    assert list(table.columns) == ["age", "path", "split"]
    assert (table["split"].value_counts()[["train", "val", "test"]] == [30, 10, 10]).all()
    for rel in table["path"][:5]:
        assert hashlib.sha256((a.parent / rel).read_bytes()).digest() == \
            hashlib.sha256((b.parent / rel).read_bytes()).digest()
    # the image content carries the label: bright-disc area grows with the age
    areas, ages = [], []
    for _, row in table.iterrows():
        img = np.asarray(Image.open(a.parent / row["path"]).convert("L"), dtype=np.float32)
        areas.append((img > 130).mean())
        ages.append(row["age"])
    assert np.corrcoef(areas, ages)[0, 1] > 0.8


@pytest.mark.parametrize("size", [(40, 28), (16, 16)])
def test_transforms_equal_torchvision(size):
    from torchvision import transforms

    from ranksim.harness.data.age import age_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    normalize = [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    for train in (False, True):
        steps = [transforms.Resize((16, 16))]
        if train:
            steps += [transforms.RandomCrop(16, padding=16), transforms.RandomHorizontalFlip()]
        reference = transforms.Compose(steps + normalize)
        ours = age_transform(16, train)
        for seed in range(8):
            torch.manual_seed(seed)
            expected = reference(image)
            torch.manual_seed(seed)
            assert torch.equal(ours(image), expected), (train, seed)
