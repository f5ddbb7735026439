"""ONNX mappings of layer normalization, as a module and as a function.

Opset 17 and later have LayerNormalization; earlier opsets get the same
arithmetic from ReduceMean, Sub, Mul, Sqrt and Div over the normalized axes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import OnnxGraph
from stages.onnx.ops_shape import REDUCE_AXES_INPUT_OPSET
from stages.onnx.registry import register_function, register_module

LAYER_NORMALIZATION_OPSET = 17


@register_module(nn.LayerNorm)
def emit_layer_norm_module(graph: OnnxGraph, node: torch.fx.Node, module: nn.LayerNorm) -> None:
    weight = graph.add_tensor_initializer(f"{node.name}.weight", module.weight) if module.weight is not None else None
    bias = graph.add_tensor_initializer(f"{node.name}.bias", module.bias) if module.bias is not None else None
    emit_layer_norm(graph, node, list(module.normalized_shape), weight, bias, float(module.eps))


@register_function(F.layer_norm, torch.layer_norm)
def emit_layer_norm_function(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    normalized_shape = list(graph.value(argument(node, 1, "normalized_shape")))
    weight_arg = argument(node, 2, "weight")
    bias_arg = argument(node, 3, "bias")
    weight = graph.tensor(weight_arg) if weight_arg is not None else None
    bias = graph.tensor(bias_arg) if bias_arg is not None else None
    emit_layer_norm(graph, node, normalized_shape, weight, bias, float(argument(node, 4, "eps", 1e-5)))


def emit_layer_norm(
    graph: OnnxGraph,
    node: torch.fx.Node,
    normalized_shape: Sequence[int],
    weight: str | None,
    bias: str | None,
    eps: float,
) -> None:
    """Normalize over the last ``len(normalized_shape)`` axes, then scale and shift."""
    source = graph.tensor(node.args[0])
    rank = len(graph.shape(node.args[0]))
    axis = rank - len(normalized_shape)
    if weight is None:
        weight = graph.add_constant(f"{node.name}/ones", np.ones(normalized_shape), np.float32)

    if graph.opset >= LAYER_NORMALIZATION_OPSET:
        inputs = [source, weight] + ([bias] if bias is not None else [])
        graph.emit("LayerNormalization", node, inputs, axis=axis, epsilon=float(np.float32(eps)))
        return

    axes = list(range(axis, rank))

    def reduce_mean(value: str, label: str) -> str:
        if graph.opset >= REDUCE_AXES_INPUT_OPSET:
            axes_input = graph.add_constant(f"{node.name}/axes", axes, np.int64)
            return graph.step("ReduceMean", [value, axes_input], f"{node.name}/{label}", keepdims=1)
        return graph.step("ReduceMean", [value], f"{node.name}/{label}", axes=axes, keepdims=1)

    centered = graph.step("Sub", [source, reduce_mean(source, "mean")], f"{node.name}/centered")
    variance = reduce_mean(graph.step("Mul", [centered, centered], f"{node.name}/square"), "variance")
    epsilon = graph.add_constant(f"{node.name}/epsilon", eps, np.float32)
    std = graph.step("Sqrt", [graph.step("Add", [variance, epsilon], f"{node.name}/variance_eps")], f"{node.name}/std")
    scaled = graph.step("Mul", [graph.step("Div", [centered, std], f"{node.name}/normalized"), weight], f"{node.name}/scaled")
    if bias is None:
        graph.emit("Identity", node, [scaled])
    else:
        graph.emit("Add", node, [scaled, bias])
