"""Peak memory probes against models whose weights have a known size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from stages.profiling.memory import measure_peaks, peak_memory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc"),
]

MIB = 2**20
# A weight large enough that allocator noise (a few MiB) cannot hide it.
WEIGHT_MIB = 64


def _torch_model(path: Path, features: int) -> None:
    model = torch.fx.symbolic_trace(nn.Sequential(nn.Flatten(), nn.Linear(features, features, bias=False)).eval())
    torch.save(model, path)


def _onnx_model(path: Path, features: int) -> None:
    weight = np.ones((features, features), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"], name="fc")],
        "fc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", features])],
        [numpy_helper.from_array(weight, "weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_peak_memory_covers_the_weights(tmp_path: Path) -> None:
    features = int((WEIGHT_MIB * MIB / 4) ** 0.5)
    weight_bytes = features * features * 4
    _torch_model(tmp_path / "model.pt", features)
    _onnx_model(tmp_path / "model.onnx", features)

    peaks = measure_peaks(
        {"torch": ("torch", tmp_path / "model.pt"), "onnx": ("onnxruntime", tmp_path / "model.onnx")},
        [1, features], threads=1, runs=2, root=tmp_path,
    )
    # Loading the weights makes them resident; the runtimes' import does not count.
    assert weight_bytes <= peaks["torch"].peak_bytes < weight_bytes + 200 * MIB
    assert weight_bytes <= peaks["onnx"].peak_bytes < 4 * weight_bytes + 200 * MIB
    assert peaks["torch"].baseline_bytes > 0


def test_small_model_grows_less(tmp_path: Path) -> None:
    _onnx_model(tmp_path / "small.onnx", 16)
    small = peak_memory("onnxruntime", tmp_path / "small.onnx", [1, 16], threads=1, runs=2, root=tmp_path)
    assert small is not None
    assert small.peak_bytes < WEIGHT_MIB * MIB


def test_failed_probe_returns_none(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert peak_memory("onnxruntime", tmp_path / "broken.onnx", [1, 4], threads=1, runs=1, root=tmp_path) is None
