"""Observers and the streaming histogram against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quant_reference as ref
from stages.quant.histogram import StreamingHistogram
from stages.quant.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    PercentileObserver,
    fake_quantize,
    make_observer,
)


def _batches(seed: int, count: int = 6, size: int = 4000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Widening scales make every batch after the first extend the histogram range.
    return [rng.standard_normal(size).astype(np.float32) * (1.0 + index) + 0.3 * index for index in range(count)]


def _feed(observer, batches: list[np.ndarray]) -> None:
    for batch in batches:
        observer(torch.from_numpy(batch))


def test_minmax_matches_numpy() -> None:
    batches = _batches(0)
    observer = MinMaxObserver("uint8", "x")
    _feed(observer, batches)
    data = np.concatenate(batches)

    assert observer.clip_range() == (float(data.min()), float(data.max()))
    scale, zero_point = ref.asymmetric_qparams(float(data.min()), float(data.max()))
    assert observer.qparams().scale == scale
    assert observer.qparams().zero_point == zero_point


def test_minmax_int8_is_symmetric() -> None:
    observer = MinMaxObserver("int8", "x")
    _feed(observer, _batches(1))
    lo, hi = observer.clip_range()
    qparams = observer.qparams()
    assert qparams.zero_point == 0
    assert qparams.scale == ref.symmetric_qparams(lo, hi)[0]


def test_minmax_non_negative_range_has_zero_point_zero() -> None:
    observer = MinMaxObserver("uint8", "x")
    observer(torch.rand(1000) * 6.0)
    assert observer.qparams().zero_point == 0
    assert observer.qparams().scale == ref.f32(observer.max_val / 255.0)


def test_moving_average_matches_numpy() -> None:
    batches = _batches(2)
    observer = MovingAverageObserver("uint8", "x")
    _feed(observer, batches)

    lo, hi = float(batches[0].min()), float(batches[0].max())
    for batch in batches[1:]:
        lo = lo + 0.01 * (float(batch.min()) - lo)
        hi = hi + 0.01 * (float(batch.max()) - hi)
    assert observer.clip_range() == pytest.approx((lo, hi), rel=1e-12)


@pytest.mark.parametrize("percentile", [99.0, 99.99])
def test_percentile_matches_numpy(percentile: float) -> None:
    batches = _batches(3)
    observer = PercentileObserver("uint8", "x", percentile=percentile)
    _feed(observer, batches)
    data = np.concatenate(batches).astype(np.float64)

    expected = np.percentile(data, [100 - percentile, percentile])
    bin_width = observer.histogram.width
    lo, hi = observer.clip_range()
    assert abs(lo - expected[0]) <= 2 * bin_width
    assert abs(hi - expected[1]) <= 2 * bin_width
    assert lo > data.min()
    assert hi < data.max()


def _reference_entropy_threshold(values: np.ndarray, bins: int, quant_bins: int) -> float:
    """TensorRT's entropy calibration, written out with loops."""
    counts, edges = np.histogram(np.abs(values), bins=bins, range=(0.0, float(np.abs(values).max())))
    counts = counts.astype(np.float64)
    counts[0] = counts[1]
    divergences = []
    for end in range(quant_bins, bins + 1):
        reference = counts[:end].copy()
        reference[-1] += counts[end:].sum()
        candidate = np.zeros(end)
        merge = end / quant_bins
        for group in range(quant_bins):
            start, stop = int(np.ceil(group * merge - 1e-9)), int(np.ceil((group + 1) * merge - 1e-9))
            chunk = counts[start:stop]
            nonzero = chunk > 0
            if nonzero.any():
                candidate[start:stop][nonzero] = chunk.sum() / nonzero.sum()
        p = reference / reference.sum()
        q = candidate / candidate.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            divergences.append(np.inf)
        else:
            divergences.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    best = int(np.argmin(divergences))
    return float(edges[best + quant_bins])


@pytest.mark.parametrize("dtype,non_negative", [("uint8", True), ("int8", False)])
def test_entropy_matches_reference(dtype: str, non_negative: bool) -> None:
    rng = np.random.default_rng(4)
    values = rng.laplace(size=20000).astype(np.float32)
    if non_negative:
        values = np.maximum(values, 0.0)
    bins = 512
    observer = EntropyObserver(dtype, "x", bins=bins)
    observer(torch.from_numpy(values))

    quant_bins = 256 if non_negative else 128
    threshold = _reference_entropy_threshold(values, bins, quant_bins)
    lo, hi = observer.clip_range()
    assert hi == pytest.approx(min(threshold, float(values.max())), rel=1e-6)
    assert lo == pytest.approx(max(-threshold, float(values.min())), rel=1e-6)
    # Laplace tails are long: the threshold clips them.
    assert hi < float(np.abs(values).max())


def test_mse_is_near_the_best_clip_range() -> None:
    rng = np.random.default_rng(5)
    values = rng.laplace(size=50000).astype(np.float32)
    observer = MSEObserver("uint8", "x")
    observer(torch.from_numpy(values))
    data = values.astype(np.float64)

    def error(lo: float, hi: float) -> float:
        from stages.quant.arithmetic import qparams_from_range

        return float(np.mean((data - fake_quantize(data, qparams_from_range(lo, hi, "uint8"))) ** 2))

    alphas = np.linspace(0.01, 1.0, 100)
    best = min(error(alpha * data.min(), alpha * data.max()) for alpha in alphas)
    chosen = error(*observer.clip_range())
    assert chosen <= 1.05 * best
    assert chosen < error(float(data.min()), float(data.max()))


@pytest.mark.parametrize("kind", ["minmax", "moving_average", "percentile", "entropy", "mse"])
def test_stats_round_trip(kind: str) -> None:
    settings = {"observer": kind, "dtype": "uint8", "percentile": 99.9}
    observer = make_observer(settings, "x")
    _feed(observer, _batches(6, count=3))
    restored = make_observer(settings, "x")
    restored.load_stats(observer.stats())
    assert restored.clip_range() == observer.clip_range()
    assert restored.qparams() == observer.qparams()


def test_uncalibrated_observer_raises() -> None:
    with pytest.raises(ValueError, match="saw no data"):
        MinMaxObserver("uint8", "layer1_relu").qparams()


def test_observer_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        MinMaxObserver("uint8", "x")(torch.tensor([1.0, float("nan")]))


def test_streaming_histogram_equals_numpy_on_final_edges() -> None:
    batches = _batches(7, count=8)
    histogram = StreamingHistogram(256)
    for batch in batches:
        histogram.add(torch.from_numpy(batch))
    data = np.concatenate(batches).astype(np.float64)

    expected, _ = np.histogram(data, bins=histogram.edges().numpy())
    assert histogram.counts.sum() == data.size
    # Values within float rounding of a bin edge may land on either side.
    assert np.abs(histogram.counts.numpy() - expected).sum() <= 4
    assert histogram.lo <= data.min()
    assert histogram.hi >= data.max()


def test_streaming_histogram_keeps_a_fixed_size() -> None:
    histogram = StreamingHistogram(64)
    for scale in (1e-3, 1.0, 1e3):
        histogram.add(torch.randn(1000) * scale)
    assert histogram.counts.numel() == 64
    assert histogram.counts.sum() == 3000
