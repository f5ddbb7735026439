"""Parity helpers: output comparison, input batching and the divergence report."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from stages.onnx.emitter import export_graph_module
from stages.onnx.parity import chunk_inputs, compare_outputs, create_session, find_divergence
from stages.tracing.tracer import trace_model


class ThreeConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.relu(self.conv1(x))) + 1.0)


@pytest.fixture(scope="module")
def exported() -> tuple[torch.fx.GraphModule, onnx.ModelProto, np.ndarray]:
    torch.manual_seed(0)
    graph_module = trace_model(ThreeConvs().eval())
    inputs = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    model = export_graph_module(graph_module, torch.from_numpy(inputs[:2]))
    return graph_module, model, inputs


def perturb_initializer(model: onnx.ModelProto, name: str, factor: float) -> onnx.ModelProto:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for tensor in broken.graph.initializer:
        if tensor.name == name:
            values = onnx.numpy_helper.to_array(tensor) * np.float32(factor)
            tensor.CopyFrom(onnx.numpy_helper.from_array(values, name))
    return broken


def test_compare_outputs_of_faithful_export(exported) -> None:
    graph_module, model, inputs = exported

    comparison = compare_outputs(create_session(model), graph_module, chunk_inputs(inputs, 2))

    assert comparison.samples == 6
    assert comparison.max_rel_diff < 1e-5
    assert comparison.within_one_step_pct is None


def test_compare_outputs_measures_perturbation(exported) -> None:
    graph_module, model, inputs = exported
    broken = perturb_initializer(model, "conv3.bias", 0.0)
    expected_abs = float(np.abs(graph_module.conv3.bias.detach().numpy()).max())

    comparison = compare_outputs(create_session(broken), graph_module, chunk_inputs(inputs, 2))

    assert comparison.max_abs_diff == pytest.approx(expected_abs, rel=1e-4)


def test_divergence_names_first_perturbed_node(exported) -> None:
    graph_module, model, inputs = exported
    broken = perturb_initializer(model, "conv2.weight", 1.5)

    divergence = find_divergence(broken, graph_module, inputs[:2], max_rel_diff=1e-4)

    assert divergence is not None
    assert divergence.onnx_node == "conv2"
    assert divergence.fx_node == "conv2"
    assert divergence.op_type == "Conv"
    assert divergence.max_rel_diff > 0.1
    assert "onnx shape=[2, 4, 8, 8]" in divergence.describe()
    assert "torch shape=[2, 4, 8, 8]" in divergence.describe()


def test_divergence_below_limit_when_faithful(exported) -> None:
    graph_module, model, inputs = exported

    divergence = find_divergence(model, graph_module, inputs[:2], max_rel_diff=1e-4)

    # Without a node over the limit, the largest difference is reported.
    assert divergence is not None
    assert divergence.max_rel_diff <= 1e-4


def test_chunk_inputs_fills_last_batch() -> None:
    inputs = np.arange(5, dtype=np.float32).reshape(5, 1)

    batches = chunk_inputs(inputs, 2)

    assert [batch[:, 0].tolist() for batch in batches] == [[0, 1], [2, 3], [4, 0]]


def test_chunk_inputs_smaller_than_batch() -> None:
    inputs = np.arange(2, dtype=np.float32).reshape(2, 1)

    assert [batch[:, 0].tolist() for batch in chunk_inputs(inputs, 5)] == [[0, 1, 0, 1, 0]]


def test_chunk_inputs_dynamic_batch_keeps_one_batch() -> None:
    inputs = np.zeros((7, 3), dtype=np.float32)

    assert [batch.shape for batch in chunk_inputs(inputs, None)] == [(7, 3)]


class AttentionBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.fc(self.norm(x + y))


def test_divergence_names_layer_norm() -> None:
    torch.manual_seed(0)
    graph_module = trace_model(AttentionBlock().eval())
    batch = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    model = export_graph_module(graph_module, torch.from_numpy(batch))
    broken = perturb_initializer(model, "norm.weight", 1.01)

    divergence = find_divergence(broken, graph_module, batch, max_rel_diff=1e-4)

    assert divergence is not None
    assert divergence.onnx_node == "norm"
    assert divergence.op_type == "LayerNormalization"
    assert divergence.max_rel_diff > 1e-3


class HardswishCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Hardswish()
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.conv3 = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.act(self.conv1(x)), self.conv2(x)], dim=1))


def test_divergence_names_int8_hardswish() -> None:
    from int8_models import quantize_model
    from stages.quant.modules import QuantHardswish

    _, int8, inputs = quantize_model(HardswishCat(), [1, 3, 8, 8])
    assert isinstance(int8.get_submodule("act"), QuantHardswish)
    model = export_graph_module(int8, inputs[:1])
    broken = perturb_initializer(model, "act/output_scale", 1.5)

    divergence = find_divergence(broken, int8, inputs[:1].numpy(), max_rel_diff=1e-4, min_within_one_step_pct=99.9)

    assert divergence is not None
    assert divergence.fx_node == "act"
    assert divergence.op_type == "QuantizeLinear"
