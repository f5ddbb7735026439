from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipeline.errors import StageError
from stages.data import load_dataset


def test_digits_all_matches_sklearn(tmp_path: Path) -> None:
    digits = load_digits()
    dataset = load_dataset({"source": "digits"}, tmp_path)
    assert dataset.inputs.shape == (1797, 1, 8, 8)
    assert dataset.inputs.dtype == np.float32
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.inputs[:, 0], (digits.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(dataset.labels, digits.target)


def test_digits_test_split_is_600_stratified(tmp_path: Path) -> None:
    digits = load_digits()
    test = load_dataset({"source": "digits", "split": "test", "test_size": 600, "seed": 0}, tmp_path)
    train = load_dataset({"source": "digits", "split": "train", "test_size": 600, "seed": 0}, tmp_path)
    assert len(test) == 600
    assert len(train) == 1197

    # Each class keeps its share of the whole set to within one sample.
    expected = np.bincount(digits.target) * 600 / 1797
    assert np.all(np.abs(np.bincount(test.labels) - expected) < 1)

    # No test image is in the train side: compare the images themselves.
    train_rows = {row.tobytes() for row in train.inputs}
    test_rows = [row.tobytes() for row in test.inputs]
    overlap = sum(row in train_rows for row in test_rows)
    # load_digits has a few exact duplicate images; allow those, but nothing near a real leak.
    assert overlap < 10


def test_digits_mean_std_and_batches(tmp_path: Path) -> None:
    dataset = load_dataset({"source": "digits", "mean": [0.5], "std": [0.25], "batch_size": 100, "limit": 250}, tmp_path)
    plain = load_dataset({"source": "digits", "batch_size": 100, "limit": 250}, tmp_path)
    np.testing.assert_allclose(dataset.inputs, (plain.inputs - 0.5) / 0.25, rtol=1e-6)

    sizes = [(inputs.shape[0], labels.shape[0]) for inputs, labels in dataset.batches()]
    assert sizes == [(100, 100), (100, 100), (50, 50)]
    assert len(list(dataset.batches(max_batches=2))) == 2


def test_digits_wrong_mean_length_raises(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="data set 'calib': mean has 3 values.*1 channels"):
        load_dataset({"source": "digits", "mean": [0.1, 0.2, 0.3]}, tmp_path, "calib")
