"""QDQ mappings of the int8 modules in ``stages.quant.modules``.

Each int8 module becomes DequantizeLinear on its integer inputs, the float
op, and QuantizeLinear to its output qparams, so the module's fx node value
(the integer tensor) is the QuantizeLinear output under the node's name.
Weights are int8 per output channel (DequantizeLinear axis 0), biases int32
at ``input_scale * weight_scale`` with zero point 0. onnxruntime fuses these
patterns into QLinearConv, QGemm, QLinearAdd and QLinearGlobalAveragePool,
and removes a Relu that is directly followed by a QuantizeLinear whose zero
point is the minimum of its range.

NOTE: with symmetric int8 activations a fused ReLU stays a Relu node (zero
point 0 is not the int8 minimum), and onnxruntime 1.32 on the x86 CPU the
tests ran on left int8-activation Conv and Add groups unfused. Both still
compute the same values on the float QDQ path, only slower.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from stages.onnx.emitter import OnnxGraph
from stages.onnx.ops_conv import conv_attributes
from stages.onnx.ops_pool import adaptive_pooling_matrix
from stages.onnx.registry import register_module
from stages.quant.arithmetic import QParams
from stages.quant.modules import (
    Dequantize,
    QuantAdaptiveAvgPool2d,
    QuantAdd,
    QuantAvgPool2d,
    QuantConv2d,
    QuantLinear,
    QuantMaxPool2d,
    QuantReLU,
    Quantize,
)

NUMPY_QDTYPES = {"uint8": np.uint8, "int8": np.int8}


def _scale_and_zero_point(graph: OnnxGraph, name: str, qparams: QParams) -> list[str]:
    scale = graph.add_constant(f"{name}_scale", qparams.scale, np.float32)
    zero_point = graph.add_constant(f"{name}_zero_point", qparams.zero_point, NUMPY_QDTYPES[qparams.dtype])
    return [scale, zero_point]


def dequantize_input(graph: OnnxGraph, node: torch.fx.Node, arg: torch.fx.Node, qparams: QParams, label: str) -> str:
    """Emit DequantizeLinear of an integer input and return the float tensor name."""
    return dequantize_tensor(graph, node, graph.tensor(arg), qparams, label)


def dequantize_tensor(graph: OnnxGraph, node: torch.fx.Node, source: str, qparams: QParams, label: str) -> str:
    """Emit DequantizeLinear of the integer tensor ``source`` and return the float tensor name."""
    base = f"{node.name}/{label}"
    output = graph.unique_name(f"{base}_dq")
    graph.add_node("DequantizeLinear", [source, *_scale_and_zero_point(graph, base, qparams)], [output], output)
    return output


def quantize_output(graph: OnnxGraph, node: torch.fx.Node, source: str, qparams: QParams) -> None:
    """Emit QuantizeLinear producing the fx node's integer value."""
    inputs = [source] + _scale_and_zero_point(graph, f"{node.name}/output", qparams)
    graph.emit("QuantizeLinear", node, inputs)


def quantize_tensor(graph: OnnxGraph, node: torch.fx.Node, source: str, qparams: QParams, label: str) -> str:
    """Emit QuantizeLinear of the float tensor ``source`` and return the integer tensor name."""
    return float_step(graph, node, "QuantizeLinear", [source, *_scale_and_zero_point(graph, f"{node.name}/{label}", qparams)], f"{label}_q")


def fake_quantize_value(graph: OnnxGraph, node: torch.fx.Node, source: str, qparams: QParams, label: str) -> str:
    """Emit QuantizeLinear then DequantizeLinear of a float value and return the float tensor name."""
    scale_and_zero_point = _scale_and_zero_point(graph, f"{node.name}/{label}", qparams)
    quantized = float_step(graph, node, "QuantizeLinear", [source, *scale_and_zero_point], f"{label}_q")
    return float_step(graph, node, "DequantizeLinear", [quantized, *scale_and_zero_point], f"{label}_dq")


def float_step(graph: OnnxGraph, node: torch.fx.Node, op_type: str, inputs: list[str], label: str, **attributes) -> str:
    output = graph.unique_name(f"{node.name}/{label}")
    graph.add_node(op_type, inputs, [output], output, **attributes)
    return output


def _per_channel_dequantize(
    graph: OnnxGraph,
    node: torch.fx.Node,
    label: str,
    values: torch.Tensor,
    scales: torch.Tensor,
    axis: int,
) -> str:
    """Emit an integer initializer and its per-channel DequantizeLinear (zero point 0)."""
    array = values.detach().cpu().numpy()
    quantized = graph.add_initializer(f"{node.name}.{label}_quantized", array)
    scale = graph.add_initializer(f"{node.name}.{label}_scale", scales.detach().cpu().numpy().astype(np.float32))
    zero_point = graph.add_initializer(f"{node.name}.{label}_zero_point", np.zeros(scales.shape, dtype=array.dtype))
    output = graph.unique_name(f"{node.name}/{label}_dq")
    graph.add_node("DequantizeLinear", [quantized, scale, zero_point], [output], output, axis=axis)
    return output


def _finish(graph: OnnxGraph, node: torch.fx.Node, result: str, relu: bool, output_qparams: QParams) -> None:
    if relu:
        result = float_step(graph, node, "Relu", [result], "relu")
    quantize_output(graph, node, result, output_qparams)


@register_module(Quantize)
def emit_quantize(graph: OnnxGraph, node: torch.fx.Node, module: Quantize) -> None:
    quantize_output(graph, node, graph.tensor(node.args[0]), module.qparams)


@register_module(Dequantize)
def emit_dequantize(graph: OnnxGraph, node: torch.fx.Node, module: Dequantize) -> None:
    inputs = [graph.tensor(node.args[0])] + _scale_and_zero_point(graph, f"{node.name}/input", module.qparams)
    graph.emit("DequantizeLinear", node, inputs)


@register_module(QuantConv2d)
def emit_quant_conv(graph: OnnxGraph, node: torch.fx.Node, module: QuantConv2d) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    inputs = [source, _per_channel_dequantize(graph, node, "weight", module.weight, module.weight_scale, axis=0)]
    # A conv without bias gets no bias input, so QLinearConv skips the bias add.
    if bool(module.bias.any()):
        inputs.append(_per_channel_dequantize(graph, node, "bias", module.bias, module.bias_scale, axis=0))

    kernel_size = tuple(module.weight.shape[2:])
    attributes = conv_attributes(kernel_size, module.stride, module.padding, module.dilation, module.groups)
    result = float_step(graph, node, "Conv", inputs, "conv", **attributes)
    _finish(graph, node, result, module.relu, module.output_qparams)


@register_module(QuantLinear)
def emit_quant_linear(graph: OnnxGraph, node: torch.fx.Node, module: QuantLinear) -> None:
    """DQ -> Gemm -> Q; an input with leading dimensions is flattened to 2-d first.

    onnxruntime fuses DequantizeLinear -> Gemm -> QuantizeLinear into QGemm,
    but leaves MatMul -> Add (the form of a 3-d Linear) in float, so the
    integer tensor is reshaped to (rows, in_features) and back; a Reshape of
    q values is exact.
    """
    input_shape = graph.shape(node.args[0])
    bias = _per_channel_dequantize(graph, node, "bias", module.bias, module.bias_scale, axis=0)
    weight = _per_channel_dequantize(graph, node, "weight", module.weight, module.weight_scale, axis=0)
    if len(input_shape) == 2:
        source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
        result = float_step(graph, node, "Gemm", [source, weight, bias], "gemm", transB=1)
        _finish(graph, node, result, module.relu, module.output_qparams)
        return

    flat_shape = graph.add_constant(f"{node.name}/rows_shape", [-1, input_shape[-1]], np.int64)
    rows = float_step(graph, node, "Reshape", [graph.tensor(node.args[0]), flat_shape], "rows")
    source = float_step(graph, node, "DequantizeLinear", [rows] + _scale_and_zero_point(graph, f"{node.name}/input", module.input_qparams), "input_dq")
    result = float_step(graph, node, "Gemm", [source, weight, bias], "gemm", transB=1)
    if module.relu:
        result = float_step(graph, node, "Relu", [result], "relu")
    quantized = float_step(graph, node, "QuantizeLinear", [result] + _scale_and_zero_point(graph, f"{node.name}/output", module.output_qparams), "gemm_q")
    output_shape = graph.shape(node)
    if graph.dynamic_batch:
        output_shape[0] = -1
    graph.emit("Reshape", node, [quantized, graph.add_constant(f"{node.name}/shape", output_shape, np.int64)])


@register_module(QuantAdd)
def emit_quant_add(graph: OnnxGraph, node: torch.fx.Node, module: QuantAdd) -> None:
    left = dequantize_input(graph, node, node.args[0], module.a_qparams, "a")
    right = dequantize_input(graph, node, node.args[1], module.b_qparams, "b")
    result = float_step(graph, node, "Add", [left, right], "add")
    _finish(graph, node, result, module.relu, module.output_qparams)


@register_module(QuantReLU)
def emit_quant_relu(graph: OnnxGraph, node: torch.fx.Node, module: QuantReLU) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    _finish(graph, node, source, True, module.output_qparams)


@register_module(QuantMaxPool2d)
def emit_quant_max_pool(graph: OnnxGraph, node: torch.fx.Node, module: QuantMaxPool2d) -> None:
    # Max pooling of q values is exact, and ONNX MaxPool accepts uint8 and int8 from opset 12 on.
    pads = list(module.padding) + list(module.padding)
    graph.emit(
        "MaxPool",
        node,
        [graph.tensor(node.args[0])],
        kernel_shape=list(module.kernel_size),
        strides=list(module.stride),
        pads=pads,
        dilations=list(module.dilation),
        ceil_mode=int(module.ceil_mode),
    )


@register_module(QuantAvgPool2d)
def emit_quant_avg_pool(graph: OnnxGraph, node: torch.fx.Node, module: QuantAvgPool2d) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    result = float_step(
        graph,
        node,
        "AveragePool",
        [source],
        "pool",
        kernel_shape=list(module.kernel_size),
        strides=list(module.stride),
        pads=list(module.padding) + list(module.padding),
        ceil_mode=int(module.ceil_mode),
        count_include_pad=int(module.count_include_pad),
    )
    quantize_output(graph, node, result, module.output_qparams)


@register_module(QuantAdaptiveAvgPool2d)
def emit_quant_adaptive_avg_pool(graph: OnnxGraph, node: torch.fx.Node, module: QuantAdaptiveAvgPool2d) -> None:
    source = dequantize_input(graph, node, node.args[0], module.input_qparams, "input")
    spatial_in = graph.shape(node.args[0])[2:]
    spatial_out = list(module.output_size)
    if spatial_out == [1, 1]:
        result = float_step(graph, node, "GlobalAveragePool", [source], "pool")
    elif any(size_in % size_out for size_in, size_out in zip(spatial_in, spatial_out)):
        result = adaptive_avg_matmul(graph, node, source, spatial_in, spatial_out)
    else:
        window = [size_in // size_out for size_in, size_out in zip(spatial_in, spatial_out)]
        result = float_step(graph, node, "AveragePool", [source], "pool", kernel_shape=window, strides=window)
    quantize_output(graph, node, result, module.output_qparams)


def adaptive_avg_matmul(graph: OnnxGraph, node: torch.fx.Node, source: str, spatial_in: list[int], spatial_out: list[int]) -> str:
    """Uneven adaptive average pooling of a 2-d map as two MatMuls with window matrices."""
    width = adaptive_pooling_matrix(spatial_in[1], spatial_out[1]).T.copy()
    pooled = float_step(graph, node, "MatMul", [source, graph.add_initializer(f"{node.name}/width_windows", width)], "pool_width")
    height = graph.add_initializer(f"{node.name}/height_windows", adaptive_pooling_matrix(spatial_in[0], spatial_out[0]))
    return float_step(graph, node, "MatMul", [height, pooled], "pool")
