"""Dispatch a ``data:`` entry to its source module.

Only :func:`load_dataset` imports numpy, torch or a source's packages;
:func:`dataset_files` and :func:`dataset_packages` stay cheap because the
engine calls them for the cache key of every run, cached or not.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from stages.data.dataset import Dataset
from stages.data.spec import DatasetSpec

# source -> module under stages.data that defines load(). A module:callable
# source goes to stages.data.factory.
SOURCE_MODULES: dict[str, str] = {
    "digits": "stages.data.digits",
    "random": "stages.data.synthetic",
    "npy": "stages.data.npy",
    "images": "stages.data.images",
    "sample_photos": "stages.data.sample_photos",
}
FACTORY_MODULE = "stages.data.factory"

# Sources whose loader takes the pipeline folder for relative paths.
ROOTED_SOURCES = frozenset({"npy", "images"})

# Distributions whose versions can change what a source returns.
SOURCE_PACKAGES: dict[str, tuple[str, ...]] = {
    "digits": ("numpy", "scikit-learn"),
    "random": ("numpy",),
    "npy": ("numpy",),
    "images": ("numpy", "torch", "torchvision", "pillow"),
    "sample_photos": ("numpy", "pillow", "scikit-learn", "matplotlib", "scikit-image"),
}


def load_dataset(spec: Mapping[str, Any], root: Path, name: str | None = None) -> Dataset:
    """Load and preprocess one entry of the ``data:`` section.

    ``root`` is the pipeline file's folder; ``name`` is the entry's key in
    ``data:`` and appears in errors (default: the source).
    """
    parsed = DatasetSpec.from_dict(spec, name)
    if parsed.is_factory:
        return importlib.import_module(FACTORY_MODULE).load(parsed, Path(root))

    module = importlib.import_module(SOURCE_MODULES[parsed.source])
    if parsed.source in ROOTED_SOURCES:
        return module.load(parsed, Path(root))
    return module.load(parsed)


def dataset_files(spec: Mapping[str, Any], root: Path, name: str | None = None) -> list[Path]:
    """Files whose content defines the data set, for the cache key.

    The .npy/.npz file, every image of an images folder, the sample photos
    found, or a user module's source file. digits and random data are fixed
    by the package versions in :func:`dataset_packages`.
    """
    parsed = DatasetSpec.from_dict(spec, name)
    root = Path(root)
    if parsed.is_factory:
        from stages.data.factory import module_file

        path = module_file(parsed.source.split(":")[0], root)
        return [] if path is None else [path]
    if parsed.source == "npy":
        from stages.data.npy import data_file

        return [data_file(parsed, root)]
    if parsed.source == "images":
        from stages.data.images import image_files

        return image_files(parsed, root)
    if parsed.source == "sample_photos":
        from stages.data.sample_photos import photo_files

        return photo_files()
    return []


def dataset_packages(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """Distributions whose installed versions are part of the data's cache key."""
    source = str(spec["source"])
    if ":" in source:
        return ("numpy",)
    return SOURCE_PACKAGES[source]
