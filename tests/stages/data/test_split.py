from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import StageError
from stages.data.split import held_out_count, limit_indices, split_indices


def _labels() -> np.ndarray:
    # 3 classes of 50, 30 and 20 samples, interleaved.
    return np.random.default_rng(5).permutation(np.repeat([0, 1, 2], [50, 30, 20]))


def test_split_is_deterministic() -> None:
    labels = _labels()
    first = split_indices(100, labels, "test", 0.3, 7, "d")
    second = split_indices(100, labels, "test", 0.3, 7, "d")
    other_seed = split_indices(100, labels, "test", 0.3, 8, "d")
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_split_sides_are_disjoint_and_complete() -> None:
    labels = _labels()
    train = split_indices(100, labels, "train", 0.3, 0, "d")
    test = split_indices(100, labels, "test", 0.3, 0, "d")
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert np.array_equal(split_indices(100, labels, "all", 0.3, 0, "d"), np.arange(100))


def test_split_keeps_class_shares() -> None:
    labels = _labels()
    test = split_indices(100, labels, "test", 0.3, 0, "d")
    assert len(test) == 30
    assert np.bincount(labels[test]).tolist() == [15, 9, 6]


def test_split_largest_remainder_total() -> None:
    # 7 held out of 10 classes of sizes 5, 3, 2: ideal shares 3.5, 2.1, 1.4.
    labels = np.repeat([0, 1, 2], [5, 3, 2])
    test = split_indices(10, labels, "test", 7, 0, "d")
    assert len(test) == 7
    assert np.bincount(labels[test]).tolist() == [4, 2, 1]


def test_test_size_share_or_count() -> None:
    assert held_out_count(0.25, 100, "d") == 25
    assert held_out_count(600, 1797, "d") == 600
    assert held_out_count(1, 10, "d") == 1


def test_test_size_leaving_empty_side_raises() -> None:
    with pytest.raises(StageError, match="data set 'calib'.*test_size"):
        held_out_count(10, 10, "calib")
    with pytest.raises(StageError, match="test_size"):
        held_out_count(0.01, 10, "calib")


def test_unlabelled_split_is_random_subset() -> None:
    test = split_indices(50, None, "test", 10, 3, "d")
    assert len(test) == 10
    assert not np.array_equal(test, np.arange(10))


def test_limit_keeps_order_and_is_seeded() -> None:
    indices = np.arange(100, 200)
    limited = limit_indices(indices, 10, 0)
    assert len(limited) == 10
    assert np.all(np.diff(limited) > 0)
    assert np.all(np.isin(limited, indices))
    assert np.array_equal(limited, limit_indices(indices, 10, 0))
    assert np.array_equal(limit_indices(indices, 500, 0), indices)
    assert np.array_equal(limit_indices(indices, None, 0), indices)
