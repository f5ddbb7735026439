from __future__ import annotations

import math

import numpy as np
import torch

from stages.evaluation.sqnr import ErrorSums, finite_or_none, sqnr_db


def _numpy_sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - test.astype(np.float64)) ** 2))


def test_sqnr_matches_numpy_over_batches() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    test = reference + 0.05 * rng.standard_normal(reference.shape).astype(np.float32)

    sums = ErrorSums()
    for start in range(0, 6, 2):
        sums.add(torch.from_numpy(reference[start : start + 2]), torch.from_numpy(test[start : start + 2]))

    assert math.isclose(sums.sqnr_db, _numpy_sqnr(reference, test), rel_tol=1e-9)
    expected_cosine = np.dot(reference.ravel().astype(np.float64), test.ravel()) / (
        np.linalg.norm(reference.astype(np.float64)) * np.linalg.norm(test.astype(np.float64))
    )
    assert math.isclose(sums.cosine, expected_cosine, rel_tol=1e-9)
    assert sums.count == reference.size


def test_sqnr_of_known_noise() -> None:
    # Signal energy 100, noise energy 1: 20 dB.
    assert sqnr_db(100.0, 1.0) == 20.0
    assert sqnr_db(5.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf


def test_exact_values_have_infinite_sqnr() -> None:
    sums = ErrorSums()
    values = torch.arange(10.0)
    sums.add(values, values.clone())
    assert sums.sqnr_db == math.inf
    assert sums.cosine == 1.0
    assert sums.summary()["sqnr_db"] is None


def test_finite_or_none_rounds() -> None:
    assert finite_or_none(12.3456, 2) == 12.35
    assert finite_or_none(math.inf, 2) is None
    assert finite_or_none(float("nan"), 2) is None
