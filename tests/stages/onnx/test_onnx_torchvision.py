"""fp32 parity of torchvision classifiers (random weights) in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.checker
import pytest
import torch
import torchvision

from stages.onnx.emitter import export_graph_module
from stages.onnx.parity import chunk_inputs, compare_outputs, create_session
from stages.tracing.tracer import trace_model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_fp32_parity(name: str) -> None:
    torch.manual_seed(0)
    graph_module = trace_model(torchvision.models.get_model(name, weights=None).eval())
    inputs = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)

    model = export_graph_module(graph_module, torch.from_numpy(inputs[:2]), opset=17)
    onnx.checker.check_model(model, full_check=True)
    comparison = compare_outputs(create_session(model), graph_module, chunk_inputs(inputs, 2))

    assert comparison.samples == 4
    assert comparison.max_rel_diff <= 1e-4
    op_types = {node.op_type for node in model.graph.node}
    assert "GlobalAveragePool" in op_types
    assert "Gemm" in op_types
