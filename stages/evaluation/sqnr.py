"""Signal-to-quantization-noise ratio and cosine similarity, accumulated over batches.

SQNR in dB is ``10 * log10(sum(reference**2) / sum((reference - test)**2))``,
the reference being the fp32 value. Sums are kept in float64 over the whole
data set, so memory does not grow with the number of batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """Return the SQNR in dB; ``inf`` when the values match exactly.

    A zero reference with non-zero noise gives ``-inf``.
    """
    if noise_energy == 0.0:
        return math.inf
    if signal_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def finite_or_none(value: float, digits: int) -> float | None:
    """Round ``value`` for JSON; infinities and NaN become None (JSON has no inf)."""
    if not math.isfinite(value):
        return None
    return round(value, digits)


@dataclass
class ErrorSums:
    """Running sums of one fp32 value against its int8 counterpart."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    test_energy: float = 0.0
    count: int = 0

    def add(self, reference: torch.Tensor, test: torch.Tensor) -> None:
        import torch

        reference = reference.detach().to(torch.float64).reshape(-1)
        test = test.detach().to(torch.float64).reshape(-1)
        error = reference - test
        self.signal += float(torch.dot(reference, reference))
        self.noise += float(torch.dot(error, error))
        self.dot += float(torch.dot(reference, test))
        self.test_energy += float(torch.dot(test, test))
        self.count += reference.numel()

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        """Cosine similarity of the two values flattened over the data set."""
        if self.signal == 0.0 or self.test_energy == 0.0:
            return 1.0 if self.signal == self.test_energy else 0.0
        return self.dot / math.sqrt(self.signal * self.test_energy)

    def summary(self) -> dict[str, Any]:
        return {
            "sqnr_db": finite_or_none(self.sqnr_db, 4),
            "cosine": finite_or_none(self.cosine, 6),
            "elements": self.count,
        }
