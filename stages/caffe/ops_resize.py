"""Caffe mappings of upsampling: nearest (Upsample), bilinear (BilinearInterpolate), PixelShuffle.

The build's Upsample layer repeats each pixel an integer number of times,
the same factor along height and width. BilinearInterpolate takes the
output size and align_corners; PyTorch computes source coordinates from
1 / scale_factor when one is given, so a scale factor must give the output
size exactly for the two to agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_function, register_module
from stages.fx_emit import argument


def _settings(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> dict[str, Any]:
    if module is not None:
        return {
            "mode": module.mode,
            "align_corners": module.align_corners,
            "scale_factor": module.scale_factor,
            "recompute_scale_factor": getattr(module, "recompute_scale_factor", None),
        }
    return {
        "mode": graph.value(argument(node, 3, "mode", "nearest")),
        "align_corners": graph.value(argument(node, 4, "align_corners")),
        "scale_factor": graph.value(argument(node, 2, "scale_factor")),
        "recompute_scale_factor": graph.value(argument(node, 5, "recompute_scale_factor")),
    }


@register_module(nn.Upsample)
@register_function(F.interpolate, F.upsample)
def emit_upsample(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    settings = _settings(graph, node, module)
    spatial_in = graph.shape(node.args[0])[2:]
    spatial_out = graph.shape(node)[2:]
    if len(spatial_in) != 2:
        raise unsupported(graph, node, f"resizing a rank-{len(spatial_in) + 2} tensor", "resize N x C x H x W tensors")

    if settings["mode"] == "nearest":
        factors = {size_out / size_in for size_in, size_out in zip(spatial_in, spatial_out)}
        factor = factors.pop() if len(factors) == 1 else 0.0
        if not factor.is_integer() or factor < 1:
            raise unsupported(
                graph, node, f"nearest resizing from {spatial_in} to {spatial_out}",
                "Caffe's Upsample needs one integer scale factor for height and width",
            )
        graph.emit("Upsample", node, [graph.bottom(node.args[0])], upsample_param={"scale": int(factor)})
        return

    if settings["mode"] == "bilinear":
        _emit_bilinear(graph, node, settings, spatial_in, spatial_out)
        return
    raise unsupported(graph, node, f"interpolation mode '{settings['mode']}'", "use mode='nearest' or mode='bilinear'")


def _emit_bilinear(graph: CaffeGraph, node: torch.fx.Node, settings: dict[str, Any], spatial_in: list[int], spatial_out: list[int]) -> None:
    align_corners = bool(settings["align_corners"])
    scale = settings["scale_factor"]
    if scale is not None and not align_corners and not settings["recompute_scale_factor"]:
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale, scale]
        if any(size_in * factor != size_out for size_in, factor, size_out in zip(spatial_in, scales, spatial_out)):
            raise unsupported(
                graph, node, f"bilinear scale_factor {scale} does not give the output size {spatial_out} exactly",
                "pass size= instead of scale_factor, or a factor that multiplies the input size to an integer",
            )
    if min(spatial_in) < 2:
        raise unsupported(graph, node, f"bilinear resizing of a {spatial_in} input", "Caffe's BilinearInterpolate needs at least 2 x 2 pixels")
    param = {"dst_h": spatial_out[0], "dst_w": spatial_out[1], "align_corners": align_corners}
    graph.emit("BilinearInterpolate", node, [graph.bottom(node.args[0])], bilinear_interpolate_param=param)


@register_module(nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def emit_upsampling_2d(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module) -> None:
    # UpsamplingBilinear2d is bilinear with align_corners=True.
    emit_upsample(graph, node, module)


@register_module(nn.PixelShuffle)
@register_function(F.pixel_shuffle)
def emit_pixel_shuffle(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    factor = module.upscale_factor if module is not None else graph.value(argument(node, 1, "upscale_factor"))
    graph.emit("PixelShuffle", node, [graph.bottom(node.args[0])], pixelshuffle_param={"upscale_factor": int(factor)})
