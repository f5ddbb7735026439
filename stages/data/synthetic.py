"""The ``random`` source: standard normal inputs without labels.

``kwargs.shape`` is the full shape, samples first, e.g. ``[64, 3, 32, 32]``.
Values come from numpy's ``default_rng(seed)``, so they are the same on every
machine, unlike ``torch.randn``, whose stream depends on the device.
"""

from __future__ import annotations

from pipeline.errors import StageError
from stages.data.dataset import Dataset, normalize
from stages.data.spec import DatasetSpec
from stages.data.split import limit_indices, split_indices


def load(spec: DatasetSpec) -> Dataset:
    import numpy as np

    shape = spec.kwargs.get("shape")
    if not isinstance(shape, list) or len(shape) < 2 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise StageError(
            f"data set '{spec.name}': kwargs.shape is missing or invalid; the random source needs a list of positive "
            f"integers with the number of samples first, e.g. [64, 3, 32, 32]; got {shape!r}"
        )

    inputs = np.random.default_rng(spec.seed).standard_normal(tuple(shape), dtype=np.float32)
    indices = split_indices(shape[0], None, spec.split, spec.test_size, spec.seed, spec.name)
    indices = limit_indices(indices, spec.limit, spec.seed)
    inputs = normalize(inputs[indices], spec.mean, spec.std, spec.name)
    return Dataset(spec.name, np.ascontiguousarray(inputs), None, spec.batch_size)
