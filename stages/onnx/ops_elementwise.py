"""ONNX mappings of binary arithmetic and concatenation."""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn

from stages.fx_emit import argument
from stages.onnx.emitter import EmitError, OnnxGraph
from stages.onnx.registry import register_function, register_method

BINARY_OPS = {
    "Add": ((operator.add, operator.iadd, torch.add), ("add", "add_")),
    "Sub": ((operator.sub, operator.isub, torch.sub), ("sub", "sub_")),
    "Mul": ((operator.mul, operator.imul, torch.mul), ("mul", "mul_")),
    "Div": ((operator.truediv, operator.itruediv, torch.div), ("div", "div_")),
}


def _binary_emitter(op_type: str):
    def emit_binary(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
        left, right = node.args[0], node.args[1]
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1:
            raise EmitError(f"ONNX export: node '{node.name}': {op_type} with alpha={alpha} is not supported")
        if op_type == "Div" and node.kwargs.get("rounding_mode") is not None:
            raise EmitError(f"ONNX export: node '{node.name}': division with rounding_mode is not supported")

        # A Python number takes the dtype of the tensor operand, as in PyTorch.
        like = left if isinstance(left, torch.fx.Node) and left.name in graph.values else right
        inputs = [
            graph.tensor(left, like=like, name=f"{node.name}/left"),
            graph.tensor(right, like=like, name=f"{node.name}/right"),
        ]
        graph.emit(op_type, node, inputs)

    emit_binary.__name__ = f"emit_{op_type.lower()}"
    return emit_binary


for _op_type, (_functions, _methods) in BINARY_OPS.items():
    _handler = _binary_emitter(_op_type)
    register_function(*_functions)(_handler)
    register_method(*_methods)(_handler)


@register_function(torch.cat, torch.concat)
def emit_cat(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    tensors = argument(node, 0, "tensors")
    dim = argument(node, 1, "dim", 0)
    graph.emit("Concat", node, [graph.tensor(tensor) for tensor in tensors], axis=int(dim))
