"""ONNX mappings of shape ops, reductions over axes, and ops that vanish at inference.

NOTE: [Reshape and dynamic batch] Reshape targets come from the shapes of
the example run. With ``dynamic_batch`` a target whose first dimension
equals the input's first dimension copies it (ONNX dimension value 0), so
the batch size follows the input; any other target stays fixed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.onnx.emitter import OnnxGraph, argument
from stages.onnx.registry import register_function, register_method, register_module

# ReduceMean takes its axes as an input from this opset on, not as an attribute.
REDUCE_AXES_INPUT_OPSET = 18


@register_module(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
@register_function(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
@register_method("contiguous", "clone", "detach")
def emit_alias(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Bind the node to its input: these ops are identities in eval mode."""
    graph.bind(node, graph.tensor(node.args[0]))


def emit_reshape(graph: OnnxGraph, node: torch.fx.Node) -> None:
    """Reshape to the node's output shape from the example run."""
    source = node.args[0]
    target = graph.shape(node)
    if graph.dynamic_batch and target and target[0] == graph.shape(source)[0]:
        target[0] = 0
    shape = graph.add_constant(f"{node.name}/shape", target, np.int64)
    graph.emit("Reshape", node, [graph.tensor(source), shape])


@register_method("view", "reshape")
@register_function(torch.reshape)
def emit_view(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    emit_reshape(graph, node)


@register_module(nn.Flatten)
@register_function(torch.flatten)
@register_method("flatten")
def emit_flatten(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    rank = len(graph.shape(node.args[0]))
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        start = argument(node, 1, "start_dim", 0)
        end = argument(node, 2, "end_dim", -1)
    start = start % rank if rank else 0
    end = end % rank if rank else 0

    # ONNX Flatten always returns 2-D, which matches torch.flatten only for start 1 through the last axis.
    if start == 1 and end == rank - 1:
        graph.emit("Flatten", node, [graph.tensor(node.args[0])], axis=1)
    else:
        emit_reshape(graph, node)


@register_method("permute")
@register_function(torch.permute)
def emit_permute(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    dims = graph.value(list(node.args[1:]) if node.op == "call_method" else argument(node, 1, "dims"))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    rank = len(graph.shape(node.args[0]))
    graph.emit("Transpose", node, [graph.tensor(node.args[0])], perm=[int(dim) % rank for dim in dims])


@register_method("transpose")
@register_function(torch.transpose)
def emit_transpose(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    rank = len(graph.shape(node.args[0]))
    first = int(graph.value(argument(node, 1, "dim0"))) % rank
    second = int(graph.value(argument(node, 2, "dim1"))) % rank
    perm = list(range(rank))
    perm[first], perm[second] = perm[second], perm[first]
    graph.emit("Transpose", node, [graph.tensor(node.args[0])], perm=perm)


@register_method("mean")
@register_function(torch.mean)
def emit_mean(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    rank = len(graph.shape(node.args[0]))
    dims = graph.value(argument(node, 1, "dim"))
    if dims is None:
        dims = list(range(rank))
    elif isinstance(dims, int):
        dims = [dims]
    axes = [int(dim) % rank for dim in dims]
    keepdims = int(bool(graph.value(argument(node, 2, "keepdim", False))))

    source = graph.tensor(node.args[0])
    if graph.opset >= REDUCE_AXES_INPUT_OPSET:
        axes_input = graph.add_constant(f"{node.name}/axes", axes, np.int64)
        graph.emit("ReduceMean", node, [source, axes_input], keepdims=keepdims)
    else:
        graph.emit("ReduceMean", node, [source], axes=axes, keepdims=keepdims)
