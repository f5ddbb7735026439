"""Activation observers: modules that record statistics and pick a clip range.

An observer sits after a value in the observed GraphModule, returns its
input unchanged and accumulates statistics batch by batch in constant
memory. ``stats()`` exports them as tensors (the calibration artifact) and
``load_stats()`` restores them, so conversion can recompute qparams without
running the data again. ``clip_range()`` is the observer's choice of
[lo, hi]; ``qparams()`` turns it into a scale and zero point for the
activation dtype.

Kinds: ``minmax``, ``moving_average`` (exponential moving average of batch
min and max), ``percentile``, ``entropy`` (TensorRT-style KL divergence
search) and ``mse`` (clip range minimizing the expected quantization error).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from stages.quant.arithmetic import QParams, qparams_from_range
from stages.quant.histogram import StreamingHistogram

HISTOGRAM_BINS = 2048
MOVING_AVERAGE_CONSTANT = 0.01
MSE_STEPS = 100


class Observer(nn.Module):
    """Base class: tracks min and max; subclasses refine the clip range."""

    kind: ClassVar[str] = ""

    def __init__(self, dtype: str = "uint8", value_name: str = "") -> None:
        super().__init__()
        self.dtype = dtype
        # The fp32 fx node whose value this observer records, for messages.
        self.value_name = value_name
        self.min_val = float("inf")
        self.max_val = float("-inf")
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"observer of {self.value_name!r} got a {x.dtype} tensor, expected floating point")
        values = x.detach()
        if values.numel() == 0:
            return x
        # One pass for min and max; a NaN or an infinity shows in them, so
        # no separate isfinite pass is needed.
        batch_min, batch_max = (float(value) for value in torch.aminmax(values))
        if not (math.isfinite(batch_min) and math.isfinite(batch_max)):
            raise ValueError(
                f"observer of {self.value_name!r} got NaN or infinite values; check the model and its input data"
            )
        self.observe(values, batch_min, batch_max)
        self.batches += 1
        return x

    def observe(self, values: torch.Tensor, batch_min: float, batch_max: float) -> None:
        self.min_val = min(self.min_val, batch_min)
        self.max_val = max(self.max_val, batch_max)

    @property
    def calibrated(self) -> bool:
        return self.batches > 0

    def clip_range(self) -> tuple[float, float]:
        self._check_calibrated()
        return self.min_val, self.max_val

    def qparams(self) -> QParams:
        lo, hi = self.clip_range()
        return qparams_from_range(lo, hi, self.dtype)

    def stats(self) -> dict[str, torch.Tensor]:
        return {
            "min": torch.tensor(self.min_val, dtype=torch.float64),
            "max": torch.tensor(self.max_val, dtype=torch.float64),
            "batches": torch.tensor(self.batches, dtype=torch.int64),
        }

    def load_stats(self, stats: dict[str, torch.Tensor]) -> None:
        self.min_val = float(stats["min"])
        self.max_val = float(stats["max"])
        self.batches = int(stats["batches"])

    def settings(self) -> dict[str, Any]:
        return {"observer": self.kind, "dtype": self.dtype}

    def _check_calibrated(self) -> None:
        if not self.calibrated:
            raise ValueError(
                f"observer of {self.value_name!r} saw no data; run calibration on at least one batch first"
            )

    def extra_repr(self) -> str:
        return f"{self.dtype}, value={self.value_name!r}, min={self.min_val:.6g}, max={self.max_val:.6g}"


class MinMaxObserver(Observer):
    """Clip range = [min, max] over every batch."""

    kind = "minmax"


class MovingAverageObserver(Observer):
    """Clip range = exponential moving average of each batch's min and max.

    The first batch sets the averages; each later batch moves them by
    ``averaging_constant`` times the difference.
    """

    kind = "moving_average"

    def __init__(self, dtype: str = "uint8", value_name: str = "", averaging_constant: float = MOVING_AVERAGE_CONSTANT) -> None:
        super().__init__(dtype, value_name)
        self.averaging_constant = averaging_constant
        self.avg_min = 0.0
        self.avg_max = 0.0

    def observe(self, values: torch.Tensor, batch_min: float, batch_max: float) -> None:
        if self.batches == 0:
            self.avg_min, self.avg_max = batch_min, batch_max
        else:
            self.avg_min += self.averaging_constant * (batch_min - self.avg_min)
            self.avg_max += self.averaging_constant * (batch_max - self.avg_max)
        super().observe(values, batch_min, batch_max)

    def clip_range(self) -> tuple[float, float]:
        self._check_calibrated()
        return self.avg_min, self.avg_max

    def stats(self) -> dict[str, torch.Tensor]:
        stats = super().stats()
        stats["avg_min"] = torch.tensor(self.avg_min, dtype=torch.float64)
        stats["avg_max"] = torch.tensor(self.avg_max, dtype=torch.float64)
        return stats

    def load_stats(self, stats: dict[str, torch.Tensor]) -> None:
        super().load_stats(stats)
        self.avg_min = float(stats["avg_min"])
        self.avg_max = float(stats["avg_max"])


class _HistogramObserver(Observer):
    """Base of the observers that keep a histogram of the observed values."""

    def __init__(self, dtype: str = "uint8", value_name: str = "", bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(dtype, value_name)
        self.histogram = StreamingHistogram(bins)

    def observe(self, values: torch.Tensor, batch_min: float, batch_max: float) -> None:
        super().observe(values, batch_min, batch_max)
        self.histogram.add(values, batch_min, batch_max)

    def stats(self) -> dict[str, torch.Tensor]:
        stats = super().stats()
        for key, value in self.histogram.state().items():
            stats[f"hist_{key}"] = value
        return stats

    def load_stats(self, stats: dict[str, torch.Tensor]) -> None:
        super().load_stats(stats)
        self.histogram.load_state({key[len("hist_"):]: value for key, value in stats.items() if key.startswith("hist_")})


class PercentileObserver(_HistogramObserver):
    """Clip range = the (100 - p)-th and p-th percentiles of the values.

    Percentiles are read from the histogram with linear interpolation inside
    a bin, so they are exact to within one bin width of np.percentile.
    """

    kind = "percentile"

    def __init__(self, dtype: str = "uint8", value_name: str = "", percentile: float = 99.99, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(dtype, value_name, bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def clip_range(self) -> tuple[float, float]:
        self._check_calibrated()
        lo = max(self.min_val, _histogram_quantile(self.histogram, 1.0 - self.percentile / 100.0))
        hi = min(self.max_val, _histogram_quantile(self.histogram, self.percentile / 100.0))
        return lo, hi

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "percentile": self.percentile}


class EntropyObserver(_HistogramObserver):
    """Clip range from the TensorRT entropy calibration on a histogram of |x|.

    The candidate thresholds are the bin edges from the number of
    quantization bins up to the end. For each, the reference distribution is
    the histogram cut at the threshold, with the outside counts added to its
    last bin. The candidate distribution merges that histogram into the
    quantization bins and spreads each merged count evenly over its nonzero
    source bins. The threshold with the least KL divergence wins. Like TensorRT, bin 0 takes
    the count of bin 1, so the zeros that a ReLU produces do not dominate.
    The clip range is [max(min, -T), min(max, T)].
    """

    kind = "entropy"

    def observe(self, values: torch.Tensor, batch_min: float, batch_max: float) -> None:
        Observer.observe(self, values, batch_min, batch_max)
        # Values after a ReLU are their own magnitudes: skip the abs() copy.
        magnitudes = values if batch_min >= 0 else values.abs()
        self.histogram.add(magnitudes, 0.0, max(-batch_min, batch_max))

    def quantization_bins(self) -> int:
        # uint8 on non-negative data uses all 256 levels on [0, T]; otherwise
        # the range [-T, T] leaves 128 levels for |x|.
        return 256 if self.dtype == "uint8" and self.min_val >= 0 else 128

    def clip_range(self) -> tuple[float, float]:
        self._check_calibrated()
        threshold = entropy_threshold(self.histogram.counts.numpy(), self.histogram.width, self.quantization_bins())
        return max(self.min_val, -threshold), min(self.max_val, threshold)


class MSEObserver(_HistogramObserver):
    """Clip range [a * min, a * max] whose quantization error is least.

    ``a`` runs over 1/100, 2/100, ..., 1; the error of each candidate is the
    count-weighted squared error of quantizing the histogram bin centers.
    """

    kind = "mse"

    def clip_range(self) -> tuple[float, float]:
        self._check_calibrated()
        centers = self.histogram.centers().numpy()
        counts = self.histogram.counts.numpy()
        best: tuple[float, float] = (self.min_val, self.max_val)
        best_error = np.inf
        for step in range(1, MSE_STEPS + 1):
            alpha = step / MSE_STEPS
            lo, hi = alpha * self.min_val, alpha * self.max_val
            error = float(np.sum(counts * (centers - fake_quantize(centers, qparams_from_range(lo, hi, self.dtype))) ** 2))
            if error < best_error:
                best, best_error = (lo, hi), error
        return best


OBSERVERS: dict[str, type[Observer]] = {
    cls.kind: cls for cls in (MinMaxObserver, MovingAverageObserver, PercentileObserver, EntropyObserver, MSEObserver)
}


def make_observer(settings: dict[str, Any], value_name: str) -> Observer:
    """Build the observer that an activation qconfig entry describes."""
    kind = settings["observer"]
    if kind not in OBSERVERS:
        raise ValueError(f"unknown observer {kind!r} for {value_name!r}: expected one of {sorted(OBSERVERS)}")
    if kind == "percentile":
        return PercentileObserver(settings["dtype"], value_name, percentile=float(settings["percentile"]))
    return OBSERVERS[kind](settings["dtype"], value_name)


def fake_quantize(values: np.ndarray, qparams: QParams) -> np.ndarray:
    """Quantize then dequantize float64 values (numpy, round half to even)."""
    q = np.clip(np.rint(values / qparams.scale) + qparams.zero_point, qparams.qmin, qparams.qmax)
    return (q - qparams.zero_point) * qparams.scale


def entropy_threshold(counts: np.ndarray, width: float, quant_bins: int) -> float:
    """Return the |x| threshold with the least KL divergence (see EntropyObserver).

    Every candidate end bin is scored at once from prefix sums. Within a
    merged group all nonzero bins share one candidate value, so the cross
    entropy of a candidate is a sum over its ``quant_bins`` groups. The
    search is O(bins * quant_bins) numpy work, with no Python loop.
    """
    hist = counts.astype(np.float64).copy()
    if hist.size > 1:
        hist[0] = hist[1]
    if hist.size <= quant_bins or hist.sum() == 0:
        return hist.size * width
    divergences = _divergences(hist, quant_bins)
    best_end = quant_bins + int(np.argmin(divergences))
    if not np.isfinite(divergences[best_end - quant_bins]):
        return hist.size * width
    return best_end * width


def _divergences(hist: np.ndarray, quant_bins: int) -> np.ndarray:
    """KL(reference || candidate) for each end bin in ``quant_bins .. hist.size``.

    For end bin ``e`` the reference is ``hist[:e]``, with the counts beyond
    it added to its last bin. Bin ``i`` belongs to group ``i * quant_bins // e``,
    and the candidate spreads each group's sum evenly over its nonzero bins.
    """
    ends = np.arange(quant_bins, hist.size + 1)
    zero = np.zeros(1)
    mass = np.concatenate([zero, np.cumsum(hist)])
    nonzero = np.concatenate([zero, np.cumsum(hist > 0)])
    plogp = np.concatenate([zero, np.cumsum(np.where(hist > 0, hist * np.log(np.where(hist > 0, hist, 1.0)), 0.0))])

    # Group g of end e contains bins [ceil(g * e / Q), ceil((g + 1) * e / Q)).
    groups = np.arange(quant_bins + 1)
    bounds = -((-groups[None, :] * ends[:, None]) // quant_bins)
    group_mass = np.diff(mass[bounds], axis=1)
    group_nonzero = np.diff(nonzero[bounds], axis=1)

    outside = mass[-1] - mass[ends]
    last = hist[ends - 1]
    reference_total = mass[-1]  # The reference keeps every count.
    candidate_total = mass[ends]

    # Sum of p log p over the bins before the last, then the last bin with the outside counts.
    last_reference = last + outside
    head_plogp = plogp[ends - 1] + np.where(last_reference > 0, last_reference * np.log(np.maximum(last_reference, 1e-300)), 0.0)
    sum_p_log_p = head_plogp / reference_total - np.log(reference_total)

    # Sum of p log q, group by group: reference mass times the log of the per-bin candidate share.
    group_reference = group_mass.copy()
    group_reference[:, -1] += outside
    has_mass = group_mass > 0
    log_q = np.log(np.where(has_mass, group_mass, 1.0) / np.maximum(group_nonzero, 1.0)) - np.log(np.maximum(candidate_total, 1e-300))[:, None]
    sum_p_log_q = np.sum(np.where(has_mass, group_reference * log_q, 0.0), axis=1) / reference_total

    divergences = sum_p_log_p - sum_p_log_q
    # The candidate is zero where the reference is not when the last bin is empty and the outside is not.
    divergences[(last == 0) & (outside > 0)] = np.inf
    divergences[candidate_total == 0] = np.inf
    return divergences


def _histogram_quantile(histogram: StreamingHistogram, fraction: float) -> float:
    counts = histogram.counts.numpy()
    total = counts.sum()
    target = fraction * total
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, counts.size - 1)
    before = cumulative[index] - counts[index]
    inside = (target - before) / counts[index] if counts[index] > 0 else 0.0
    return histogram.lo + histogram.width * (index + float(np.clip(inside, 0.0, 1.0)))
