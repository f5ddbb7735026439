"""ONNX mappings of activation functions, as modules, functions and methods."""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import OnnxGraph
from stages.onnx.registry import register_function, register_method, register_module

# The first ONNX opset that has the operator.
HARDSWISH_OPSET = 14
GELU_OPSET = 20


@register_module(nn.ReLU)
@register_function(F.relu, torch.relu)
@register_method("relu")
def emit_relu(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("Relu", node, [graph.tensor(node.args[0])])


def emit_clip(graph: OnnxGraph, node: torch.fx.Node, low: float, high: float) -> None:
    source = node.args[0]
    inputs = [
        graph.tensor(source),
        graph.tensor(low, like=source, name=f"{node.name}/min"),
        graph.tensor(high, like=source, name=f"{node.name}/max"),
    ]
    graph.emit("Clip", node, inputs)


@register_module(nn.ReLU6)
@register_function(F.relu6)
def emit_relu6(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    emit_clip(graph, node, 0.0, 6.0)


@register_module(nn.Hardtanh)
@register_function(F.hardtanh)
def emit_hardtanh(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    if module is not None:
        low, high = module.min_val, module.max_val
    else:
        low = argument(node, 1, "min_val", -1.0)
        high = argument(node, 2, "max_val", 1.0)
    emit_clip(graph, node, float(low), float(high))


@register_module(nn.Hardsigmoid)
@register_function(F.hardsigmoid)
def emit_hardsigmoid(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("HardSigmoid", node, [graph.tensor(node.args[0])], alpha=1.0 / 6.0, beta=0.5)


@register_module(nn.Hardswish)
@register_function(F.hardswish)
def emit_hardswish(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    source = graph.tensor(node.args[0])
    if graph.opset >= HARDSWISH_OPSET:
        graph.emit("HardSwish", node, [source])
        return

    gate = graph.unique_name(f"{node.name}/hardsigmoid")
    graph.add_node("HardSigmoid", [source], [gate], gate, alpha=1.0 / 6.0, beta=0.5)
    graph.emit("Mul", node, [source, gate])


@register_module(nn.Sigmoid)
@register_function(torch.sigmoid, F.sigmoid)
@register_method("sigmoid")
def emit_sigmoid(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("Sigmoid", node, [graph.tensor(node.args[0])])


@register_module(nn.Tanh)
@register_function(torch.tanh, F.tanh)
@register_method("tanh")
def emit_tanh(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("Tanh", node, [graph.tensor(node.args[0])])


@register_module(nn.SiLU)
@register_function(F.silu)
def emit_silu(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    source = graph.tensor(node.args[0])
    gate = graph.unique_name(f"{node.name}/sigmoid")
    graph.add_node("Sigmoid", [source], [gate], gate)
    graph.emit("Mul", node, [source, gate])


@register_module(nn.LeakyReLU)
@register_function(F.leaky_relu)
def emit_leaky_relu(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    slope = module.negative_slope if module is not None else argument(node, 1, "negative_slope", 0.01)
    graph.emit("LeakyRelu", node, [graph.tensor(node.args[0])], alpha=float(slope))


@register_module(nn.GELU)
@register_function(F.gelu)
def emit_gelu(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    approximate = module.approximate if module is not None else node.kwargs.get("approximate", "none")
    source_node = node.args[0]
    source = graph.tensor(source_node)
    if graph.opset >= GELU_OPSET:
        graph.emit("Gelu", node, [source], approximate=approximate)
        return

    def constant(suffix: str, value: float) -> str:
        return graph.tensor(value, like=source_node, name=f"{node.name}/{suffix}")

    def step(op_type: str, inputs: list[str], suffix: str) -> str:
        output = graph.unique_name(f"{node.name}/{suffix}")
        graph.add_node(op_type, inputs, [output], output)
        return output

    if approximate == "tanh":
        # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        cube = step("Mul", [step("Mul", [source, source], "square"), source], "cube")
        inner = step("Add", [source, step("Mul", [cube, constant("coefficient", 0.044715)], "scaled_cube")], "inner")
        core = step("Tanh", [step("Mul", [inner, constant("sqrt_2_over_pi", math.sqrt(2.0 / math.pi))], "scaled")], "tanh")
    else:
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        core = step("Erf", [step("Div", [source, constant("sqrt_2", math.sqrt(2.0))], "scaled")], "erf")
    one_plus = step("Add", [core, constant("one", 1.0)], "one_plus")
    half_x = step("Mul", [source, constant("half", 0.5)], "half_x")
    graph.emit("Mul", node, [half_x, one_plus])


@register_module(nn.Softmax)
@register_function(torch.softmax, F.softmax)
@register_method("softmax")
def emit_softmax(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    dim = module.dim if module is not None else argument(node, 1, "dim")
    if dim is None:
        dim = -1
    graph.emit("Softmax", node, [graph.tensor(node.args[0])], axis=int(dim))
