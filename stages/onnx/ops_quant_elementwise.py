"""QDQ mappings of the int8 elementwise, product, concatenation, softmax and mean modules.

Each becomes DequantizeLinear on its integer inputs, the float op, and
QuantizeLinear to the module's output qparams (the arithmetic the modules in
``stages.quant.modules`` document). onnxruntime turns Mul, MatMul, Concat,
Sigmoid and Softmax groups into QLinearMul, QLinearMatMul, QLinearConcat,
QLinearSigmoid and QLinearSoftmax, and removes a Clip(0, 6) or Relu whose range the following
QuantizeLinear already enforces. SiLU, Hardswish and GELU quantize their
gate (sigmoid, hardsigmoid, the erf or tanh core of the normal CDF) on its
own, so the product runs as QLinearMul.

Classes are looked up by name, so this module loads with a quantization
package that does not define all of them yet.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.fx
from torch import nn

from stages.onnx.emitter import OnnxGraph
from stages.onnx.ops_quant import (
    dequantize_input,
    dequantize_tensor,
    fake_quantize_value,
    float_step,
    quantize_output,
    quantize_tensor,
)
from stages.onnx.ops_shape import REDUCE_AXES_INPUT_OPSET
from stages.onnx.registry import register_module
from stages.quant import modules as quant_modules

FloatOp = Callable[[OnnxGraph, torch.fx.Node, nn.Module, str], str]


def _register(class_name: str) -> Callable:
    """Register the handler for the named int8 module class when the class exists."""
    cls = getattr(quant_modules, class_name, None)

    def decorate(handler):
        if cls is not None:
            register_module(cls)(handler)
        return handler

    return decorate


def _elementwise(float_op: FloatOp) -> Callable[[OnnxGraph, torch.fx.Node, nn.Module], None]:
    def emit(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
        source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
        quantize_output(graph, node, float_op(graph, node, module, source), module.output_qparams)

    return emit


def _clip(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module, source: str) -> str:
    low = graph.add_constant(f"{node.name}/min", 0.0, np.float32)
    high = graph.add_constant(f"{node.name}/max", 6.0, np.float32)
    return float_step(graph, node, "Clip", [source, low, high], "clip")


def _hardsigmoid(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module, source: str) -> str:
    return float_step(graph, node, "HardSigmoid", [source], "hardsigmoid", alpha=1.0 / 6.0, beta=0.5)


def _sigmoid(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module, source: str) -> str:
    return float_step(graph, node, "Sigmoid", [source], "sigmoid")


def _batch_norm(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module, source: str) -> str:
    bn = module.bn
    channels = bn.num_features
    weight = bn.weight if bn.affine else torch.ones(channels)
    bias = bn.bias if bn.affine else torch.zeros(channels)
    inputs = [source] + [
        graph.add_tensor_initializer(f"{node.name}.bn.{label}", tensor.to(torch.float32))
        for label, tensor in (("weight", weight), ("bias", bias), ("running_mean", bn.running_mean), ("running_var", bn.running_var))
    ]
    result = float_step(graph, node, "BatchNormalization", inputs, "batchnorm", epsilon=float(np.float32(bn.eps)))
    return float_step(graph, node, "Relu", [result], "relu") if module.relu else result


for _name, _float_op in (
    ("QuantReLU6", _clip),
    ("QuantHardsigmoid", _hardsigmoid),
    ("QuantSigmoid", _sigmoid),
    ("QuantBatchNorm2d", _batch_norm),
):
    _register(_name)(_elementwise(_float_op))


def _gated(gate_op: FloatOp) -> Callable[[OnnxGraph, torch.fx.Node, nn.Module], None]:
    """Emit x * gate(x) with the gate quantized on its own, as the gated int8 modules compute it."""

    def emit(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
        gate_source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
        gate = fake_quantize_value(graph, node, gate_op(graph, node, module, gate_source), module.gate_qparams, "gate")
        _gated_product(graph, node, module, gate)

    return emit


def _gated_product(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module, gate: str) -> None:
    """Emit x * gate, quantized to the module's output."""
    # The product gets its own DequantizeLinear, so onnxruntime matches the QDQ group of a QLinearMul.
    product_source = dequantize_input(graph, node, node.args[0], module.input_qparams, "product_input")
    quantize_output(graph, node, float_step(graph, node, "Mul", [product_source, gate], "mul"), module.output_qparams)


_register("QuantHardswish")(_gated(_hardsigmoid))
_register("QuantSiLU")(_gated(_sigmoid))


@_register("QuantGELU")
def emit_quant_gelu(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    """Emit x * (1 + core(x)) / 2 with the core quantized once and read back as the gate (see QuantGELU)."""
    if module.approximate == "tanh":
        x = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
        coefficient = graph.add_constant(f"{node.name}/coefficient", 0.044715, np.float32)
        cube = float_step(graph, node, "Mul", [x, coefficient], "scaled_x")
        cube = float_step(graph, node, "Mul", [cube, x], "scaled_square")
        cube = float_step(graph, node, "Mul", [cube, x], "scaled_cube")
        inner = float_step(graph, node, "Add", [cube, x], "inner")
        factor = graph.add_constant(f"{node.name}/sqrt_2_over_pi", math.sqrt(2.0 / math.pi), np.float32)
        core = float_step(graph, node, "Tanh", [float_step(graph, node, "Mul", [inner, factor], "scaled")], "tanh")
    else:
        scaled = dequantize_input(graph, node, node.args[0], module.scaled_input_qparams, "scaled_input")
        core = float_step(graph, node, "Erf", [scaled], "erf")
    core_q = quantize_tensor(graph, node, core, module.core_qparams, "core")
    _gated_product(graph, node, module, dequantize_tensor(graph, node, core_q, module.gate_qparams, "gate"))


def _binary(op_type: str) -> Callable[[OnnxGraph, torch.fx.Node, nn.Module], None]:
    def emit(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
        left = dequantize_input(graph, node, node.args[0], module.a_qparams, "a")
        right = dequantize_input(graph, node, node.args[1], module.b_qparams, "b")
        result = float_step(graph, node, op_type, [left, right], op_type.lower())
        quantize_output(graph, node, result, module.output_qparams)

    return emit


_register("QuantMul")(_binary("Mul"))
_register("QuantMatMul")(_binary("MatMul"))


@_register("QuantCat")
def emit_quant_cat(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    sources = [
        dequantize_input(graph, node, arg, qparams, f"input{index}")
        for index, (arg, qparams) in enumerate(zip(node.args, module.input_qparams))
    ]
    rank = len(graph.shape(node))
    result = float_step(graph, node, "Concat", sources, "concat", axis=int(module.dim) % rank)
    quantize_output(graph, node, result, module.output_qparams)


@_register("QuantSoftmax")
def emit_quant_softmax(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    axis = int(module.dim) % len(graph.shape(node.args[0]))
    quantize_output(graph, node, float_step(graph, node, "Softmax", [source], "softmax", axis=axis), module.output_qparams)


@_register("QuantMaskedSoftmax")
def emit_quant_masked_softmax(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    _, heads, length, _ = graph.shape(node.args[0])

    def reshape(source: str, shape: list[int], label: str) -> str:
        return float_step(graph, node, "Reshape", [source, graph.add_constant(f"{node.name}/{label}_shape", shape, np.int64)], label)

    per_window = reshape(graph.tensor(node.args[0]), [-1, module.windows, heads, length, length], "per_window")
    scores = dequantize_tensor(graph, node, per_window, module.input_qparams, "scores")
    mask = graph.add_initializer(f"{node.name}.mask_quantized", module.mask.numpy())
    masked = float_step(graph, node, "Add", [scores, dequantize_tensor(graph, node, mask, module.mask_qparams, "mask")], "masked")
    masked_q = quantize_tensor(graph, node, masked, module.masked_qparams, "masked")
    flat = dequantize_tensor(graph, node, reshape(masked_q, [-1, heads, length, length], "masked_flat"), module.masked_qparams, "masked_flat")
    quantize_output(graph, node, float_step(graph, node, "Softmax", [flat], "softmax", axis=3), module.output_qparams)


@_register("QuantMean")
def emit_quant_mean(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    rank = len(graph.shape(node.args[0]))
    axes = [int(dim) % rank for dim in module.dims]
    keepdims = int(module.keepdim)
    if graph.opset >= REDUCE_AXES_INPUT_OPSET:
        axes_input = graph.add_constant(f"{node.name}/axes", axes, np.int64)
        result = float_step(graph, node, "ReduceMean", [source, axes_input], "mean", keepdims=keepdims)
    else:
        result = float_step(graph, node, "ReduceMean", [source], "mean", axes=axes, keepdims=keepdims)
    quantize_output(graph, node, result, module.output_qparams)
