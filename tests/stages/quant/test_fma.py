"""fma32 against exact rational arithmetic rounded to float32."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from stages.quant.arithmetic import fma32


def _round_to_float32(value: Fraction) -> np.float32:
    """Round an exact rational to the nearest float32, ties to even."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    distances = [abs(Fraction(float(candidate)) - value) for candidate in candidates]
    best = min(distances)
    nearest = [candidate for candidate, distance in zip(candidates, distances) if distance == best]
    if len(nearest) == 1:
        return nearest[0]
    return next(candidate for candidate in nearest if int(candidate.view(np.int32)) % 2 == 0)


def _exact(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.array([_round_to_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in zip(a, b, c)])


def test_fma32_random_values_exact() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(-300, 300, 2000).astype(np.float32)
    b = rng.uniform(-1, 1, 2000).astype(np.float32)
    c = rng.uniform(-300, 300, 2000).astype(np.float32)

    actual = fma32(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)).numpy()

    assert np.array_equal(actual, _exact(a, b, c))


def test_fma32_float64_halfway_sum() -> None:
    # (1 + 2**-23) * (1 - 2**-24) + (2**-47 + 2**-60) = 1 + 2**-24 + 2**-60 exactly.
    # float64 drops the 2**-60 and lands halfway between the float32 values 1
    # and 1 + 2**-23, where ties to even would pick 1. The exact sum is above it.
    a = np.array([1 + 2**-23], dtype=np.float32)
    b = np.array([1 - 2**-24], dtype=np.float32)
    c = np.array([2**-47 + 2**-60], dtype=np.float32)

    actual = fma32(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)).numpy()
    float64_then_float32 = (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)

    assert actual[0] == np.float32(1 + 2**-23)
    assert np.array_equal(actual, _exact(a, b, c))
    assert float64_then_float32[0] == np.float32(1.0)
