"""The ``digits`` source: scikit-learn's 1797 handwritten digits, 1 x 8 x 8.

Pixel values 0..16 are scaled to [0, 1] by dividing by 16, then normalized by
``mean`` and ``std`` when the entry gives them.
"""

from __future__ import annotations

from stages.data.dataset import Dataset, normalize
from stages.data.spec import DatasetSpec
from stages.data.split import limit_indices, split_indices

# load_digits returns integer gray levels in 0..16.
MAX_PIXEL = 16.0


def load(spec: DatasetSpec) -> Dataset:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    indices = split_indices(len(labels), labels, spec.split, spec.test_size, spec.seed, spec.name)
    indices = limit_indices(indices, spec.limit, spec.seed)

    inputs = (digits.images[indices] / MAX_PIXEL).astype(np.float32)[:, None, :, :]
    inputs = normalize(inputs, spec.mean, spec.std, spec.name)
    return Dataset(spec.name, np.ascontiguousarray(inputs), labels[indices], spec.batch_size)
