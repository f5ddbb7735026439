"""ONNX mappings of fully connected layers and matrix products."""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from stages.onnx.emitter import OnnxGraph
from stages.onnx.registry import register_function, register_method, register_module


@register_module(nn.Linear)
def emit_linear(graph: OnnxGraph, node: torch.fx.Node, module: nn.Linear) -> None:
    """Map to Gemm for 2-D inputs, else to MatMul with a transposed weight plus Add."""
    source = graph.tensor(node.args[0])
    if len(graph.shape(node.args[0])) == 2:
        inputs = [source, graph.add_tensor_initializer(f"{node.name}.weight", module.weight)]
        if module.bias is not None:
            inputs.append(graph.add_tensor_initializer(f"{node.name}.bias", module.bias))
        graph.emit("Gemm", node, inputs, transB=1)
        return

    weight_t = graph.add_tensor_initializer(f"{node.name}.weight_t", module.weight.t())
    if module.bias is None:
        graph.emit("MatMul", node, [source, weight_t])
        return
    product = graph.unique_name(f"{node.name}/matmul")
    graph.add_node("MatMul", [source, weight_t], [product], product)
    graph.emit("Add", node, [product, graph.add_tensor_initializer(f"{node.name}.bias", module.bias)])


@register_function(torch.matmul)
@register_method("matmul")
def emit_matmul(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("MatMul", node, [graph.tensor(node.args[0]), graph.tensor(node.args[1])])
