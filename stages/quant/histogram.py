"""A fixed-size histogram that widens its range as batches arrive.

Memory is constant because the bin count never changes. When a batch falls
outside the current range, the bin width grows by an integer factor and the
new low edge sits on an old bin edge. So every old bin lies inside exactly
one new bin, and the counts move over without approximation. The
range always contains 0, the value every activation range must represent.
"""

from __future__ import annotations

import math

import torch

# Bin width used while every value seen so far is 0.
_DEGENERATE_WIDTH = 2.0**-40


class StreamingHistogram:
    """Counts of float64 values in ``bins`` equal bins from ``lo`` with width ``width``."""

    def __init__(self, bins: int) -> None:
        if bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.lo = 0.0
        self.width = 0.0

    @property
    def hi(self) -> float:
        return self.lo + self.bins * self.width

    @property
    def empty(self) -> bool:
        return self.width == 0.0

    def edges(self) -> torch.Tensor:
        return self.lo + self.width * torch.arange(self.bins + 1, dtype=torch.float64)

    def centers(self) -> torch.Tensor:
        return self.lo + self.width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def add(self, values: torch.Tensor, batch_min: float | None = None, batch_max: float | None = None) -> None:
        """Add a batch of finite values; ``batch_min`` and ``batch_max`` save a pass when the caller has them.

        The counts come from torch.histc on the values' own dtype and device,
        so no float64 copy of the batch is made.
        """
        values = values.detach().reshape(-1)
        if values.numel() == 0:
            return
        if not torch.is_floating_point(values):
            values = values.to(torch.float32)
        if batch_min is None or batch_max is None:
            batch_min, batch_max = (float(value) for value in torch.aminmax(values))
        data_lo = min(batch_min, 0.0)
        data_hi = max(batch_max, 0.0)

        if self.empty:
            self.lo = data_lo
            span = data_hi - data_lo
            self.width = span / self.bins if span > 0 else _DEGENERATE_WIDTH
        elif data_lo < self.lo or data_hi > self.hi:
            self._widen(data_lo, data_hi)

        # histc puts a value equal to the upper edge into the last bin and
        # ignores values outside [lo, hi]; after widening there are none.
        counts = torch.histc(values, bins=self.bins, min=self.lo, max=self.hi)
        self.counts += counts.to(device=self.counts.device, dtype=torch.float64)

    def _widen(self, data_lo: float, data_hi: float) -> None:
        # Shift the low edge down by ``shift`` old bins, then merge ``factor``
        # old bins into each new bin: old bin i lands in new bin (shift + i) // factor.
        shift = max(0, math.ceil((self.lo - data_lo) / self.width))
        new_lo = self.lo - shift * self.width
        needed = max(data_hi, self.hi) - new_lo
        factor = max(1, math.ceil(needed / (self.bins * self.width)))
        while new_lo + self.bins * factor * self.width < max(data_hi, self.hi):
            factor += 1

        target = torch.div(shift + torch.arange(self.bins), factor, rounding_mode="floor")
        counts = torch.zeros(self.bins, dtype=torch.float64)
        counts.index_add_(0, target, self.counts)
        self.counts = counts
        self.lo = new_lo
        self.width = self.width * factor

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "counts": self.counts.clone(),
            "lo": torch.tensor(self.lo, dtype=torch.float64),
            "width": torch.tensor(self.width, dtype=torch.float64),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state["counts"].numel() != self.bins:
            raise ValueError(f"histogram state has {state['counts'].numel()} bins, expected {self.bins}")
        self.counts = state["counts"].to(torch.float64).clone()
        self.lo = float(state["lo"])
        self.width = float(state["width"])
