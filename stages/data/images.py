"""The ``images`` source: a folder with one subfolder of images per class.

Read with torchvision's ImageFolder (classes in sorted folder order), then
resized so the shorter side is ``resize``, center-cropped to ``image_size``,
scaled to [0, 1] and normalized by ``mean`` and ``std``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import StageError
from stages.data.dataset import Dataset, normalize
from stages.data.spec import DatasetSpec
from stages.data.split import limit_indices, split_indices

# File suffixes that torchvision's ImageFolder reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(spec: DatasetSpec, root: Path) -> Path:
    if not spec.path:
        raise StageError(f"data set '{spec.name}': path is missing; the images source reads a folder of class subfolders")
    folder = (root / spec.path).resolve()
    if not folder.is_dir():
        raise StageError(f"data set '{spec.name}': folder {folder} not found; check path (relative to {root})")
    return folder


def image_files(spec: DatasetSpec, root: Path) -> list[Path]:
    """Return every image file of the folder, sorted, for the cache key."""
    folder = image_folder(spec, root)
    files = [path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files)


def load(spec: DatasetSpec, root: Path) -> Dataset:
    import numpy as np
    import torch
    from torchvision import datasets, transforms

    folder = image_folder(spec, root)
    if spec.image_size is None:
        raise StageError(f"data set '{spec.name}': image_size is missing; set the side of the center crop")

    steps = [transforms.Resize(spec.resize or spec.image_size), transforms.CenterCrop(spec.image_size), transforms.ToTensor()]
    try:
        folder_set = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise StageError(f"data set '{spec.name}': cannot read {folder} as class subfolders of images: {exc}") from exc

    labels = np.asarray(folder_set.targets, dtype=np.int64)
    indices = split_indices(len(labels), labels, spec.split, spec.test_size, spec.seed, spec.name)
    indices = limit_indices(indices, spec.limit, spec.seed)

    with torch.no_grad():
        inputs = torch.stack([folder_set[int(index)][0] for index in indices]).numpy()
    inputs = normalize(inputs, spec.mean, spec.std, spec.name)
    return Dataset(spec.name, np.ascontiguousarray(inputs), labels[indices], spec.batch_size)
