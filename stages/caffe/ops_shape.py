"""Caffe mappings of shape ops: flatten, reshape, permute, slicing, and ops that vanish at inference.

``chunk`` and ``split`` become one Slice layer whose tops take the names of
the ``getitem`` nodes that pick them. Slicing a tensor with ``x[:, a:b]``
becomes a Slice layer too, and its other parts go to a Silence layer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_function, register_method, register_module
from stages.fx_emit import argument

try:
    from torchvision.ops import stochastic_depth
except ImportError:  # torchvision is optional for this mapping
    stochastic_depth = None


@register_module(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
@register_function(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
@register_method("contiguous", "clone", "detach")
def emit_alias(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Bind the node to its input's blob: these ops are identities in eval mode."""
    graph.bind(node, graph.bottom(node.args[0]))


if stochastic_depth is not None:

    @register_function(stochastic_depth)
    def emit_stochastic_depth(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
        if graph.value(argument(node, 3, "training", True)):
            raise unsupported(graph, node, "stochastic_depth in training mode", "export the model in eval mode")
        emit_alias(graph, node, module)


def emit_reshape(graph: CaffeGraph, node: torch.fx.Node) -> None:
    """Reshape to the node's output shape from the example run."""
    graph.emit("Reshape", node, [graph.bottom(node.args[0])], reshape_param={"shape": {"dim": graph.shape(node)}})


@register_method("view", "reshape", "unsqueeze", "squeeze")
@register_function(torch.reshape, torch.unsqueeze, torch.squeeze)
def emit_view(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    emit_reshape(graph, node)


@register_module(nn.Flatten)
@register_function(torch.flatten)
@register_method("flatten")
def emit_flatten(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    rank = len(graph.shape(node.args[0]))
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        start = graph.value(argument(node, 1, "start_dim", 0))
        end = graph.value(argument(node, 2, "end_dim", -1))
    param = {"axis": int(start) % rank, "end_axis": int(end) % rank}
    graph.emit("Flatten", node, [graph.bottom(node.args[0])], flatten_param=param)


def _permute(graph: CaffeGraph, node: torch.fx.Node, order: list[int]) -> None:
    if order == list(range(len(order))):
        graph.bind(node, graph.bottom(node.args[0]))
        return
    graph.emit("Permute", node, [graph.bottom(node.args[0])], permute_param={"order": order})


@register_method("permute")
@register_function(torch.permute)
def emit_permute(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    dims = graph.value(list(node.args[1:]) if node.op == "call_method" else argument(node, 1, "dims"))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    rank = len(graph.shape(node.args[0]))
    _permute(graph, node, [int(dim) % rank for dim in dims])


@register_method("transpose")
@register_function(torch.transpose)
def emit_transpose(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    rank = len(graph.shape(node.args[0]))
    first = int(graph.value(argument(node, 1, "dim0"))) % rank
    second = int(graph.value(argument(node, 2, "dim1"))) % rank
    order = list(range(rank))
    order[first], order[second] = order[second], order[first]
    _permute(graph, node, order)


def _slice(graph: CaffeGraph, node: torch.fx.Node, axis: int, bounds: list[tuple[int, int]], names: list[str]) -> None:
    """Emit a Slice layer cutting ``axis`` at the bounds; each part goes to its blob name.

    ``bounds`` are consecutive (start, stop) pairs covering the axis; a part
    whose name is empty is discarded into a Silence layer.
    """
    points = [start for start, _ in bounds[1:]]
    tops = [name or graph.aux_blob(node, f"part{index}") for index, name in enumerate(names)]
    graph.add_layer("Slice", node.name, [graph.bottom(node.args[0])], tops, slice_param={"axis": axis, "slice_point": points})
    discarded = [top for top, name in zip(tops, names) if not name]
    if discarded:
        graph.add_layer("Silence", f"{node.name}/silence", discarded, [])


@register_method("chunk", "split")
@register_function(torch.chunk, torch.split)
def emit_split(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Split along one axis into the parts the example run produced."""
    parts = node.meta["tensor_meta"]
    rank = len(graph.shape(node.args[0]))
    dim = int(graph.value(argument(node, 2, "dim", 0))) % rank
    sizes = [int(part.shape[dim]) for part in parts]

    bounds = []
    start = 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size

    # Each part's blob takes the name of the getitem node that picks it.
    users = {int(user.args[1]): user for user in node.users if user.op == "call_function" and user.target is operator.getitem}
    names = [graph.blob_name(users[index]) if index in users else "" for index in range(len(sizes))]
    _slice(graph, node, dim, bounds, names)
    graph.tuples[node.name] = [name or "" for name in names]


@register_function(operator.getitem)
def emit_getitem(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    source, index = node.args[0], node.args[1]
    if isinstance(source, torch.fx.Node) and source.name in graph.tuples:
        graph.bind(node, graph.tuples[source.name][int(index)])
        return
    _emit_tensor_slice(graph, node, source, index)


def _emit_tensor_slice(graph: CaffeGraph, node: torch.fx.Node, source: Any, index: Any) -> None:
    """Map ``x[:, a:b]`` (one sliced axis, step 1, everything else whole) to a Slice layer."""
    shape = graph.shape(source)
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (len(shape) - len(items) + 1) + items[at + 1 :]
    if len(items) > len(shape) or not all(isinstance(item, slice) for item in items):
        raise unsupported(graph, node, f"indexing with {index!r}", "only slices with step 1 along one axis map to Caffe (Slice)")

    cut = []
    for axis, item in enumerate(items):
        start, stop, step = item.indices(shape[axis])
        if step != 1:
            raise unsupported(graph, node, f"a slice with step {step}", "use step 1")
        if (start, stop) != (0, shape[axis]):
            cut.append((axis, start, stop))
    if not cut:
        graph.bind(node, graph.bottom(source))
        return
    if len(cut) > 1:
        raise unsupported(graph, node, f"slicing {len(cut)} axes at once", "slice one axis per indexing operation")

    axis, start, stop = cut[0]
    bounds = [(0, start)] if start > 0 else []
    bounds.append((start, stop))
    if stop < shape[axis]:
        bounds.append((stop, shape[axis]))
    names = ["" if bound != (start, stop) else graph.blob_name(node) for bound in bounds]
    _slice(graph, node, axis, bounds, names)
    graph.bind(node, names[bounds.index((start, stop))])
