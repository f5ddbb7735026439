"""Checks and conversion shared by the sources that take arrays from a user."""

from __future__ import annotations

from typing import Any

from pipeline.errors import StageError
from stages.data.dataset import Dataset, normalize
from stages.data.spec import DatasetSpec
from stages.data.split import limit_indices, split_indices


def dataset_from_arrays(spec: DatasetSpec, inputs: Any, labels: Any, origin: str) -> Dataset:
    """Check user arrays, split, limit and normalize them.

    ``origin`` names where the arrays came from (a file, a callable) in errors.
    """
    import numpy as np

    inputs = np.asarray(inputs)
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise StageError(
            f"data set '{spec.name}': inputs from {origin} have shape {inputs.shape}; expected "
            f"samples first with at least one sample, e.g. N x C x H x W"
        )
    if not np.issubdtype(inputs.dtype, np.number):
        raise StageError(f"data set '{spec.name}': inputs from {origin} have dtype {inputs.dtype}; expected numbers")

    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (inputs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise StageError(
                f"data set '{spec.name}': labels from {origin} have shape {labels.shape} and dtype "
                f"{labels.dtype}; expected integers of shape ({inputs.shape[0]},), one class per sample"
            )
        labels = labels.astype(np.int64)

    indices = split_indices(inputs.shape[0], labels, spec.split, spec.test_size, spec.seed, spec.name)
    indices = limit_indices(indices, spec.limit, spec.seed)
    selected = normalize(inputs[indices].astype(np.float32), spec.mean, spec.std, spec.name)
    selected_labels = None if labels is None else labels[indices]
    return Dataset(spec.name, np.ascontiguousarray(selected), selected_labels, spec.batch_size)
