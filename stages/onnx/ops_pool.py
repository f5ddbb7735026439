"""ONNX mappings of max, average and adaptive average pooling."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import EmitError, OnnxGraph
from stages.onnx.registry import register_function, register_module


def _expand(value: Any, spatial: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(item) for item in value]
    return [int(value)] * spatial


def _pool_settings(node: torch.fx.Node, module: nn.Module | None, with_dilation: bool) -> dict[str, Any]:
    """Read kernel, stride, padding (and dilation) from a pooling module or call."""
    if module is not None:
        settings = {
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "ceil_mode": module.ceil_mode,
        }
        if with_dilation:
            settings["dilation"] = module.dilation
            settings["return_indices"] = module.return_indices
        else:
            settings["count_include_pad"] = module.count_include_pad
            settings["divisor_override"] = module.divisor_override
        return settings

    settings = {
        "kernel_size": argument(node, 1, "kernel_size"),
        "stride": argument(node, 2, "stride"),
        "padding": argument(node, 3, "padding", 0),
    }
    if with_dilation:
        settings["dilation"] = argument(node, 4, "dilation", 1)
        settings["ceil_mode"] = argument(node, 5, "ceil_mode", False)
        settings["return_indices"] = argument(node, 6, "return_indices", False)
    else:
        settings["ceil_mode"] = argument(node, 4, "ceil_mode", False)
        settings["count_include_pad"] = argument(node, 5, "count_include_pad", True)
        settings["divisor_override"] = argument(node, 6, "divisor_override")
    return settings


def _common_attributes(graph: OnnxGraph, node: torch.fx.Node, settings: dict[str, Any]) -> dict[str, Any]:
    spatial = len(graph.shape(node.args[0])) - 2
    kernel = _expand(settings["kernel_size"], spatial)
    stride = settings["stride"]
    # An empty or missing stride means stride = kernel size in PyTorch.
    strides = kernel if stride is None or stride == [] or stride == () else _expand(stride, spatial)
    padding = _expand(settings["padding"], spatial)
    return {
        "kernel_shape": kernel,
        "strides": strides,
        "pads": padding + padding,
        "ceil_mode": int(bool(settings["ceil_mode"])),
    }


@register_module(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
@register_function(F.max_pool1d, F.max_pool2d, F.max_pool3d)
def emit_max_pool(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    settings = _pool_settings(node, module, with_dilation=True)
    if settings["return_indices"]:
        raise EmitError(f"ONNX export: node '{node.name}': MaxPool with return_indices=True is not supported")

    attributes = _common_attributes(graph, node, settings)
    attributes["dilations"] = _expand(settings["dilation"], len(attributes["kernel_shape"]))
    graph.emit("MaxPool", node, [graph.tensor(node.args[0])], **attributes)


@register_module(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
@register_function(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
def emit_avg_pool(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    settings = _pool_settings(node, module, with_dilation=False)
    if settings["divisor_override"]:
        raise EmitError(f"ONNX export: node '{node.name}': AvgPool with divisor_override is not supported")

    attributes = _common_attributes(graph, node, settings)
    attributes["count_include_pad"] = int(bool(settings["count_include_pad"]))
    graph.emit("AveragePool", node, [graph.tensor(node.args[0])], **attributes)


def _adaptive_pool(graph: OnnxGraph, node: torch.fx.Node, global_op: str, window_op: str) -> None:
    """Map adaptive pooling by its output shape: global pooling for size 1, else an even window."""
    input_shape = graph.shape(node.args[0])
    spatial_in = input_shape[2:]
    output_shape = graph.shape(node)
    spatial_out = output_shape[2:]
    source = graph.tensor(node.args[0])

    if all(size == 1 for size in spatial_out):
        graph.emit(global_op, node, [source])
        return

    if any(size_in % size_out for size_in, size_out in zip(spatial_in, spatial_out)):
        if window_op == "AveragePool" and len(spatial_in) <= 2:
            emit_adaptive_avg_matmul(graph, node, source, spatial_in, spatial_out)
            return
        raise EmitError(
            f"ONNX export: node '{node.name}': adaptive pooling from {spatial_in} to {spatial_out} has uneven windows; "
            f"ONNX maps uneven windows for 1-d and 2-d average pooling only"
        )
    window = [size_in // size_out for size_in, size_out in zip(spatial_in, spatial_out)]
    graph.emit(window_op, node, [source], kernel_shape=window, strides=window)


@register_module(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
@register_function(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
def emit_adaptive_avg_pool(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    _adaptive_pool(graph, node, "GlobalAveragePool", "AveragePool")


@register_module(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
@register_function(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
def emit_adaptive_max_pool(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    _adaptive_pool(graph, node, "GlobalMaxPool", "MaxPool")


def adaptive_pooling_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Return the (size_out, size_in) matrix of PyTorch's adaptive average windows.

    Output i averages inputs floor(i * in / out) to ceil((i + 1) * in / out) - 1.
    """
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    for index in range(size_out):
        start = (index * size_in) // size_out
        end = -((-(index + 1) * size_in) // size_out)
        matrix[index, start:end] = 1.0 / (end - start)
    return matrix


def emit_adaptive_avg_matmul(
    graph: OnnxGraph,
    node: torch.fx.Node,
    source: str,
    spatial_in: Sequence[int],
    spatial_out: Sequence[int],
) -> None:
    """Adaptive average pooling with uneven windows, as a MatMul per spatial axis.

    The last axis is x @ P_w^T; the axis before it is P_h @ x (MatMul broadcasts P_h).
    """
    width = adaptive_pooling_matrix(spatial_in[-1], spatial_out[-1]).T.copy()
    width_name = graph.add_initializer(f"{node.name}/width_windows", width)
    if len(spatial_in) == 1:
        graph.emit("MatMul", node, [source, width_name])
        return
    pooled_width = graph.step("MatMul", [source, width_name], f"{node.name}/pool_width")
    height_name = graph.add_initializer(f"{node.name}/height_windows", adaptive_pooling_matrix(spatial_in[0], spatial_out[0]))
    graph.emit("MatMul", node, [height_name, pooled_width])
