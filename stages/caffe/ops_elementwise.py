"""Caffe mappings of binary arithmetic, element-wise maximum and concatenation.

Two tensors of one shape map to Eltwise (SUM, SUM with coefficients 1 and -1
for a difference, PROD, MAX). A tensor times a per-channel vector of shape
N x C x 1 x 1 (squeeze-and-excitation) maps to a Flatten of the vector to
N x C and a Scale layer with the vector as its second bottom, axis 0. A
tensor and a Python number map to a Power layer (shift or scale).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_function, register_method
from stages.fx_emit import argument

BROADCAST_HINT = "operands must have one shape, or one of them must be a per-channel N x C x 1 x 1 vector (multiplication only)"


def _eltwise(graph: CaffeGraph, node: torch.fx.Node, operation: str, coefficients: list[float] | None = None) -> None:
    left, right = node.args[0], node.args[1]
    param: dict[str, Any] = {"operation": getattr(graph.pb.EltwiseParameter, operation)}
    if coefficients is not None:
        param["coeff"] = coefficients
    graph.emit("Eltwise", node, [graph.bottom(left), graph.bottom(right)], eltwise_param=param)


def _power(graph: CaffeGraph, node: torch.fx.Node, source: torch.fx.Node, scale: float, shift: float) -> None:
    param = {"power": 1.0, "scale": float(scale), "shift": float(shift)}
    graph.emit("Power", node, [graph.bottom(source)], power_param=param)


def _operands(graph: CaffeGraph, node: torch.fx.Node) -> tuple[Any, Any]:
    left, right = node.args[0], argument(node, 1, "other")
    if node.kwargs.get("alpha", 1) != 1:
        raise unsupported(graph, node, f"alpha={node.kwargs['alpha']}", "multiply the operand explicitly")
    return left, right


def _number(graph: CaffeGraph, arg: Any) -> float | None:
    if graph.is_tensor(arg):
        return None
    value = graph.value(arg)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _same_shape(graph: CaffeGraph, node: torch.fx.Node, left: Any, right: Any) -> None:
    if graph.shape(left) != graph.shape(right):
        raise unsupported(graph, node, f"broadcasting {graph.shape(left)} with {graph.shape(right)}", BROADCAST_HINT)


@register_function(operator.add, operator.iadd, torch.add)
@register_method("add", "add_")
def emit_add(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    left, right = _operands(graph, node)
    for tensor, other in ((left, right), (right, left)):
        number = _number(graph, other)
        if number is not None and graph.is_tensor(tensor):
            _power(graph, node, tensor, 1.0, number)
            return
    _same_shape(graph, node, left, right)
    _eltwise(graph, node, "SUM")


@register_function(operator.sub, operator.isub, torch.sub)
@register_method("sub", "sub_")
def emit_sub(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    left, right = _operands(graph, node)
    if _number(graph, right) is not None:
        _power(graph, node, left, 1.0, -_number(graph, right))
        return
    if _number(graph, left) is not None:
        _power(graph, node, right, -1.0, _number(graph, left))
        return
    _same_shape(graph, node, left, right)
    _eltwise(graph, node, "SUM", [1.0, -1.0])


@register_function(operator.mul, operator.imul, torch.mul)
@register_method("mul", "mul_")
def emit_mul(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    left, right = _operands(graph, node)
    for tensor, other in ((left, right), (right, left)):
        number = _number(graph, other)
        if number is not None and graph.is_tensor(tensor):
            _power(graph, node, tensor, number, 0.0)
            return
    left_shape, right_shape = graph.shape(left), graph.shape(right)
    if left_shape == right_shape:
        _eltwise(graph, node, "PROD")
        return
    for tensor, vector in ((left, right), (right, left)):
        tensor_shape, vector_shape = graph.shape(tensor), graph.shape(vector)
        if len(tensor_shape) == 4 and vector_shape == tensor_shape[:2] + [1, 1]:
            _channel_scale(graph, node, tensor, vector)
            return
    raise unsupported(graph, node, f"broadcasting {left_shape} with {right_shape}", BROADCAST_HINT)


def _channel_scale(graph: CaffeGraph, node: torch.fx.Node, tensor: torch.fx.Node, vector: torch.fx.Node) -> None:
    """Scale N x C x H x W by an N x C x 1 x 1 vector: Flatten it to N x C, then Scale with axis 0."""
    flat = graph.aux_blob(node, "flatten")
    graph.add_layer("Flatten", f"{node.name}/flatten", [graph.bottom(vector)], [flat], flatten_param={"axis": 1})
    graph.emit("Scale", node, [graph.bottom(tensor), flat], scale_param={"axis": 0})


@register_function(operator.truediv, operator.itruediv, torch.div)
@register_method("div", "div_")
def emit_div(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    left, right = _operands(graph, node)
    divisor = _number(graph, right)
    if divisor is None or divisor == 0 or node.kwargs.get("rounding_mode") is not None or not graph.is_tensor(left):
        raise unsupported(graph, node, "only a tensor divided by a nonzero Python number maps to Caffe (Power)")
    _power(graph, node, left, 1.0 / divisor, 0.0)


@register_function(torch.maximum, torch.max)
def emit_maximum(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    if len(node.args) != 2 or not (graph.is_tensor(node.args[0]) and graph.is_tensor(node.args[1])):
        raise unsupported(graph, node, "only the element-wise maximum of two tensors maps to Caffe (Eltwise MAX)")
    _same_shape(graph, node, node.args[0], node.args[1])
    _eltwise(graph, node, "MAX")


@register_function(torch.cat, torch.concat)
def emit_cat(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    tensors = argument(node, 0, "tensors")
    rank = len(graph.shape(node))
    dim = int(graph.value(argument(node, 1, "dim", 0))) % rank
    graph.emit("Concat", node, [graph.bottom(tensor) for tensor in tensors], concat_param={"axis": dim})
