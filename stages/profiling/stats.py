"""Latency samples and their summary: median and the 10th/90th percentiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    """Per-run latency in milliseconds over ``runs`` timed runs."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> Latency:
        import numpy as np

        milliseconds = np.asarray(samples, dtype=np.float64) * 1000.0
        p10, median, p90 = np.percentile(milliseconds, [10, 50, 90])
        return cls(round(float(median), 4), round(float(p10), 4), round(float(p90), 4), len(samples))

    def as_measurements(self, prefix: str) -> dict[str, Any]:
        """Return ``{prefix}_ms`` (the median) and ``{prefix}_p10_ms``/``{prefix}_p90_ms``."""
        return {f"{prefix}_ms": self.median_ms, f"{prefix}_p10_ms": self.p10_ms, f"{prefix}_p90_ms": self.p90_ms}
