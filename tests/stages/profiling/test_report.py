"""The profile section of report.md, rendered from given measurements."""

from __future__ import annotations

import pytest

from stages.profiling.report import onnx_node_name, profile_section


@pytest.mark.parametrize(
    ("optimized", "expected"),
    [
        ("layer1_conv1/conv_token_6", "layer1_conv1/conv"),
        ("layer1_relu_nchwc", "layer1_relu"),
        ("conv1/conv_token_2_nchwc", "conv1/conv"),
        ("fc/gemm", "fc/gemm"),
        ("_nchwc", "_nchwc"),
    ],
)
def test_onnx_node_name_strips_suffixes(optimized: str, expected: str) -> None:
    assert onnx_node_name(optimized) == expected


def _measurements(fp32_ms: float, int8_ms: float) -> dict:
    measurements = {"speedup": fp32_ms / int8_ms, "cpu": "a CPU (avx512_vnni)", "batch_size": 1, "repeats": 5, "threads": 2}
    for prefix, value in (("latency_fp32", fp32_ms), ("latency_int8", int8_ms)):
        measurements.update({f"{prefix}_ms": value, f"{prefix}_p10_ms": value, f"{prefix}_p90_ms": value})
    measurements["slowest_nodes_int8"] = [{"node": "conv1/conv_token_2", "op": "QLinearConv", "ms": 0.5, "count": 1}]
    return measurements


def test_section_warns_on_tiny_latencies() -> None:
    section = profile_section("profile", {"metrics": {}, "measurements": _measurements(0.03, 0.02)})
    assert "onnxruntime int8 speed-up over fp32: 1.50x. Both onnxruntime latencies are under 0.1 ms" in section


def test_section_without_warning_above_threshold() -> None:
    section = profile_section("profile", {"metrics": {}, "measurements": _measurements(4.0, 2.0)})
    assert "onnxruntime int8 speed-up over fp32: 2.00x.\n" in section
    assert "under 0.1 ms" not in section


def test_section_names_onnx_nodes() -> None:
    section = profile_section("profile", {"metrics": {}, "measurements": _measurements(4.0, 2.0)})
    assert "| `conv1/conv` | QLinearConv | 0.5000 ms |" in section
    assert "conv_token" not in section


def test_section_flags_busy_machine() -> None:
    busy = {**_measurements(4.0, 2.0), "others_cpu_percent": 64.0}
    quiet = {**_measurements(4.0, 2.0), "others_cpu_percent": 3.0}

    assert "NOTE: other processes used 64% of the machine's CPU time while the models were timed" in profile_section("profile", {"measurements": busy})
    assert "other processes used" not in profile_section("profile", {"measurements": quiet})
