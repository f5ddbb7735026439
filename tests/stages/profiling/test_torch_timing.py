from __future__ import annotations

import torch
from torch import nn

from stages.profiling.stats import Latency
from stages.profiling.torch_timing import count_macs, count_parameters, time_torch, torch_threads


def _model() -> nn.Module:
    return torch.fx.symbolic_trace(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    )


def test_macs_match_hand_count() -> None:
    # Conv: 8 outputs x 3 inputs x 3 x 3 kernel at each of 10 x 10 positions; Linear: 8 x 5.
    assert count_macs(_model(), [1, 3, 10, 10]) == 8 * 3 * 3 * 3 * 10 * 10 + 8 * 5


def test_parameters_counted() -> None:
    assert count_parameters(_model()) == (8 * 3 * 3 * 3 + 8) + (8 * 5 + 5)


def test_time_torch_restores_threads() -> None:
    before = torch.get_num_threads()
    latency = time_torch(_model(), [2, 3, 10, 10], threads=1, warmup=1, repeats=4)
    assert latency.runs == 4
    assert latency.p10_ms <= latency.median_ms <= latency.p90_ms
    assert torch.get_num_threads() == before


def test_torch_threads_inside_block() -> None:
    with torch_threads(1):
        assert torch.get_num_threads() == 1


def test_latency_percentiles() -> None:
    latency = Latency.from_seconds([0.001 * value for value in range(1, 12)])
    assert latency.median_ms == 6.0
    assert latency.p10_ms == 2.0
    assert latency.p90_ms == 10.0
    assert latency.as_measurements("latency_int8") == {"latency_int8_ms": 6.0, "latency_int8_p10_ms": 2.0, "latency_int8_p90_ms": 10.0}
