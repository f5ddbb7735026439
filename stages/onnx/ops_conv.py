"""ONNX mappings of convolutions and batch normalization."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from stages.onnx.emitter import EmitError, OnnxGraph
from stages.onnx.registry import register_module


def conv_attributes(
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: str | Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> dict[str, Any]:
    """Return ONNX Conv attributes for PyTorch convolution settings (also used by the int8 mapping)."""
    kernel = list(kernel_size)
    if padding == "valid":
        begin = [0] * len(kernel)
        end = [0] * len(kernel)
    elif padding == "same":
        # PyTorch puts the odd element of 'same' padding at the end.
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        begin = [total // 2 for total in totals]
        end = [total - total // 2 for total in totals]
    else:
        begin = list(padding)
        end = list(padding)

    return {
        "kernel_shape": kernel,
        "strides": list(stride),
        "pads": begin + end,
        "dilations": list(dilation),
        "group": int(groups),
    }


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def emit_conv(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    if module.padding_mode != "zeros":
        raise EmitError(
            f"ONNX export: node '{node.name}': Conv padding_mode '{module.padding_mode}' is not supported, "
            f"expected 'zeros'; pad explicitly with F.pad before the convolution"
        )

    inputs = [
        graph.tensor(node.args[0]),
        graph.add_tensor_initializer(f"{node.name}.weight", module.weight),
    ]
    if module.bias is not None:
        inputs.append(graph.add_tensor_initializer(f"{node.name}.bias", module.bias))
    attributes = conv_attributes(module.kernel_size, module.stride, module.padding, module.dilation, module.groups)
    graph.emit("Conv", node, inputs, **attributes)


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def emit_batch_norm(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module) -> None:
    if module.running_mean is None or module.running_var is None:
        raise EmitError(
            f"ONNX export: node '{node.name}': BatchNorm without running statistics "
            f"(track_running_stats=False) is not supported; construct it with track_running_stats=True"
        )

    channels = module.num_features
    weight = module.weight if module.affine else torch.ones(channels)
    bias = module.bias if module.affine else torch.zeros(channels)
    inputs = [
        graph.tensor(node.args[0]),
        graph.add_tensor_initializer(f"{node.name}.weight", weight),
        graph.add_tensor_initializer(f"{node.name}.bias", bias),
        graph.add_tensor_initializer(f"{node.name}.running_mean", module.running_mean),
        graph.add_tensor_initializer(f"{node.name}.running_var", module.running_var.to(torch.float32)),
    ]
    graph.emit("BatchNormalization", node, inputs, epsilon=float(np.float32(module.eps)))
