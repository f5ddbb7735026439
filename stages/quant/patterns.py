"""Classification of fx nodes into the op families the int8 modules cover.

Patterns:
    input        a graph input (placeholder), observed and quantized
    conv         nn.Conv2d with numeric zero padding
    linear       nn.Linear
    add          tensor + tensor (operator.add, torch.add without alpha)
    mul          tensor * tensor (operator.mul, torch.mul, Tensor.mul)
    matmul       tensor @ tensor (operator.matmul, torch.matmul, Tensor.matmul)
    cat          torch.cat of a list of tensors (inputs requantized to one scale)
    relu         nn.ReLU, F.relu, torch.relu, Tensor.relu
    relu6        nn.ReLU6, F.relu6, nn.Hardtanh(0, 6)
    hardswish, hardsigmoid, silu, sigmoid, gelu
                 the nn modules, F functions and torch / Tensor methods
    softmax      nn.Softmax, F.softmax, torch.softmax, Tensor.softmax over one
                 dim, without dtype (output qparams fixed to [0, 1])
    masked_softmax  Swin's shifted-window softmax with its additive mask
                 (stages.tracing.window_attention.masked_softmax), the mask a
                 constant (get_attr)
    batchnorm    nn.BatchNorm2d (folded into a preceding conv; otherwise an
                 int8 elementwise op)
    mean         Tensor.mean / torch.mean over given dims
    maxpool      nn.MaxPool2d, F.max_pool2d without return_indices (qparams pass through)
    avgpool      nn.AvgPool2d, F.avg_pool2d without divisor_override
    adaptive_avgpool  nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d (int sizes)
    reshape      flatten, reshape, view, squeeze, unsqueeze, contiguous,
                 permute, transpose, roll, nn.Flatten (qparams pass through)
    split        chunk and split, whose tuple output getitem reads (qparams pass through)
    getitem      an element of a split output (qparams pass through)
    identity     nn.Identity, nn.Dropout, eval-mode dropout and stochastic_depth
                 (qparams pass through)
    output       the graph output
    float        anything else: stays float between Dequantize and Quantize
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from stages.tracing.window_attention import masked_softmax

# Elementwise ops whose int8 module computes dequantize -> float op -> quantize.
ELEMENTWISE_PATTERNS = frozenset({"relu6", "hardswish", "hardsigmoid", "silu", "sigmoid", "gelu", "batchnorm"})
COMPUTE_PATTERNS = frozenset(
    {"conv", "linear", "add", "mul", "matmul", "cat", "relu", "avgpool", "adaptive_avgpool", "mean", "softmax", "masked_softmax"}
    | ELEMENTWISE_PATTERNS
)
PASS_THROUGH_PATTERNS = frozenset({"maxpool", "reshape", "identity", "split", "getitem"})
FUSABLE_WITH_RELU = frozenset({"conv", "linear", "add", "batchnorm"})
# Activations a conv, linear, add or unfolded BatchNorm absorbs.
# ReLU6 fuses too, because its observed output range lies inside [0, 6], so
# the clamp at 6 never binds after quantization.
FUSED_ACTIVATIONS = frozenset({"relu", "relu6"})
TWO_INPUT_PATTERNS = frozenset({"add", "mul", "matmul"})

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.roll}
_RESHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous", "permute", "transpose", "roll"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split}
_ADAPTIVE_AVGPOOL_FUNCTIONS = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
_ELEMENTWISE_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
}
_ELEMENTWISE_FUNCTIONS: dict[Any, str] = {
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.gelu: "gelu",
}
_ELEMENTWISE_METHODS = {"sigmoid": "sigmoid"}


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
    if _is_split(node):
        return "split"
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
    if type(module) in _ELEMENTWISE_MODULES:
        return _ELEMENTWISE_MODULES[type(module)]
    if type(module) is nn.Hardtanh and module.min_val == 0.0 and module.max_val == 6.0:
        return "relu6"
    if isinstance(module, nn.BatchNorm2d):
        return "batchnorm"
    if isinstance(module, nn.Softmax):
        return "softmax" if module.dim is not None else "float"
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
    if target in _ELEMENTWISE_FUNCTIONS:
        return _ELEMENTWISE_FUNCTIONS[target]
    if target in _MUL_FUNCTIONS or target in _MATMUL_FUNCTIONS:
        tensors = len(node.args) == 2 and all(is_float_tensor(arg) for arg in node.args) and not node.kwargs
        if not tensors:
            return "float"
        return "mul" if target in _MUL_FUNCTIONS else "matmul"
    if target in (torch.softmax, F.softmax):
        return "softmax" if softmax_dim(node) is not None else "float"
    if target is masked_softmax:
        mask = _call_argument(node, 1, "mask", None)
        constant = isinstance(mask, fx.Node) and mask.op == "get_attr"
        return "masked_softmax" if constant and isinstance(_call_argument(node, 2, "windows", None), int) else "float"
    if target is torch.cat:
        return "cat" if _is_tensor_list(node.args[0] if node.args else node.kwargs.get("tensors")) else "float"
    if target is torch.mean:
        return "mean" if _reduce_dims(node) is not None else "float"
    if target is F.max_pool2d:
        return "float" if _call_argument(node, 6, "return_indices", False) else "maxpool"
    if target is F.avg_pool2d:
        return "float" if _call_argument(node, 6, "divisor_override", None) is not None else "avgpool"
    if target is operator.getitem:
        source = node.args[0]
        return "getitem" if isinstance(source, fx.Node) and _is_float_sequence(source) else "float"
    if _is_eval_dropout(node):
        return "identity"
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
    if node.target in _ELEMENTWISE_METHODS:
        return _ELEMENTWISE_METHODS[node.target]
    two_tensors = len(node.args) == 2 and all(is_float_tensor(arg) for arg in node.args) and not node.kwargs
    if node.target in ("add", "mul", "matmul") and two_tensors:
        return node.target
    if node.target == "mean":
        return "mean" if _reduce_dims(node) is not None else "float"
    if node.target == "softmax":
        return "softmax" if softmax_dim(node) is not None else "float"
    if node.target in _RESHAPE_METHODS:
        return "reshape"
    return "float"


def _is_split(node: fx.Node) -> bool:
    """chunk or split of a float tensor, whose output is a tuple of float tensors."""
    if node.op == "call_function":
        is_split = node.target in _SPLIT_FUNCTIONS
    elif node.op == "call_method":
        is_split = node.target in ("chunk", "split")
    else:
        is_split = False
    return is_split and bool(node.args) and is_float_tensor(node.args[0]) and _is_float_sequence(node)


def _call_argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _is_tensor_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_float_tensor(item) for item in value)


def _is_float_sequence(node: fx.Node) -> bool:
    """Check that shape propagation recorded a tuple or list of float tensors for ``node``."""
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (list, tuple)) and len(meta) > 0 and all(
        hasattr(item, "dtype") and item.dtype.is_floating_point for item in meta
    )


def _is_eval_dropout(node: fx.Node) -> bool:
    """F.dropout or torchvision's stochastic_depth with training=False: the identity."""
    name = getattr(node.target, "__name__", "")
    if node.target is F.dropout:
        return _call_argument(node, 2, "training", True) is False
    if name == "stochastic_depth" and getattr(node.target, "__module__", "").startswith("torchvision"):
        return _call_argument(node, 3, "training", True) is False
    return False


def reduce_dims(node: fx.Node) -> tuple[tuple[int, ...], bool]:
    """Dims and keepdim of a mean node classified as ``mean``."""
    result = _reduce_dims(node)
    if result is None:
        raise ValueError(f"node {node.name} is not a mean over explicit dims")
    return result


def _reduce_dims(node: fx.Node) -> tuple[tuple[int, ...], bool] | None:
    dims = _call_argument(node, 1, "dim", None)
    keepdim = _call_argument(node, 2, "keepdim", False)
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (list, tuple)) or not all(isinstance(dim, int) for dim in dims) or not isinstance(keepdim, bool):
        return None
    if "dtype" in node.kwargs:
        return None
    return tuple(dims), keepdim


def softmax_dim(node: fx.Node, modules: dict[str, nn.Module] | None = None) -> int | None:
    """Return the dim of a softmax node, or None when it is missing or a dtype is given."""
    if node.op == "call_module":
        return None if modules is None else modules[node.target].dim
    dim = _call_argument(node, 1, "dim", None)
    dtype = _call_argument(node, 2, "dtype", None)
    return dim if isinstance(dim, int) and dtype is None else None


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
    if pattern == "cat":
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        return [arg for arg in tensors if isinstance(arg, fx.Node)]
    count = 2 if pattern in TWO_INPUT_PATTERNS else 1
    return [arg for arg in node.args[:count] if isinstance(arg, fx.Node)]
