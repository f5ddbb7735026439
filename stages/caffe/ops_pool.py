"""Caffe mappings of max and average pooling, adaptive pooling and spatial means.

NOTE: [Pooling rounding] Caffe's Pooling rounds the output size up by
default, where PyTorch rounds down unless ``ceil_mode=True``: resnet18's
MaxPool2d(3, 2, 1) on 112 x 112 gives 56 x 56 in PyTorch and 57 x 57 in a
stock Caffe. The build has a ``ceil_mode`` field, which is always written
with PyTorch's value, and the output size Caffe will compute is checked
against PyTorch's before the layer is emitted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_function, register_method, register_module
from stages.fx_emit import argument


def _pair(value: Any) -> list[int]:
    if isinstance(value, (list, tuple)):
        values = [int(item) for item in value]
        return values * 2 if len(values) == 1 else values
    return [int(value), int(value)]


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Return the output size Caffe's Pooling layer computes (pooling_layer.cpp, Reshape)."""
    rounding = math.ceil if ceil_mode else math.floor
    pooled = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _settings(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None, is_max: bool) -> dict[str, Any]:
    if module is not None:
        settings = {
            "kernel": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "ceil_mode": module.ceil_mode,
            "dilation": getattr(module, "dilation", 1),
            "return_indices": getattr(module, "return_indices", False),
            "count_include_pad": getattr(module, "count_include_pad", True),
            "divisor_override": getattr(module, "divisor_override", None),
        }
    else:
        settings = {
            "kernel": graph.value(argument(node, 1, "kernel_size")),
            "stride": graph.value(argument(node, 2, "stride")),
            "padding": graph.value(argument(node, 3, "padding", 0)),
        }
        if is_max:
            settings["dilation"] = graph.value(argument(node, 4, "dilation", 1))
            settings["ceil_mode"] = graph.value(argument(node, 5, "ceil_mode", False))
            settings["return_indices"] = graph.value(argument(node, 6, "return_indices", False))
        else:
            settings["ceil_mode"] = graph.value(argument(node, 4, "ceil_mode", False))
            settings["count_include_pad"] = graph.value(argument(node, 5, "count_include_pad", True))
            settings["divisor_override"] = graph.value(argument(node, 6, "divisor_override"))
    if settings["stride"] is None or settings["stride"] in ([], ()):
        settings["stride"] = settings["kernel"]
    return settings


def _emit_pool(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None, is_max: bool) -> None:
    input_shape = graph.shape(node.args[0])
    if len(input_shape) != 4:
        raise unsupported(graph, node, f"pooling of a rank-{len(input_shape)} tensor", "use 2-D pooling on N x C x H x W")
    settings = _settings(graph, node, module, is_max)
    kernel, stride, pad = _pair(settings["kernel"]), _pair(settings["stride"]), _pair(settings["padding"])
    ceil_mode = bool(settings["ceil_mode"])

    if is_max and (_pair(settings.get("dilation", 1)) != [1, 1] or settings.get("return_indices")):
        raise unsupported(graph, node, "max pooling with dilation or return_indices", "use dilation=1 and return_indices=False")
    if not is_max and settings.get("divisor_override"):
        raise unsupported(graph, node, "average pooling with divisor_override", "drop divisor_override")
    if not is_max and not settings.get("count_include_pad", True) and any(pad):
        raise unsupported(
            graph, node, "padded average pooling with count_include_pad=False (Caffe counts the padding)",
            "use count_include_pad=True or padding=0",
        )

    expected = graph.shape(node)[2:]
    caffe_size = [caffe_pooled_size(input_shape[2 + axis], kernel[axis], stride[axis], pad[axis], ceil_mode) for axis in range(2)]
    if caffe_size != expected:
        raise unsupported(
            graph, node, f"Caffe's Pooling would give {caffe_size} where PyTorch gives {expected}",
            "change kernel, stride or padding so that the last window starts inside the input",
        )

    method = graph.pb.PoolingParameter.MAX if is_max else graph.pb.PoolingParameter.AVE
    param = {
        "pool": method,
        "kernel_h": kernel[0],
        "kernel_w": kernel[1],
        "stride_h": stride[0],
        "stride_w": stride[1],
        "pad_h": pad[0],
        "pad_w": pad[1],
        "ceil_mode": ceil_mode,
    }
    graph.emit("Pooling", node, [graph.bottom(node.args[0])], pooling_param=param)


@register_module(nn.MaxPool2d)
@register_function(F.max_pool2d)
def emit_max_pool(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    _emit_pool(graph, node, module, is_max=True)


@register_module(nn.AvgPool2d)
@register_function(F.avg_pool2d)
def emit_avg_pool(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    _emit_pool(graph, node, module, is_max=False)


def _global_pool(graph: CaffeGraph, node: torch.fx.Node, is_max: bool, top_node: torch.fx.Node | None = None) -> str:
    """Emit a global pooling layer; bind it to ``node`` unless ``top_node`` is None (an inner blob)."""
    method = graph.pb.PoolingParameter.MAX if is_max else graph.pb.PoolingParameter.AVE
    param = {"pool": method, "global_pooling": True}
    if top_node is None:
        blob = graph.aux_blob(node, "pool")
        graph.add_layer("Pooling", f"{node.name}/pool", [graph.bottom(node.args[0])], [blob], pooling_param=param)
        return blob
    return graph.emit("Pooling", top_node, [graph.bottom(node.args[0])], pooling_param=param)


def _adaptive(graph: CaffeGraph, node: torch.fx.Node, is_max: bool) -> None:
    """Map adaptive pooling by shape: global pooling, an even window, or replication (nearest Upsample)."""
    spatial_in = graph.shape(node.args[0])[2:]
    spatial_out = graph.shape(node)[2:]
    if len(spatial_in) != 2:
        raise unsupported(graph, node, f"adaptive pooling of a rank-{len(spatial_in) + 2} tensor", "use 2-D pooling")

    if spatial_out == [1, 1]:
        _global_pool(graph, node, is_max, top_node=node)
        return
    if spatial_in == spatial_out:
        graph.bind(node, graph.bottom(node.args[0]))
        return
    if all(size_in % size_out == 0 for size_in, size_out in zip(spatial_in, spatial_out)):
        window = [size_in // size_out for size_in, size_out in zip(spatial_in, spatial_out)]
        method = graph.pb.PoolingParameter.MAX if is_max else graph.pb.PoolingParameter.AVE
        param = {"pool": method, "kernel_h": window[0], "kernel_w": window[1], "stride_h": window[0], "stride_w": window[1], "ceil_mode": False}
        graph.emit("Pooling", node, [graph.bottom(node.args[0])], pooling_param=param)
        return
    factors = {size_out / size_in for size_in, size_out in zip(spatial_in, spatial_out)}
    if len(factors) == 1 and next(iter(factors)).is_integer():
        # Each output window covers one input element: adaptive pooling replicates it.
        graph.emit("Upsample", node, [graph.bottom(node.args[0])], upsample_param={"scale": int(factors.pop())})
        return
    raise unsupported(
        graph, node, f"adaptive pooling from {spatial_in} to {spatial_out} has uneven windows",
        "choose an input size whose spatial size the output size divides (or equals 1)",
    )


@register_module(nn.AdaptiveAvgPool2d)
@register_function(F.adaptive_avg_pool2d)
def emit_adaptive_avg_pool(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    _adaptive(graph, node, is_max=False)


@register_module(nn.AdaptiveMaxPool2d)
@register_function(F.adaptive_max_pool2d)
def emit_adaptive_max_pool(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    if module is not None and module.return_indices:
        raise unsupported(graph, node, "adaptive max pooling with return_indices", "use return_indices=False")
    _adaptive(graph, node, is_max=True)


@register_method("mean", "amax")
@register_function(torch.mean, torch.amax)
def emit_spatial_reduce(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Map a mean (or amax) over the two spatial axes of N x C x H x W to global pooling."""
    rank = len(graph.shape(node.args[0]))
    dims = graph.value(argument(node, 1, "dim"))
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    keepdim = bool(graph.value(argument(node, 2, "keepdim", False)))
    name = str(node.target) if node.op == "call_method" else node.target.__name__
    if rank != 4 or sorted(dim % rank for dim in dims) != [2, 3]:
        raise unsupported(
            graph, node, f"{name} over dims {dims} of a rank-{rank} tensor",
            "only the spatial axes [2, 3] of N x C x H x W map to Caffe (global pooling)",
        )
    is_max = name == "amax"
    if keepdim:
        _global_pool(graph, node, is_max, top_node=node)
        return
    pooled = _global_pool(graph, node, is_max)
    graph.emit("Flatten", node, [pooled], flatten_param={"axis": 1})
