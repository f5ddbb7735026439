"""Fixtures of the profiling tests: small fp32 and QDQ int8 ONNX models built with onnx.helper."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _write_conv_model(path: Path, int8: bool, batch: int | str = "batch") -> None:
    """Write Conv(3 -> 8, 3x3) + Relu on 1 x 3 x 16 x 16 inputs; int8 puts Q/DQ pairs around the conv."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "weight")]
    nodes = []
    conv_input = "input"
    if int8:
        initializers += [
            numpy_helper.from_array(np.array(0.02, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "x_zero"),
            numpy_helper.from_array(np.array(0.01, dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x_q"], name="quantize_input"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dequantize_input"),
            helper.make_node("QuantizeLinear", ["weight", "w_scale", "w_zero"], ["w_q"], name="quantize_weight"),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="dequantize_weight"),
        ]
        conv_input = "x_dq"
    weight_name = "w_dq" if int8 else "weight"
    nodes += [
        helper.make_node("Conv", [conv_input, weight_name], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["output"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 8, 16, 16])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture
def write_conv_model() -> Callable[..., None]:
    """Return a function ``(path, int8, batch="batch")`` that writes a Conv + Relu ONNX model."""
    return _write_conv_model
