"""ONNX mappings of shape ops, reductions over axes, and ops that vanish at inference.

NOTE: [Reshape and dynamic batch] Reshape targets come from the shapes of
the example run. With ``dynamic_batch`` a target whose first dimension
equals the input's first dimension copies it (ONNX dimension value 0), so
the batch size follows the input; any other target stays fixed.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
import torchvision.ops as torchvision_ops
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import EmitError, OnnxGraph
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
    """Reshape to the node's output shape from the example run.

    With ``dynamic_batch``, a shape written in the call as ints with -1
    first (``x.reshape(-1, 49, 96)``) is used as written, so the -1 takes
    whatever multiple of the batch size the input has.
    """
    source = node.args[0]
    target = graph.shape(node)
    literal = _literal_shape(node)
    if graph.dynamic_batch and literal is not None and literal[0] == -1 and literal.count(-1) == 1:
        target = literal
    elif graph.dynamic_batch and target and target[0] == graph.shape(source)[0]:
        target[0] = 0
    shape = graph.add_constant(f"{node.name}/shape", target, np.int64)
    graph.emit("Reshape", node, [graph.tensor(source), shape])


def _literal_shape(node: torch.fx.Node) -> list[int] | None:
    """Return the shape a view or reshape call passes when it is all literal ints, else None."""
    sizes = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    if not sizes or not all(type(size) is int for size in sizes):
        return None
    return list(sizes)


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


INT64_MAX = np.iinfo(np.int64).max


@register_function(torchvision_ops.stochastic_depth)
def emit_stochastic_depth(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Bind to the input: stochastic depth is the identity outside training."""
    if graph.value(argument(node, 3, "training", True)):
        raise EmitError(f"ONNX export: node '{node.name}': stochastic_depth with training=True; export the model in eval mode")
    graph.bind(node, graph.tensor(node.args[0]))


@register_method("chunk", "split")
@register_function(torch.chunk, torch.split)
def emit_split(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Split along one axis into the pieces the example run produced."""
    rank = len(graph.shape(node.args[0]))
    dim = int(graph.value(argument(node, 2, "dim", 0))) % rank
    pieces = node.meta["tensor_meta"]
    sizes = [int(piece.shape[dim]) for piece in pieces]
    outputs = [graph.unique_name(f"{node.name}/{index}") for index in range(len(sizes))]
    split = graph.add_constant(f"{node.name}/split", sizes, np.int64)
    graph.add_node("Split", [graph.tensor(node.args[0]), split], outputs, node.name, axis=dim)
    graph.sequences[node.name] = list(outputs)


@register_function(operator.getitem)
def emit_getitem(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Select from a tuple of tensors, or index a tensor with ints, slices and Ellipsis."""
    source, index = node.args[0], graph.value(node.args[1])
    if isinstance(source, torch.fx.Node) and source.name in graph.sequences:
        tensor_name = graph.sequences[source.name][int(index)]
        if tensor_name is None:
            raise EmitError(f"ONNX export: node '{node.name}' selects item {index} of '{source.name}', which is not a tensor")
        graph.bind(node, tensor_name)
        return
    _emit_tensor_index(graph, node, source, index if isinstance(index, tuple) else (index,))


def _emit_tensor_index(graph: OnnxGraph, node: torch.fx.Node, source: torch.fx.Node, index: tuple) -> None:
    shape = graph.shape(source)
    rank = len(shape)
    if sum(item is Ellipsis for item in index) > 1 or any(not isinstance(item, (int, slice, type(Ellipsis))) for item in index):
        raise EmitError(
            f"ONNX export: node '{node.name}': indexing with {index!r} is not supported; "
            f"use ints, slices and one Ellipsis"
        )
    if Ellipsis in index:
        position = index.index(Ellipsis)
        index = index[:position] + (slice(None),) * (rank - len(index) + 1) + index[position + 1 :]
    index = index + (slice(None),) * (rank - len(index))

    starts, ends, axes, steps, gathers = [], [], [], [], []
    for axis, item in enumerate(index):
        if isinstance(item, int):
            gathers.append((axis, item % shape[axis]))
        elif item != slice(None):
            step = 1 if item.step is None else int(item.step)
            if step <= 0:
                raise EmitError(f"ONNX export: node '{node.name}': slice step {step} is not supported, expected > 0")
            starts.append(0 if item.start is None else int(item.start))
            ends.append(INT64_MAX if item.stop is None else int(item.stop))
            axes.append(axis)
            steps.append(step)

    value = graph.tensor(source)
    if axes:
        inputs = [value] + [
            graph.add_constant(f"{node.name}/{label}", values, np.int64)
            for label, values in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))
        ]
        if not gathers:
            graph.emit("Slice", node, inputs)
            return
        value = graph.step("Slice", inputs, f"{node.name}/slice")

    # Gather the highest axis first, so the lower axes keep their positions.
    for number, (axis, position) in enumerate(sorted(gathers, reverse=True)):
        indices = graph.add_constant(f"{node.name}/index{axis}", position, np.int64)
        if number == len(gathers) - 1:
            graph.emit("Gather", node, [value, indices], axis=axis)
        else:
            value = graph.step("Gather", [value, indices], f"{node.name}/gather{axis}", axis=axis)
    if not axes and not gathers:
        graph.bind(node, value)


@register_method("expand")
def emit_expand(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Broadcast to the example run's output shape; with dynamic_batch a new batch axis follows the input."""
    source_shape = graph.shape(node.args[0])
    target = graph.shape(node)
    # Expand broadcasts, so 1 keeps a dimension the source already has.
    offset = len(target) - len(source_shape)
    dims = [1 if axis >= offset and source_shape[axis - offset] == size else size for axis, size in enumerate(target)]
    if graph.dynamic_batch and dims and (dims[0] != 1 or _computed_batch_size(graph, node)):
        rest = graph.add_constant(f"{node.name}/rest", dims[1:], np.int64)
        shape = graph.step("Concat", [graph.batch_size(), rest], f"{node.name}/shape", axis=0)
    else:
        shape = graph.add_constant(f"{node.name}/shape", dims, np.int64)
    graph.emit("Expand", node, [graph.tensor(node.args[0]), shape])


def _computed_batch_size(graph: OnnxGraph, node: torch.fx.Node) -> bool:
    """Check whether expand's first size is computed in the graph and equals the example batch size.

    With an example batch of 1, ``expand(x.shape[0], -1, -1)`` and ``expand(1, -1, -1)``
    have the same target shape, and only the computed one follows a dynamic batch.
    """
    sizes = node.args[1:] or (node.kwargs.get("size"),)
    first = sizes[0] if sizes else None
    if isinstance(first, (tuple, list)):
        first = first[0] if first else None
    if not isinstance(first, torch.fx.Node):
        return False
    placeholder = next(item for item in node.graph.nodes if item.op == "placeholder")
    return graph.value(first) == graph.shape(placeholder)[0]


@register_function(torch.roll)
@register_method("roll")
def emit_roll(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """torch.roll with explicit dims: per axis, Slice the tail and the head and Concat them."""
    shifts = graph.value(argument(node, 1, "shifts"))
    dims = graph.value(argument(node, 2, "dims"))
    if dims is None or dims == ():
        raise EmitError(f"ONNX export: node '{node.name}': torch.roll without dims is not supported; pass dims")
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    sizes = graph.shape(node.args[0])
    graph.emit("Identity", node, [roll(graph, graph.tensor(node.args[0]), shifts, dims, sizes, node.name)])


def roll(graph: OnnxGraph, source: str, shifts: list[int], dims: list[int], sizes: list[int], name: str) -> str:
    """Emit torch.roll of ``source`` over ``dims`` and return the result's name."""
    value = source
    for shift, axis in zip(shifts, dims):
        axis %= len(sizes)
        size = sizes[axis]
        shift %= size
        if shift == 0:
            continue
        parts = []
        for label, (start, end) in (("tail", (size - shift, size)), ("head", (0, size - shift))):
            inputs = [value] + [
                graph.add_constant(f"{name}/{label}{axis}_{key}", [number], np.int64)
                for key, number in (("starts", start), ("ends", end), ("axes", axis))
            ]
            parts.append(graph.step("Slice", inputs, f"{name}/{label}{axis}"))
        value = graph.step("Concat", parts, f"{name}/roll{axis}", axis=axis)
    return value


@register_function(F.pad)
def emit_pad(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """F.pad in constant mode: ONNX Pad with the begin and end of every axis."""
    mode = graph.value(argument(node, 2, "mode", "constant"))
    if mode != "constant":
        raise EmitError(f"ONNX export: node '{node.name}': F.pad mode {mode!r} is not supported; use mode='constant'")
    widths = list(graph.value(argument(node, 1, "pad")))
    value = graph.value(argument(node, 3, "value", None)) or 0.0
    rank = len(graph.shape(node.args[0]))
    begins, ends = [0] * rank, [0] * rank
    # F.pad lists (begin, end) pairs from the last axis backwards.
    for index in range(len(widths) // 2):
        axis = rank - 1 - index
        begins[axis], ends[axis] = int(widths[2 * index]), int(widths[2 * index + 1])
    pads = graph.add_constant(f"{node.name}/pads", begins + ends, np.int64)
    constant = graph.add_constant(f"{node.name}/value", float(value), graph.numpy_dtype(node))
    graph.emit("Pad", node, [graph.tensor(node.args[0]), pads, constant], mode="constant")
