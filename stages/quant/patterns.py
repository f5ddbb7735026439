"""Classification of fx nodes into the op families the int8 modules cover.

Patterns:
    input        a graph input (placeholder), observed and quantized
    conv         nn.Conv2d with numeric zero padding
    linear       nn.Linear
    add          tensor + tensor (operator.add, torch.add without alpha)
    relu         nn.ReLU, F.relu, torch.relu, Tensor.relu
    batchnorm    nn.BatchNorm2d (folded into a preceding conv)
    maxpool      nn.MaxPool2d without return_indices (qparams pass through)
    avgpool      nn.AvgPool2d without divisor_override
    adaptive_avgpool  nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d (int sizes)
    reshape      flatten, reshape, view, squeeze, unsqueeze, contiguous,
                 nn.Flatten (qparams pass through)
    identity     nn.Identity, nn.Dropout (qparams pass through)
    output       the graph output
    float        anything else: stays float between Dequantize and Quantize
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

COMPUTE_PATTERNS = frozenset({"conv", "linear", "add", "relu", "avgpool", "adaptive_avgpool"})
PASS_THROUGH_PATTERNS = frozenset({"maxpool", "reshape", "identity"})
FUSABLE_WITH_RELU = frozenset({"conv", "linear", "add"})

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous"}
_ADAPTIVE_AVGPOOL_FUNCTIONS = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}


def op_type(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Name of what a node calls: module class, function or method name."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op in ("call_method", "get_attr"):
        return str(node.target)
    return node.op


def is_float_tensor(node: Any) -> bool:
    """Check that shape propagation recorded a floating point tensor for ``node``."""
    if not isinstance(node, fx.Node):
        return False
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Return the pattern of ``node`` (see the module docstring).

    Needs ``tensor_meta`` from torch.fx.passes.shape_prop.ShapeProp on the
    nodes, to tell tensors from Python numbers.
    """
    if node.op == "placeholder":
        return "input" if is_float_tensor(node) else "float"
    if node.op == "output":
        return "output"
    if not is_float_tensor(node):
        return "float"
    if node.op == "call_module":
        return _classify_module(node, modules[node.target])
    if node.op == "call_function":
        return _classify_function(node)
    if node.op == "call_method":
        return _classify_method(node)
    return "float"


def _classify_module(node: fx.Node, module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        numeric_padding = not isinstance(module.padding, str) and module.padding_mode == "zeros"
        return "conv" if numeric_padding and is_float_tensor(node.args[0]) else "float"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.BatchNorm2d):
        return "batchnorm"
    if isinstance(module, nn.MaxPool2d):
        return "float" if module.return_indices else "maxpool"
    if isinstance(module, nn.AvgPool2d):
        return "float" if module.divisor_override is not None else "avgpool"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        sizes = module.output_size if isinstance(module.output_size, (tuple, list)) else (module.output_size,)
        return "adaptive_avgpool" if all(isinstance(size, int) for size in sizes) else "float"
    if isinstance(module, nn.Flatten):
        return "reshape"
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return "identity"
    return "float"


def _classify_function(node: fx.Node) -> str:
    target = node.target
    if target in _ADD_FUNCTIONS:
        tensors = len(node.args) == 2 and all(is_float_tensor(arg) for arg in node.args)
        plain = not node.kwargs or set(node.kwargs) == {"alpha"} and node.kwargs["alpha"] == 1
        return "add" if tensors and plain else "float"
    if target in _RELU_FUNCTIONS:
        return "relu"
    if target in _RESHAPE_FUNCTIONS:
        return "reshape"
    if target in _ADAPTIVE_AVGPOOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        sizes = size if isinstance(size, (tuple, list)) else (size,)
        return "adaptive_avgpool" if all(isinstance(item, int) for item in sizes) else "float"
    return "float"


def _classify_method(node: fx.Node) -> str:
    if node.target == "relu":
        return "relu"
    if node.target == "add" and len(node.args) == 2 and all(is_float_tensor(arg) for arg in node.args) and not node.kwargs:
        return "add"
    if node.target in _RESHAPE_METHODS:
        return "reshape"
    return "float"


def adaptive_output_size(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[int, int]:
    """Output size of an adaptive_avgpool node, as a pair."""
    if node.op == "call_module":
        size = modules[node.target].output_size
    else:
        size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def tensor_args(node: fx.Node, pattern: str) -> list[fx.Node]:
    """The tensor inputs that a quantized node of ``pattern`` reads as integers."""
    count = 2 if pattern == "add" else 1
    return [arg for arg in node.args[:count] if isinstance(arg, fx.Node)]
