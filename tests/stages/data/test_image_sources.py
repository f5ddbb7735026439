from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional

from pipeline.errors import StageError
from stages.data import dataset_files, load_dataset
from stages.data.sample_photos import photo_files


def _write_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(4):
            pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")


def test_images_source_against_torchvision(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "pics")
    spec = {"source": "images", "path": "pics", "resize": 10, "image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    dataset = load_dataset(spec, tmp_path)
    assert dataset.inputs.shape == (8, 3, 8, 8)
    assert dataset.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]

    image = Image.open(tmp_path / "pics" / "dog" / "2.png").convert("RGB")
    tensor = functional.to_tensor(functional.center_crop(functional.resize(image, 10), 8))
    expected = functional.normalize(tensor, [0.5] * 3, [0.2] * 3)
    torch.testing.assert_close(torch.from_numpy(dataset.inputs[6]), expected)

    files = dataset_files(spec, tmp_path)
    assert len(files) == 8
    assert files[0].name == "0.png"


def test_images_split_is_stratified(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "pics")
    spec = {"source": "images", "path": "pics", "image_size": 8, "split": "test", "test_size": 0.5}
    assert np.bincount(load_dataset(spec, tmp_path).labels).tolist() == [2, 2]


def test_images_without_image_size_raises(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "pics")
    with pytest.raises(StageError, match="image_size is missing"):
        load_dataset({"source": "images", "path": "pics"}, tmp_path)


def test_sample_photos_found() -> None:
    names = [path.name for path in photo_files()]
    assert names[:3] == ["china.jpg", "flower.jpg", "grace_hopper.jpg"]


def test_sample_photos_split_by_photo(tmp_path: Path) -> None:
    base = {"source": "sample_photos", "image_size": 32, "resize": 48, "crops_per_image": 3, "test_size": 1}
    train = load_dataset({**base, "split": "train"}, tmp_path)
    test = load_dataset({**base, "split": "test"}, tmp_path)
    photos = len(photo_files())
    assert len(test) == 3
    assert len(train) == 3 * (photos - 1)
    assert train.inputs.shape[1:] == (3, 32, 32)
    assert train.labels is None

    # Each crop's photo: the crop must be a window of that resized photo.
    def photo_of(crop: np.ndarray) -> set[str]:
        owners = set()
        for path in photo_files():
            image = Image.open(path).convert("RGB")
            scale = 48 / min(image.size)
            resized = image.resize((max(48, round(image.size[0] * scale)), max(48, round(image.size[1] * scale))), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
            windows = np.lib.stride_tricks.sliding_window_view(pixels, (3, 32, 32))[0]
            if np.any(np.all(np.abs(windows - crop) < 1e-6, axis=(-3, -2, -1))):
                owners.add(path.name)
        return owners

    train_photos = set().union(*(photo_of(crop) for crop in train.inputs))
    test_photos = set().union(*(photo_of(crop) for crop in test.inputs))
    assert len(test_photos) == 1
    assert len(train_photos) == photos - 1
    assert not train_photos & test_photos


def test_sample_photos_deterministic_crops(tmp_path: Path) -> None:
    spec = {"source": "sample_photos", "image_size": 16, "crops_per_image": 2, "seed": 4}
    first = load_dataset(spec, tmp_path)
    second = load_dataset(spec, tmp_path)
    other = load_dataset({**spec, "seed": 5}, tmp_path)
    np.testing.assert_array_equal(first.inputs, second.inputs)
    assert not np.array_equal(first.inputs, other.inputs)
    assert dataset_files(spec, tmp_path) == photo_files()
