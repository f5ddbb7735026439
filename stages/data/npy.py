"""The ``npy`` source: a .npy file of inputs, or a .npz with ``inputs`` and optional ``labels``.

Inputs are used as stored (already scaled), then normalized by ``mean`` and
``std`` when the entry gives them.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import StageError
from stages.data.arrays import dataset_from_arrays
from stages.data.dataset import Dataset
from stages.data.spec import DatasetSpec


def data_file(spec: DatasetSpec, root: Path) -> Path:
    if not spec.path:
        raise StageError(f"data set '{spec.name}': path is missing; set a .npy or .npz file relative to {root}")
    path = (root / spec.path).resolve()
    if path.suffix not in (".npy", ".npz"):
        raise StageError(f"data set '{spec.name}': path {spec.path} must end in .npy or .npz")
    if not path.is_file():
        raise StageError(f"data set '{spec.name}': file {path} not found; check path (relative to {root})")
    return path


def load(spec: DatasetSpec, root: Path) -> Dataset:
    import numpy as np

    path = data_file(spec, root)
    if path.suffix == ".npy":
        return dataset_from_arrays(spec, np.load(path, allow_pickle=False), None, str(path))

    with np.load(path, allow_pickle=False) as archive:
        if "inputs" not in archive:
            raise StageError(
                f"data set '{spec.name}': {path} has arrays {sorted(archive.files)} but no 'inputs'; "
                f"save it with np.savez(path, inputs=..., labels=...)"
            )
        inputs = archive["inputs"]
        labels = archive["labels"] if "labels" in archive else None
    return dataset_from_arrays(spec, inputs, labels, str(path))
