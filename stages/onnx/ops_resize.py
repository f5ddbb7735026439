"""ONNX mappings of resizing: interpolate/Upsample (Resize) and pixel shuffle (DepthToSpace).

NOTE: [Resize modes] PyTorch's ``nearest`` reads source index
floor(out_index * in / out), which is ONNX Resize with
coordinate_transformation_mode ``asymmetric`` and nearest_mode ``floor``.
``bilinear`` without align_corners is ``half_pixel``, source coordinate
(out_index + 0.5) * in / out - 0.5 clamped at 0; not ``pytorch_half_pixel``,
which reads coordinate 0 for an output of length 1 where PyTorch reads the
center (in / 2 - 0.5). With align_corners it is ``align_corners``. The output size is the example run's
size, passed as Resize's ``sizes`` input for the spatial axes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import EmitError, OnnxGraph
from stages.onnx.registry import register_function, register_module

LINEAR_MODES = {"linear", "bilinear", "trilinear"}


@register_module(nn.Upsample)
def emit_upsample(graph: OnnxGraph, node: torch.fx.Node, module: nn.Upsample) -> None:
    emit_resize(graph, node, module.mode, module.align_corners, False)


@register_function(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def emit_interpolate(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    if node.target is F.upsample_nearest:
        mode, align_corners = "nearest", None
    elif node.target is F.upsample_bilinear:
        mode, align_corners = "bilinear", True
    else:
        mode = graph.value(argument(node, 3, "mode", "nearest"))
        align_corners = graph.value(argument(node, 4, "align_corners"))
    antialias = bool(graph.value(node.kwargs.get("antialias", False)))
    emit_resize(graph, node, mode, align_corners, antialias)


def emit_resize(graph: OnnxGraph, node: torch.fx.Node, mode: str, align_corners: bool | None, antialias: bool) -> None:
    """Emit Resize to the example run's spatial output size."""
    if antialias:
        raise EmitError(f"ONNX export: node '{node.name}': interpolate with antialias=True is not supported")
    if mode == "nearest":
        attributes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode in LINEAR_MODES:
        transform = "align_corners" if align_corners else "half_pixel"
        attributes = {"mode": "linear", "coordinate_transformation_mode": transform}
    else:
        raise EmitError(
            f"ONNX export: node '{node.name}': interpolate mode '{mode}' is not supported; "
            f"expected nearest, linear, bilinear or trilinear"
        )

    source = graph.tensor(node.args[0])
    output_shape = graph.shape(node)
    if graph.dynamic_batch:
        spatial = graph.add_constant(f"{node.name}/spatial_sizes", output_shape[1:], np.int64)
        sizes = graph.step("Concat", [graph.batch_size(), spatial], f"{node.name}/sizes", axis=0)
    else:
        sizes = graph.add_constant(f"{node.name}/sizes", output_shape, np.int64)
    graph.emit("Resize", node, [source, "", "", sizes], **attributes)


@register_module(nn.PixelShuffle)
@register_function(F.pixel_shuffle)
def emit_pixel_shuffle(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """PixelShuffle is DepthToSpace in CRD order (channel, then row, then column)."""
    factor = module.upscale_factor if module is not None else graph.value(argument(node, 1, "upscale_factor"))
    if len(graph.shape(node.args[0])) != 4:
        raise EmitError(f"ONNX export: node '{node.name}': pixel_shuffle maps to DepthToSpace for 4-D inputs only")
    graph.emit("DepthToSpace", node, [graph.tensor(node.args[0])], blocksize=int(factor), mode="CRD")


@register_module(nn.PixelUnshuffle)
@register_function(F.pixel_unshuffle)
def emit_pixel_unshuffle(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """PixelUnshuffle is a Reshape, Transpose, Reshape: SpaceToDepth orders channels differently."""
    factor = module.downscale_factor if module is not None else graph.value(argument(node, 1, "downscale_factor"))
    batch, channels, height, width = graph.shape(node.args[0])
    factor = int(factor)
    first = [0 if graph.dynamic_batch else batch, channels, height // factor, factor, width // factor, factor]
    split = graph.step(
        "Reshape",
        [graph.tensor(node.args[0]), graph.add_constant(f"{node.name}/split_shape", first, np.int64)],
        f"{node.name}/split",
    )
    moved = graph.step("Transpose", [split], f"{node.name}/transpose", perm=[0, 1, 3, 5, 2, 4])
    output = graph.shape(node)
    if graph.dynamic_batch:
        output[0] = 0
    graph.emit("Reshape", node, [moved, graph.add_constant(f"{node.name}/shape", output, np.int64)])
