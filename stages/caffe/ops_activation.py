"""Caffe mappings of activations and softmax.

The build has ReLU (with negative_slope for LeakyReLU), ReLU6, PReLU, ELU,
Sigmoid, TanH, HardSwish and HardSigmoid layers. It has no SiLU layer, so
SiLU becomes Sigmoid followed by an Eltwise PROD with the input.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stages.caffe.emitter import CaffeGraph, unsupported
from stages.caffe.registry import register_function, register_method, register_module
from stages.fx_emit import argument

# PyTorch's hardsigmoid is relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1).
HARDSIGMOID_ALPHA = 1.0 / 6.0
HARDSIGMOID_BETA = 0.5


@register_module(nn.ReLU)
@register_function(F.relu, torch.relu)
@register_method("relu")
def emit_relu(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("ReLU", node, [graph.bottom(node.args[0])])


@register_module(nn.LeakyReLU)
@register_function(F.leaky_relu)
def emit_leaky_relu(graph: CaffeGraph, node: torch.fx.Node, module: nn.LeakyReLU | None) -> None:
    slope = module.negative_slope if module is not None else graph.value(argument(node, 1, "negative_slope", 0.01))
    graph.emit("ReLU", node, [graph.bottom(node.args[0])], relu_param={"negative_slope": float(slope)})


@register_module(nn.ReLU6)
@register_function(F.relu6)
def emit_relu6(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("ReLU6", node, [graph.bottom(node.args[0])], relu6_param={"threshold": 6.0})


@register_module(nn.Hardtanh)
@register_function(F.hardtanh)
def emit_hardtanh(graph: CaffeGraph, node: torch.fx.Node, module: nn.Hardtanh | None) -> None:
    if module is not None:
        low, high = module.min_val, module.max_val
    else:
        low = graph.value(argument(node, 1, "min_val", -1.0))
        high = graph.value(argument(node, 2, "max_val", 1.0))
    if (low, high) != (0.0, 6.0):
        raise unsupported(graph, node, f"Hardtanh({low}, {high}) needs a Clip layer, which the build lacks")
    emit_relu6(graph, node, None)


@register_module(nn.PReLU)
def emit_prelu(graph: CaffeGraph, node: torch.fx.Node, module: nn.PReLU) -> None:
    shared = module.num_parameters == 1
    # A shared slope is a blob without axes in Caffe; one slope per channel is a vector.
    slopes = module.weight.detach().reshape(() if shared else (-1,))
    graph.emit("PReLU", node, [graph.bottom(node.args[0])], [slopes], prelu_param={"channel_shared": shared})


@register_module(nn.ELU)
@register_function(F.elu)
def emit_elu(graph: CaffeGraph, node: torch.fx.Node, module: nn.ELU | None) -> None:
    alpha = module.alpha if module is not None else graph.value(argument(node, 1, "alpha", 1.0))
    graph.emit("ELU", node, [graph.bottom(node.args[0])], elu_param={"alpha": float(alpha)})


@register_module(nn.Sigmoid)
@register_function(torch.sigmoid, F.sigmoid)
@register_method("sigmoid")
def emit_sigmoid(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("Sigmoid", node, [graph.bottom(node.args[0])])


@register_module(nn.Tanh)
@register_function(torch.tanh, F.tanh)
@register_method("tanh")
def emit_tanh(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("TanH", node, [graph.bottom(node.args[0])])


@register_module(nn.Hardswish)
@register_function(F.hardswish)
def emit_hardswish(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    graph.emit("HardSwish", node, [graph.bottom(node.args[0])])


@register_module(nn.Hardsigmoid)
@register_function(F.hardsigmoid)
def emit_hardsigmoid(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    param = {"alpha": HARDSIGMOID_ALPHA, "beta": HARDSIGMOID_BETA}
    graph.emit("HardSigmoid", node, [graph.bottom(node.args[0])], hardsigmoid_param=param)


@register_module(nn.SiLU)
@register_function(F.silu)
def emit_silu(graph: CaffeGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    source = graph.bottom(node.args[0])
    gate = graph.aux_blob(node, "sigmoid")
    graph.add_layer("Sigmoid", f"{node.name}/sigmoid", [source], [gate])
    graph.emit("Eltwise", node, [source, gate], eltwise_param={"operation": graph.pb.EltwiseParameter.PROD})


@register_module(nn.Softmax)
@register_function(F.softmax, torch.softmax)
@register_method("softmax")
def emit_softmax(graph: CaffeGraph, node: torch.fx.Node, module: nn.Softmax | None) -> None:
    rank = len(graph.shape(node.args[0]))
    dim = module.dim if module is not None else graph.value(argument(node, 1, "dim"))
    if dim is None:
        raise unsupported(graph, node, "softmax without an explicit dim", "pass dim, e.g. softmax(x, dim=1)")
    graph.emit("Softmax", node, [graph.bottom(node.args[0])], softmax_param={"axis": int(dim) % rank})
