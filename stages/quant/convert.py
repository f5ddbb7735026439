"""Conversion: rewrite an observed GraphModule into a GraphModule of int8 modules.

The pass walks the observed graph once and builds a new graph. Each value
can exist as float32 and as integers (q values with their QParams). When a
consumer needs the form that does not exist yet, the pass makes it with a
Quantize or Dequantize module. So float fallbacks sit between a Dequantize
and a Quantize, and the model takes and returns float. Observers disappear
because their qparams become static attributes of the int8 modules.

NOTE: onnxruntime 1.32 quantizes the float weights of a Conv or Gemm that
sits between DequantizeLinear and QuantizeLinear (its WeightBiasQuantization
optimizer). A skipped layer therefore stays float in onnxruntime only when
the session disables that optimizer.

The result carries ``value_names`` (new node -> fp32 node name) and
``qparams`` (new node whose output is integers -> scale, zero point, dtype).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from stages.quant.arithmetic import QParams
from stages.quant.modules import (
    Dequantize,
    QuantAdaptiveAvgPool2d,
    QuantAdd,
    QuantAvgPool2d,
    QuantBatchNorm2d,
    QuantCat,
    QuantConv2d,
    QuantGELU,
    QuantHardsigmoid,
    QuantHardswish,
    QuantLinear,
    QuantMaskedSoftmax,
    QuantMatMul,
    QuantMaxPool2d,
    QuantMean,
    QuantMul,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSiLU,
    QuantSoftmax,
    Quantize,
    softmax_qparams,
)
from stages.quant.observers import Observer
from stages.quant.patterns import (
    COMPUTE_PATTERNS,
    PASS_THROUGH_PATTERNS,
    adaptive_output_size,
    reduce_dims,
    softmax_dim,
    tensor_args,
)

_ELEMENTWISE_MODULES = {
    "relu6": QuantReLU6,
    "hardswish": QuantHardswish,
    "hardsigmoid": QuantHardsigmoid,
    "sigmoid": QuantSigmoid,
    "silu": QuantSiLU,
}
# Methods whose result describes a tensor's shape, not its values: they read
# whichever form of the tensor exists, so no Dequantize is made for them.
_SHAPE_METHODS = frozenset({"size", "dim"})

log = logging.getLogger(__name__)


@dataclass
class ConvertSummary:
    """Counts reported by the convert stage."""

    quantized_nodes: int
    float_nodes: int
    quantize_nodes: int
    dequantize_nodes: int


def load_calibration(observed: fx.GraphModule, stats: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load observer statistics (observer module name -> stats) into ``observed``."""
    for name, module in observed.named_modules():
        if not isinstance(module, Observer):
            continue
        if name not in stats:
            raise ValueError(f"calibration has no statistics for observer {name!r}; rerun calibrate on this observed_model")
        module.load_stats(stats[name])


def observer_qparams(observed: fx.GraphModule) -> dict[str, QParams]:
    """Map each observed value node name to the qparams its observer chose."""
    modules = dict(observed.named_modules())
    result: dict[str, QParams] = {}
    for node in observed.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], Observer):
            result[node.args[0].name] = modules[node.target].qparams()
    return result


def convert(observed: fx.GraphModule) -> tuple[fx.GraphModule, ConvertSummary]:
    """Return the int8 GraphModule of a calibrated observed GraphModule."""
    return _Converter(observed).run()


class _Converter:
    def __init__(self, observed: fx.GraphModule) -> None:
        self.observed = observed
        self.modules = dict(observed.named_modules())
        self.plan: dict[str, dict[str, Any]] = observed.quant_plan
        self.source_names: dict[str, str] = observed.value_names
        self.observed_qparams = observer_qparams(observed)
        self.module_calls = Counter(node.target for node in observed.graph.nodes if node.op == "call_module")
        self.taken_targets = {name.split(".")[0] for name, _ in observed.named_modules() if name}

        self.graph = fx.Graph()
        self.root: dict[str, Any] = {}
        # Observed node name -> new float node / new integer node and its qparams.
        self.float_values: dict[str, fx.Node] = {}
        self.int_values: dict[str, tuple[fx.Node, QParams]] = {}
        # Float values with an observer whose Quantize has not been made yet:
        # observer node name -> (qparams, name of the observed node).
        self.pending: dict[str, tuple[QParams, str]] = {}
        self.value_names: dict[str, str] = {}
        # Observer node name -> observed node name, for naming Quantize and Dequantize nodes.
        self.labels: dict[str, str] = {}
        self.qparams: dict[str, dict[str, Any]] = {}

    def run(self) -> tuple[fx.GraphModule, ConvertSummary]:
        for node in self.observed.graph.nodes:
            self._convert_node(node)

        gm = fx.GraphModule(self.root, self.graph, class_name="Int8GraphModule")
        # A Quantize made for a node that then fell back to float has no user.
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        live = {node.name for node in gm.graph.nodes}
        gm.value_names = {name: source for name, source in self.value_names.items() if name in live}
        gm.qparams = {name: qparams for name, qparams in self.qparams.items() if name in live}
        gm.eval()
        return gm, _summarize(gm)

    def _convert_node(self, node: fx.Node) -> None:
        entry = self.plan.get(node.name)

        if node.op == "call_module" and isinstance(self.modules[node.target], Observer):
            self._convert_observer(node)
            return
        if entry is not None and entry["fused_into"] is not None:
            return
        if entry is not None and entry["quantize"] and entry["pattern"] in COMPUTE_PATTERNS:
            if self._convert_compute(node, entry):
                return
        if entry is not None and entry["quantize"] and entry["pattern"] in PASS_THROUGH_PATTERNS:
            if self._convert_pass_through(node, entry):
                return
        self._copy_float(node)

    def _convert_observer(self, node: fx.Node) -> None:
        source = node.args[0].name
        self.labels[node.name] = source
        if source in self.int_values:
            self.int_values[node.name] = self.int_values[source]
            return
        self.float_values[node.name] = self.float_values[source]
        self.pending[node.name] = (self.observed_qparams[source], source)

    def _convert_compute(self, node: fx.Node, entry: dict[str, Any]) -> bool:
        output_name = entry["relu"] or node.name
        output_qparams = self.observed_qparams.get(output_name)
        if entry["pattern"] in ("softmax", "masked_softmax") and output_qparams is not None:
            # Fixed [0, 1) output at the scale QLinearSoftmax computes exactly.
            output_qparams = softmax_qparams()
        inputs = [self._int_value(arg.name) for arg in tensor_args(node, entry["pattern"])]
        if output_qparams is None or any(value is None for value in inputs):
            return False

        try:
            module = self._int8_module(node, entry, [qparams for _, qparams in inputs], output_qparams)
        except ValueError as exc:
            log.warning("node %s stays float: %s", node.name, exc)
            return False

        target = self._target(node)
        self.root[target] = module
        new = self.graph.create_node("call_module", target, tuple(value for value, _ in inputs), {}, name=node.name)
        self._record_int(new, output_name, output_qparams)
        self.int_values[output_name] = (new, output_qparams)
        return True

    def _int8_module(self, node: fx.Node, entry: dict[str, Any], inputs: list[QParams], output: QParams) -> nn.Module:
        pattern = entry["pattern"]
        relu = entry["relu"] is not None
        weight = entry.get("weight") or {}
        per_channel = bool(weight.get("per_channel", True))
        observer = weight.get("observer", "minmax")
        if pattern == "conv":
            return QuantConv2d(self.modules[node.target], inputs[0], output, relu, per_channel, observer)
        if pattern == "linear":
            return QuantLinear(self.modules[node.target], inputs[0], output, relu, per_channel, observer)
        if pattern == "add":
            return QuantAdd(inputs[0], inputs[1], output, relu=relu)
        if pattern == "mul":
            return QuantMul(inputs[0], inputs[1], output)
        if pattern == "matmul":
            return QuantMatMul(inputs[0], inputs[1], output)
        if pattern == "cat":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            return QuantCat(inputs, output, dim)
        if pattern == "relu":
            return QuantReLU(inputs[0], output)
        if pattern in _ELEMENTWISE_MODULES:
            return _ELEMENTWISE_MODULES[pattern](inputs[0], output)
        if pattern == "gelu":
            approximate = self.modules[node.target].approximate if node.op == "call_module" else node.kwargs.get("approximate", "none")
            return QuantGELU(inputs[0], output, approximate)
        if pattern == "softmax":
            return QuantSoftmax(inputs[0], output, softmax_dim(node, self.modules))
        if pattern == "masked_softmax":
            mask = _get_attr(self.observed, node.args[1].target)
            return QuantMaskedSoftmax(inputs[0], output, mask, node.args[2] if len(node.args) > 2 else node.kwargs["windows"])
        if pattern == "batchnorm":
            return QuantBatchNorm2d(self.modules[node.target], inputs[0], output, relu=relu)
        if pattern == "mean":
            dims, keepdim = reduce_dims(node)
            return QuantMean(dims, keepdim, inputs[0], output)
        if pattern == "avgpool":
            return QuantAvgPool2d(_pool_module(node, self.modules, nn.AvgPool2d), inputs[0], output)
        if pattern == "adaptive_avgpool":
            return QuantAdaptiveAvgPool2d(adaptive_output_size(node, self.modules), inputs[0], output)
        raise ValueError(f"no int8 module for pattern {pattern!r}")

    def _convert_pass_through(self, node: fx.Node, entry: dict[str, Any]) -> bool:
        source = tensor_args(node, entry["pattern"])
        value = self._int_value(source[0].name) if source else None
        if value is None:
            return False
        int_node, qparams = value

        if entry["pattern"] == "maxpool":
            target = self._target(node)
            self.root[target] = QuantMaxPool2d(_pool_module(node, self.modules, nn.MaxPool2d), qparams)
            new = self.graph.create_node("call_module", target, (int_node,), {}, name=node.name)
        elif entry["pattern"] == "identity":
            self.int_values[node.name] = value
            return True
        else:
            new = self._copy(node, lambda arg: int_node if arg is source[0] else self._float_value(arg.name))
        self._record_int(new, node.name, qparams)
        self.int_values[node.name] = (new, qparams)
        return True

    def _copy_float(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            new = self.graph.node_copy(node)
        elif node.op == "call_method" and node.target in _SHAPE_METHODS:
            new = self._copy(node, lambda arg: self._any_value(arg.name))
        else:
            new = self._copy(node, lambda arg: self._float_value(arg.name))
        self.float_values[node.name] = new
        if node.name in self.source_names and node.op != "output":
            self.value_names[new.name] = self.source_names[node.name]

    def _copy(self, node: fx.Node, map_arg: Any) -> fx.Node:
        if node.op == "call_module":
            self.root[node.target] = self.modules[node.target]
        elif node.op == "get_attr":
            self.root[node.target] = _get_attr(self.observed, node.target)
        return self.graph.node_copy(node, map_arg)

    def _int_value(self, name: str) -> tuple[fx.Node, QParams] | None:
        """Return the integer form of an observed value, adding a Quantize for a pending float value."""
        if name in self.int_values:
            return self.int_values[name]
        if name not in self.pending:
            return None
        qparams, label = self.pending.pop(name)
        target = _unique(f"quantize_{label}", self.taken_targets)
        self.taken_targets.add(target)
        self.root[target] = Quantize(qparams)
        new = self.graph.create_node("call_module", target, (self.float_values[name],), {}, name=f"{label}_quantize")
        self._record_int(new, name, qparams)
        self.int_values[name] = (new, qparams)
        return self.int_values[name]

    def _any_value(self, name: str) -> fx.Node:
        """Return the float form of a value when it exists, else its integer form."""
        if name in self.float_values:
            return self.float_values[name]
        if name in self.int_values:
            return self.int_values[name][0]
        return self._float_value(name)

    def _float_value(self, name: str) -> fx.Node:
        """Return the float form of an observed value, adding a Dequantize for an integer value."""
        if name in self.float_values:
            return self.float_values[name]
        int_node, qparams = self.int_values[name]
        label = self.labels.get(name, name)
        target = _unique(f"dequantize_{label}", self.taken_targets)
        self.taken_targets.add(target)
        self.root[target] = Dequantize(qparams)
        new = self.graph.create_node("call_module", target, (int_node,), {}, name=f"{label}_dequantize")
        if name in self.source_names:
            self.value_names[new.name] = self.source_names[name]
        self.float_values[name] = new
        return new

    def _record_int(self, new: fx.Node, observed_name: str, qparams: QParams) -> None:
        if observed_name in self.source_names:
            self.value_names[new.name] = self.source_names[observed_name]
        self.qparams[new.name] = qparams.to_dict()

    def _target(self, node: fx.Node) -> str:
        """Module path for an int8 module: the float module's path when it is called once."""
        if node.op == "call_module" and self.module_calls[node.target] == 1:
            return node.target
        target = _unique(node.name, self.taken_targets)
        self.taken_targets.add(target)
        return target


def _summarize(gm: fx.GraphModule) -> ConvertSummary:
    modules = dict(gm.named_modules())
    counts: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, Quantize):
            counts["quantize"] += 1
        elif isinstance(module, Dequantize):
            counts["dequantize"] += 1
        elif node.name in gm.qparams:
            counts["quantized"] += 1
        else:
            counts["float"] += 1
    return ConvertSummary(counts["quantized"], counts["float"], counts["quantize"], counts["dequantize"])


def _pool_module(node: fx.Node, modules: dict[str, nn.Module], cls: type[nn.Module]) -> nn.Module:
    """Return the pooling module of a call_module node, or build one from F.max_pool2d / F.avg_pool2d arguments."""
    if node.op == "call_module":
        return modules[node.target]
    names = (
        ["kernel_size", "stride", "padding", "dilation", "ceil_mode"]
        if cls is nn.MaxPool2d
        else ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"]
    )
    kwargs = {}
    for index, name in enumerate(names):
        if len(node.args) > index + 1:
            kwargs[name] = node.args[index + 1]
        elif name in node.kwargs:
            kwargs[name] = node.kwargs[name]
    if kwargs.get("stride") in ((), []):
        kwargs["stride"] = None
    return cls(**kwargs)


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        candidate = f"{name}_{index}"
        index += 1
    return candidate


def _get_attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value
