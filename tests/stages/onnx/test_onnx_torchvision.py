"""The 17 torchvision classifiers (random weights) exported in fp32 and int8 and run in onnxruntime.

fp32 is compared with the traced model (max_rel_diff <= 1e-4), int8 with
our PyTorch int8 model (share of output elements within one output step).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import pytest
import torch

from int8_models import quantize_graph
from stages.onnx.emitter import export_graph_module
from stages.onnx.exporter import output_quantization_steps
from stages.onnx.parity import compare_outputs, count_int8_kernels, create_session, find_divergence, float_compute_nodes
from stages.tracing.tracer import trace_model
from torchvision_models import MODEL_NAMES, build_model

FP32_MAX_REL_DIFF = 1e-4
INT8_MIN_WITHIN_ONE_STEP_PCT = 99.9
# NOTE: in vit_b_16 and swin_t, LayerNorm and the erf of GELU's gate stay
# float between DequantizeLinear and QuantizeLinear. onnxruntime and PyTorch
# compute those in different orders, so a value within float32 rounding of a
# quantization boundary lands one step apart at the next QuantizeLinear, and
# the steps add up through the encoder layers. How many outputs end within
# one step depends on the input. Measured with this file's calibration on
# six random batches of 3 (Intel Xeon with AMX, onnxruntime 1.32): vit_b_16
# 57% to 88%, swin_t 94.5% to 100%. On the single parity_input: vit_b_16
# 99.8%, swin_t 100%. The gates sit below the lowest of these.
INT8_GATES: dict[str, float] = {"vit_b_16": 50.0, "swin_t": 90.0}

# Models whose int8 graph must leave no Conv, Gemm, MatMul or Add in float.
ALL_INT8_COMPUTE = ("resnet18", "mobilenet_v2")
# Models whose attention softmax (swin_t's shifted windows included) must run as QLinearSoftmax.
INT8_SOFTMAX = ("vit_b_16", "swin_t")

CASES = [(name, precision) for name in MODEL_NAMES for precision in ("fp32", "int8")]


@functools.lru_cache(maxsize=1)
def traced(name: str) -> tuple[torch.fx.GraphModule, list[int]]:
    """The traced model; cached so a model's fp32 and int8 cases build it once."""
    model, input_shape = build_model(name)
    return trace_model(model, input_shape=input_shape), input_shape


def parity_input(input_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), CASES)
def test_torchvision_export(name: str, precision: str, tmp_path: Path) -> None:
    fp32, input_shape = traced(name)
    batch = parity_input(input_shape)
    graph_module = fp32 if precision == "fp32" else quantize_graph(fp32, input_shape, batches=2, batch_size=8)

    with torch.no_grad():
        model = export_graph_module(graph_module, torch.from_numpy(batch), opset=17)
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} == {""}
    steps = output_quantization_steps(graph_module) if precision == "int8" else None
    comparison = compare_outputs(create_session(model), graph_module, [batch], steps)

    if precision == "fp32":
        assert comparison.max_rel_diff <= FP32_MAX_REL_DIFF, find_divergence(model, graph_module, batch, FP32_MAX_REL_DIFF)
        return

    gate = INT8_GATES.get(name, INT8_MIN_WITHIN_ONE_STEP_PCT)
    assert steps is not None
    assert comparison.within_one_step_pct >= gate, find_divergence(model, graph_module, batch, FP32_MAX_REL_DIFF, gate)
    int8_kernels, histogram = count_int8_kernels(model, tmp_path)
    assert int8_kernels > 0
    if name in ALL_INT8_COMPUTE:
        assert float_compute_nodes(histogram) == 0, histogram
    if name in INT8_SOFTMAX:
        assert histogram.get("QLinearSoftmax", 0) > 0, histogram
        assert "Softmax" not in histogram, histogram


# Attention reshapes carry the batch size, so the transformers check dynamic batch too.
DYNAMIC_BATCH_MODELS = ("vit_b_16", "swin_t")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), [(name, precision) for name in DYNAMIC_BATCH_MODELS for precision in ("fp32", "int8")])
def test_transformer_dynamic_batch(name: str, precision: str) -> None:
    fp32, input_shape = traced(name)
    example = parity_input(input_shape)
    graph_module = fp32 if precision == "fp32" else quantize_graph(fp32, input_shape, batches=2, batch_size=8)
    with torch.no_grad():
        model = export_graph_module(graph_module, torch.from_numpy(example), opset=17, dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")

    batch = np.random.default_rng(1).standard_normal([3, *input_shape[1:]]).astype(np.float32)
    steps = output_quantization_steps(graph_module) if precision == "int8" else None
    comparison = compare_outputs(create_session(model), graph_module, [batch], steps)
    assert comparison.samples == 3
    if precision == "fp32":
        assert comparison.max_rel_diff <= FP32_MAX_REL_DIFF
    else:
        assert comparison.within_one_step_pct >= INT8_GATES[name]
