"""Caffe mappings of fully connected layers."""

from __future__ import annotations

import torch.fx
from torch import nn

from stages.caffe.emitter import CaffeGraph
from stages.caffe.registry import register_module


@register_module(nn.Linear)
def emit_linear(graph: CaffeGraph, node: torch.fx.Node, module: nn.Linear) -> None:
    """Map to InnerProduct over the last axis (axis 1 for the usual N x K input)."""
    rank = len(graph.shape(node.args[0]))
    weights = [module.weight]
    if module.bias is not None:
        weights.append(module.bias)
    param = {"num_output": int(module.out_features), "bias_term": module.bias is not None, "axis": rank - 1}
    graph.emit("InnerProduct", node, [graph.bottom(node.args[0])], weights, inner_product_param=param)
