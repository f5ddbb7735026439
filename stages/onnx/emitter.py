"""Walk an fx GraphModule and build an ONNX model from standard-domain ops.

Shapes and dtypes come from ``torch.fx.passes.shape_prop.ShapeProp`` run on
an example input. Each fx node's value becomes the ONNX tensor named after
the node (``conv1``, ``add_3``), so a per-node comparison can match the two
graphs by name. Helper nodes a mapping needs get names derived from the fx
node (``conv1/weight_dq``).

Nodes whose value is not a tensor (``x.size(0)``, ``x.shape``) are folded
into constants taken from the example run, and ``Dropout``/``Identity``/
``contiguous`` alias their input without emitting a node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import torch
import torch.fx

from stages.fx_emit import RecordingShapeProp, claim_name
from stages.onnx import registry

log = logging.getLogger(__name__)

PRODUCER = "brocolli"
BATCH_DIM = "batch"
DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 21

TORCH_TO_ONNX_DTYPE = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.float64: onnx.TensorProto.DOUBLE,
    torch.uint8: onnx.TensorProto.UINT8,
    torch.int8: onnx.TensorProto.INT8,
    torch.int32: onnx.TensorProto.INT32,
    torch.int64: onnx.TensorProto.INT64,
    torch.bool: onnx.TensorProto.BOOL,
}


class EmitError(Exception):
    """The graph contains a node the exporter cannot map to ONNX."""


@dataclass
class OnnxGraph:
    """The ONNX graph under construction for one GraphModule."""

    graph_module: torch.fx.GraphModule
    opset: int
    dynamic_batch: bool
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    # fx node name -> ONNX tensor name of its value.
    values: dict[str, str] = field(default_factory=dict)
    # fx node name -> Python value of a node that is not a tensor.
    constants: dict[str, Any] = field(default_factory=dict)
    # fx node name -> ONNX tensor names of a node whose value is a tuple (None: not a tensor).
    sequences: dict[str, list[str | None]] = field(default_factory=dict)
    # Helper tensors computed once per graph (the run-time batch size).
    shared: dict[str, str] = field(default_factory=dict)
    # fx node name -> name of the ONNX node that computes its value.
    producers: dict[str, str] = field(default_factory=dict)
    # Tensor names and node names are separate namespaces in ONNX.
    tensor_names: set[str] = field(default_factory=set)
    node_names: set[str] = field(default_factory=set)

    # -- names and building blocks ---------------------------------------

    def unique_name(self, base: str) -> str:
        """Return an unused tensor name starting with ``base``."""
        return claim_name(self.tensor_names, base)

    def add_node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        name: str,
        **attributes: Any,
    ) -> onnx.NodeProto:
        node = onnx.helper.make_node(op_type, list(inputs), list(outputs), name=claim_name(self.node_names, name), **attributes)
        self.nodes.append(node)
        return node

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        unique = self.unique_name(name)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(array, order="C"), unique))
        return unique

    def add_tensor_initializer(self, name: str, tensor: torch.Tensor) -> str:
        return self.add_initializer(name, tensor.detach().cpu().numpy())

    def add_constant(self, name: str, value: Any, dtype: np.dtype | type) -> str:
        return self.add_initializer(name, np.asarray(value, dtype=dtype))

    def bind(self, node: torch.fx.Node, tensor_name: str, producer: str | None = None) -> None:
        """Bind an fx node's value to an ONNX tensor, optionally naming the ONNX node computing it."""
        self.values[node.name] = tensor_name
        if producer is not None:
            self.producers[node.name] = producer

    def emit(self, op_type: str, node: torch.fx.Node, inputs: Sequence[str], **attributes: Any) -> None:
        """Emit one ONNX node that computes the fx node's value under the fx node's name."""
        onnx_node = self.add_node(op_type, inputs, [node.name], node.name, **attributes)
        self.bind(node, node.name, onnx_node.name)

    def step(self, op_type: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        """Emit a helper node with one output named after ``name``; return the output's name."""
        output = self.unique_name(name)
        self.add_node(op_type, inputs, [output], output, **attributes)
        return output

    def batch_size(self) -> str:
        """Return a 1-D int64 tensor holding the batch size of the first graph input.

        With a fixed batch it is a constant; with ``dynamic_batch`` it is read
        from the input's shape at run time.
        """
        source = self.inputs[0].name
        if not self.dynamic_batch:
            dims = self.inputs[0].type.tensor_type.shape.dim
            return self.add_constant("batch_size", [int(dims[0].dim_value)], np.int64)
        if "batch_size" not in self.shared:
            shape = self.step("Shape", [source], "input_shape")
            starts = self.add_constant("batch_size/starts", [0], np.int64)
            ends = self.add_constant("batch_size/ends", [1], np.int64)
            self.shared["batch_size"] = self.step("Slice", [shape, starts, ends], "batch_size")
        return self.shared["batch_size"]

    # -- reading fx arguments --------------------------------------------

    def tensor(self, arg: Any, like: torch.fx.Node | None = None, name: str = "const") -> str:
        """Return the ONNX tensor name of an fx argument.

        A Python number becomes an initializer with the dtype of ``like``.
        """
        if isinstance(arg, torch.fx.Node):
            if arg.name not in self.values:
                raise EmitError(f"ONNX export: node '{arg.name}' has no tensor value (it is {self.constants.get(arg.name)!r})")
            return self.values[arg.name]
        dtype = np.float32 if like is None else self.numpy_dtype(like)
        return self.add_constant(name, arg, dtype)

    def value(self, arg: Any) -> Any:
        """Return the Python value of an argument, resolving folded constant nodes."""
        if isinstance(arg, torch.fx.Node):
            if arg.name not in self.constants:
                raise EmitError(
                    f"ONNX export: node '{arg.name}' is a tensor where a constant is expected; "
                    f"only shapes known at export time are supported"
                )
            return self.constants[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(item) for item in arg)
        return arg

    def shape(self, node: Any) -> list[int]:
        return list(node.meta["tensor_meta"].shape)

    def numpy_dtype(self, node: torch.fx.Node) -> np.dtype:
        torch_dtype = node.meta["tensor_meta"].dtype
        return np.dtype(torch.empty((), dtype=torch_dtype).numpy().dtype)

    def module(self, node: torch.fx.Node) -> torch.nn.Module:
        return self.graph_module.get_submodule(node.target)


def export_graph_module(
    graph_module: torch.fx.GraphModule,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    graph_name: str = "model",
) -> onnx.ModelProto:
    """Build an ONNX model computing ``graph_module``.

    Args:
        graph_module: an fp32 GraphModule or an int8 GraphModule of
            ``stages.quant.modules`` classes, in eval mode.
        example_input: input(s) for the shape pass; the batch size is fixed
            in the model unless ``dynamic_batch``.
        opset: standard-domain opset, 13 to 21.
        dynamic_batch: make dimension 0 of inputs and outputs symbolic.

    Raises:
        EmitError: a node has no ONNX mapping; the message names the node.
    """
    from stages.onnx import (  # noqa: F401
        ops_activation,
        ops_attention,
        ops_conv,
        ops_elementwise,
        ops_linear,
        ops_norm,
        ops_pool,
        ops_quant,
        ops_quant_elementwise,
        ops_resize,
        ops_shape,
    )

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EmitError(f"ONNX export: opset {opset} is not supported, expected {MIN_OPSET} to {MAX_OPSET}")

    examples = [example_input] if isinstance(example_input, torch.Tensor) else list(example_input)
    with torch.no_grad():
        RecordingShapeProp(graph_module).propagate(*examples)

    graph = OnnxGraph(graph_module, opset, dynamic_batch)
    for node in graph_module.graph.nodes:
        graph.tensor_names.add(node.name)

    for node in graph_module.graph.nodes:
        _emit_node(graph, node)

    onnx_graph = onnx.helper.make_graph(graph.nodes, graph_name, graph.inputs, graph.outputs, graph.initializers)
    opset_ids = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(onnx_graph, opset_imports=opset_ids, producer_name=PRODUCER)
    model.ir_version = onnx.helper.find_min_ir_version_for(opset_ids)
    log.info("emitted %d ONNX nodes for %d fx nodes (opset %d)", len(graph.nodes), len(graph_module.graph.nodes), opset)
    return model


def _emit_node(graph: OnnxGraph, node: torch.fx.Node) -> None:
    if node.op == "placeholder":
        graph.inputs.append(_value_info(graph, node.name, node.meta["tensor_meta"], batch_symbolic=True))
        graph.values[node.name] = node.name
        return

    if node.op == "output":
        _emit_outputs(graph, node)
        return

    if "tensor_meta" not in node.meta and node.op != "call_module":
        graph.constants[node.name] = node.meta.get("constant_value")
        return

    if node.op == "get_attr":
        attribute = _fetch_attribute(graph.graph_module, str(node.target))
        graph.bind(node, graph.add_tensor_initializer(node.name, attribute))
        return

    module = graph.module(node) if node.op == "call_module" else None
    handler = registry.HANDLERS.find(node, module)
    if handler is None:
        raise EmitError(
            f"ONNX export: node '{node.name}' ({node.op} {_target_name(graph, node)}) has no ONNX mapping; "
            f"add one to the matching stages/onnx/ops_*.py, or keep the module out of the model"
        )
    handler(graph, node, module)
    if node.name not in graph.values and node.name not in graph.constants and node.name not in graph.sequences:
        raise EmitError(f"ONNX export: the mapping of node '{node.name}' bound no output")


def _target_name(graph: OnnxGraph, node: torch.fx.Node) -> str:
    if node.op == "call_module":
        cls = type(graph.module(node))
        return f"{cls.__module__}.{cls.__qualname__}"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _emit_outputs(graph: OnnxGraph, node: torch.fx.Node) -> None:
    results = node.args[0]
    if isinstance(results, torch.fx.Node):
        results = [results]
    if not isinstance(results, (list, tuple)) or not all(isinstance(item, torch.fx.Node) for item in results):
        raise EmitError(f"ONNX export: the model returns {type(results).__name__}; only tensors and tuples of tensors are supported")

    # A node whose value is a tuple (MultiheadAttention) contributes each of its tensors.
    flat: list[tuple[torch.fx.Node, str, Any]] = []
    for result in results:
        if result.name in graph.sequences:
            for position, item in enumerate(graph.sequences[result.name]):
                if item is None:
                    raise EmitError(f"ONNX export: output item {position} of node '{result.name}' is not a tensor")
                flat.append((result, item, result.meta["tensor_meta"][position]))
        else:
            flat.append((result, graph.tensor(result), result.meta["tensor_meta"]))

    input_names = {value_info.name for value_info in graph.inputs}
    emitted: set[str] = set()
    for result, tensor_name, meta in flat:
        # ONNX needs a distinct tensor per graph output, and outputs that are not graph inputs.
        if tensor_name in input_names or tensor_name in emitted:
            aliased = graph.unique_name(f"{result.name}_output")
            graph.add_node("Identity", [tensor_name], [aliased], aliased)
            tensor_name = aliased
        emitted.add(tensor_name)
        graph.outputs.append(_value_info(graph, tensor_name, meta, batch_symbolic=True))


def _value_info(graph: OnnxGraph, name: str, meta: Any, batch_symbolic: bool) -> onnx.ValueInfoProto:
    shape: list[int | str] = list(meta.shape)
    if graph.dynamic_batch and batch_symbolic and shape:
        shape[0] = BATCH_DIM
    return onnx.helper.make_tensor_value_info(name, TORCH_TO_ONNX_DTYPE[meta.dtype], shape)


def _fetch_attribute(graph_module: torch.fx.GraphModule, target: str) -> torch.Tensor:
    value: Any = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise EmitError(f"ONNX export: attribute '{target}' is {type(value).__name__}, expected a tensor")
    return value
