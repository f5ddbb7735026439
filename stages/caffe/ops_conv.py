"""Caffe mappings of convolutions, transposed convolutions and batch normalization.

A BatchNorm becomes a ``BatchNorm`` layer (mean, variance, scale factor 1)
followed by a ``Scale`` layer with bias (gamma, beta), unless the exporter
folded it into the convolution before emitting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_module


def _padding(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module) -> list[int]:
    """Return symmetric padding per spatial axis; Caffe has no asymmetric convolution padding."""
    padding = module.padding
    if padding == "valid":
        return [0] * len(module.kernel_size)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(total % 2 for total in totals):
            raise unsupported(
                graph, node, f"padding='same' with an even kernel {tuple(module.kernel_size)} pads unevenly",
                "Caffe pads both sides equally; use an odd kernel or explicit integer padding",
            )
        return [total // 2 for total in totals]
    return list(padding)


def _check_2d(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module) -> None:
    if len(module.kernel_size) != 2:
        raise unsupported(graph, node, "only 2-D convolutions map to Caffe", "use Conv2d on NCHW tensors")
    if module.padding_mode != "zeros":
        raise unsupported(
            graph, node, f"padding_mode '{module.padding_mode}' is not supported",
            "use padding_mode='zeros'",
        )


def _conv_param(module: nn.Module, padding: list[int]) -> dict[str, Any]:
    return {
        "num_output": int(module.out_channels),
        "bias_term": module.bias is not None,
        "pad": padding,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "dilation": list(module.dilation),
        "group": int(module.groups),
    }


@register_module(nn.Conv2d)
def emit_conv(graph: CaffeGraph, node: torch.fx.Node, module: nn.Conv2d) -> None:
    _check_2d(graph, node, module)
    weights = [module.weight]
    if module.bias is not None:
        weights.append(module.bias)
    param = _conv_param(module, _padding(graph, node, module))
    graph.emit("Convolution", node, [graph.bottom(node.args[0])], weights, convolution_param=param)


@register_module(nn.ConvTranspose2d)
def emit_deconv(graph: CaffeGraph, node: torch.fx.Node, module: nn.ConvTranspose2d) -> None:
    _check_2d(graph, node, module)
    if any(module.output_padding):
        raise unsupported(
            graph, node, f"output_padding={tuple(module.output_padding)} has no Caffe Deconvolution field",
            "use output_padding=0 and adjust padding or crop after the layer",
        )
    if len(node.args) > 1 or node.kwargs.get("output_size") is not None:
        raise unsupported(graph, node, "an explicit output_size is not supported", "call the module with the input only")
    # PyTorch and Caffe both store the weight as (in_channels, out_channels / groups, kh, kw).
    weights = [module.weight]
    if module.bias is not None:
        weights.append(module.bias)
    param = _conv_param(module, list(module.padding))
    graph.emit("Deconvolution", node, [graph.bottom(node.args[0])], weights, convolution_param=param)


@register_module(nn.BatchNorm1d, nn.BatchNorm2d)
def emit_batch_norm(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module) -> None:
    if module.running_mean is None or module.running_var is None:
        raise unsupported(
            graph, node, "BatchNorm without running statistics (track_running_stats=False)",
            "construct it with track_running_stats=True",
        )
    rank = len(graph.shape(node.args[0]))
    if rank not in (2, 4):
        raise unsupported(graph, node, f"BatchNorm on a rank-{rank} tensor", "use BatchNorm on N x C or N x C x H x W tensors")

    channels = module.num_features
    gamma = module.weight.detach() if module.affine else torch.ones(channels)
    beta = module.bias.detach() if module.affine else torch.zeros(channels)
    normalized = graph.aux_blob(node, "normalized")
    graph.add_layer(
        "BatchNorm",
        f"{node.name}/bn",
        [graph.bottom(node.args[0])],
        [normalized],
        [module.running_mean, module.running_var.float(), np.ones(1, dtype=np.float32)],
        batch_norm_param={"use_global_stats": True, "eps": float(module.eps)},
    )
    graph.emit("Scale", node, [normalized], [gamma, beta], scale_param={"axis": 1, "bias_term": True})
