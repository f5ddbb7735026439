"""Walk an fx GraphModule and build a Caffe NetParameter from brocolli-caffe layers.

Shapes come from ``torch.fx.passes.shape_prop.ShapeProp`` run on an example
input. Each layer is named after its fx node and each blob after the fx node
whose value it stores (``conv1``, ``add_3``). So a per-blob comparison can
match the two graphs by name. Blobs a mapping needs in between get names
derived from the fx node (``mul/flatten``). No layer works in place: every
fx value keeps its own blob.

Nodes whose value is not a tensor (``x.size(0)``, ``c // 2``) are folded into
constants from the example run, and ``Dropout``/``Identity``/``contiguous``
alias their input without emitting a layer.

NOTE: [Fixed shapes] Caffe blobs have fixed shapes: the net takes the
example input's shape, batch included, and reshape targets come from the
example run.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx

from stages.caffe import registry
from stages.caffe.proto import caffe_pb2
from stages.fx_emit import RecordingShapeProp, claim_name

log = logging.getLogger(__name__)

INPUT_LAYER = "Input"
# Tag of BlobProto.shape (field 7) and of its packed float data (field 5).
_SHAPE_TAG = b"\x3a"
_DATA_TAG = b"\x2a"
_STACK_LINE = re.compile(r'File "([^"]+)", line (\d+)')
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


class EmitError(Exception):
    """The graph contains a node the exporter cannot map to Caffe."""


@dataclass
class CaffeGraph:
    """The Caffe net under construction for one GraphModule."""

    graph_module: torch.fx.GraphModule
    pb: ModuleType
    net: Any
    # fx node name -> the name its blob takes (a conv with a folded BatchNorm
    # gets the BatchNorm node's name, the fp32 value it computes).
    blob_names: dict[str, str] = field(default_factory=dict)
    # fx node name -> blob holding its value; fx node name -> blobs of a tuple value.
    values: dict[str, str] = field(default_factory=dict)
    tuples: dict[str, list[str]] = field(default_factory=dict)
    # fx node name -> Python value of a node that is not a tensor.
    constants: dict[str, Any] = field(default_factory=dict)
    # blob name -> (layer name, layer type) of the layer writing it.
    producers: dict[str, tuple[str, str]] = field(default_factory=dict)
    taken_blobs: set[str] = field(default_factory=set)
    taken_layers: set[str] = field(default_factory=set)
    # What errors call the model when no line of its code is known.
    model_name: str = "the model"

    # -- names and building blocks ---------------------------------------

    def blob_name(self, node: torch.fx.Node) -> str:
        """Return an unused blob name for the node's value."""
        return claim_name(self.taken_blobs, self.blob_names.get(node.name, node.name))

    def aux_blob(self, node: torch.fx.Node, suffix: str) -> str:
        """Return an unused blob name for a value between the layers of one node."""
        return claim_name(self.taken_blobs, f"{node.name}/{suffix}")

    def add_layer(
        self,
        layer_type: str,
        name: str,
        bottoms: Sequence[str],
        tops: Sequence[str],
        weights: Sequence[np.ndarray] = (),
        **params: Any,
    ) -> Any:
        """Append a layer; ``params`` map a LayerParameter field (``pooling_param``) to its values."""
        layer = self.net.layer.add()
        layer.name = claim_name(self.taken_layers, name)
        layer.type = layer_type
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        for field_name, values in params.items():
            _fill(getattr(layer, field_name), values)
        for array in weights:
            layer.blobs.add().ParseFromString(blob_bytes(array))
        for top in tops:
            self.producers[top] = (layer.name, layer_type)
        return layer

    def emit(
        self,
        layer_type: str,
        node: torch.fx.Node,
        bottoms: Sequence[str],
        weights: Sequence[np.ndarray] = (),
        **params: Any,
    ) -> str:
        """Emit one layer computing the fx node's value into the node's blob; return the blob."""
        top = self.blob_name(node)
        self.add_layer(layer_type, node.name, bottoms, [top], weights, **params)
        self.values[node.name] = top
        return top

    def bind(self, node: torch.fx.Node, blob: str) -> None:
        self.values[node.name] = blob

    # -- reading fx arguments --------------------------------------------

    def bottom(self, arg: Any) -> str:
        """Return the blob holding an fx argument's tensor value."""
        if isinstance(arg, torch.fx.Node) and arg.name in self.values:
            return self.values[arg.name]
        raise EmitError(f"Caffe export: argument {arg!r} is not a tensor produced by an earlier layer")

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and arg.name in self.values

    def value(self, arg: Any) -> Any:
        """Return the Python value of an argument, resolving folded constant nodes."""
        if isinstance(arg, torch.fx.Node):
            if arg.name not in self.constants:
                raise EmitError(
                    f"Caffe export: node '{arg.name}' is a tensor where a constant is expected; "
                    f"only values known at export time are supported"
                )
            return self.constants[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(item) for item in arg)
        return arg

    def shape(self, node: Any) -> list[int]:
        return list(node.meta["tensor_meta"].shape)

    def module(self, node: torch.fx.Node) -> torch.nn.Module:
        return self.graph_module.get_submodule(str(node.target))


def _fill(message: Any, values: dict[str, Any]) -> None:
    """Set the fields of a protobuf message from a dict (lists fill repeated fields)."""
    for key, value in values.items():
        if isinstance(value, dict):
            _fill(getattr(message, key), value)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            repeated = getattr(message, key)
            for item in value:
                _fill(repeated.add(), item)
        elif isinstance(value, (list, tuple)):
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def blob_bytes(array: np.ndarray | torch.Tensor) -> bytes:
    """Serialize an array as a BlobProto (shape + packed float32 data) without a Python list.

    Building the repeated field element by element takes seconds for the
    100-million-weight layers of VGG; the wire format is a length-prefixed
    run of little-endian float32 values, written here directly.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    # asarray, not ascontiguousarray, which turns a 0-d array into a 1-d one.
    data = np.asarray(array, dtype="<f4", order="C")
    dims = b"".join(_varint(int(dim)) for dim in data.shape)
    shape = b"\x0a" + _varint(len(dims)) + dims if data.shape else b""
    payload = data.tobytes()
    return _SHAPE_TAG + _varint(len(shape)) + shape + _DATA_TAG + _varint(len(payload)) + payload


def build_net(
    graph_module: torch.fx.GraphModule,
    example_input: torch.Tensor,
    net_name: str = "model",
    blob_names: dict[str, str] | None = None,
    model_name: str | None = None,
) -> CaffeGraph:
    """Build the Caffe net computing ``graph_module`` on inputs of ``example_input``'s shape.

    Args:
        graph_module: an fp32 GraphModule in eval mode.
        example_input: input for the shape pass; its shape, batch included,
            becomes the net's input shape.
        blob_names: fx node name -> blob name, for nodes whose blob takes
            another name (a conv with a folded BatchNorm).
        model_name: how errors name the model when the tracer recorded no
            line numbers (the pipeline's model source); default: the
            GraphModule's class name.

    Raises:
        EmitError: a node has no Caffe mapping; the message names the node,
            the op, the line of model code and the supported alternatives.
    """
    from stages.caffe import ops_activation, ops_conv, ops_elementwise, ops_linear, ops_pool, ops_resize, ops_shape  # noqa: F401

    with torch.no_grad():
        RecordingShapeProp(graph_module).propagate(example_input)

    pb = caffe_pb2()
    graph = CaffeGraph(
        graph_module,
        pb,
        pb.NetParameter(name=net_name),
        blob_names=dict(blob_names or {}),
        model_name=model_name or type(graph_module).__name__,
    )
    for node in graph_module.graph.nodes:
        _emit_node(graph, node)
    log.info("emitted %d Caffe layers for %d fx nodes", len(graph.net.layer), len(graph_module.graph.nodes))
    return graph


def _emit_node(graph: CaffeGraph, node: torch.fx.Node) -> None:
    if node.op == "placeholder":
        if graph.taken_layers:
            raise EmitError(f"Caffe export: input '{node.name}': only models with one input are supported")
        shape = graph.shape(node)
        graph.emit(INPUT_LAYER, node, [], input_param={"shape": [{"dim": shape}]})
        return

    if node.op == "output":
        _check_outputs(graph, node)
        return

    meta = node.meta.get("tensor_meta")
    if meta is None and node.op != "call_module":
        graph.constants[node.name] = node.meta.get("constant_value")
        return

    if node.op == "get_attr":
        raise unsupported(graph, node, "a tensor attribute used directly in forward() has no Caffe layer")

    module = graph.module(node) if node.op == "call_module" else None
    handler = registry.HANDLERS.find(node, module)
    if handler is None:
        raise unsupported(graph, node, "it has no Caffe mapping")
    handler(graph, node, module)
    if node.name not in graph.values and node.name not in graph.tuples and node.name not in graph.constants:
        raise EmitError(f"Caffe export: the mapping of node '{node.name}' bound no output")


def _check_outputs(graph: CaffeGraph, node: torch.fx.Node) -> None:
    results = node.args[0]
    if isinstance(results, torch.fx.Node):
        results = [results]
    if not isinstance(results, (list, tuple)) or not all(graph.is_tensor(item) for item in results):
        raise EmitError(f"Caffe export: the model returns {type(results).__name__}; only tensors and tuples of tensors are supported")


def output_blobs(graph: CaffeGraph) -> list[str]:
    """Return the blobs of the model's outputs, in order."""
    node = next(node for node in graph.graph_module.graph.nodes if node.op == "output")
    results = node.args[0]
    results = [results] if isinstance(results, torch.fx.Node) else list(results)
    return [graph.bottom(result) for result in results]


# -- errors naming the model's code ---------------------------------------


def op_description(graph: CaffeGraph, node: torch.fx.Node) -> str:
    if node.op == "call_module":
        cls = type(graph.module(node))
        return f"{cls.__module__}.{cls.__qualname__}"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", "") or ""
        return f"{module}.{getattr(node.target, '__name__', str(node.target))}".lstrip(".")
    return f"Tensor.{node.target}" if node.op == "call_method" else str(node.target)


def model_location(node: torch.fx.Node, model_name: str = "the model") -> str:
    """Return where the model's code creates the node: ``file:line`` and the module that runs it.

    A stack trace recorded by the tracer gives the exact line: the innermost
    frame outside torch. Without one, ``nn_module_stack`` names the submodule
    whose ``forward`` runs the op, and the location is that method's first line.
    """
    frames = [(path, line) for path, line in _STACK_LINE.findall(node.stack_trace or "") if not path.startswith(_TORCH_DIR)]
    if frames:
        path, line = frames[-1]
        return f"{path}:{line}"

    module_stack = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module" and module_stack:
        # The innermost entry of a call_module node is the leaf module itself; its caller is one up.
        module_stack = module_stack[:-1]
    if module_stack:
        path, cls = module_stack[-1]
        return f"{_forward_location(cls)} (in {path}: {getattr(cls, '__qualname__', cls)}.forward)"
    return f"the forward of {model_name} (the tracer recorded no line numbers)"


def _forward_location(cls: Any) -> str:
    try:
        forward = cls.forward
        path = inspect.getsourcefile(forward)
        _, line = inspect.getsourcelines(forward)
    except (AttributeError, OSError, TypeError):
        return "unknown file"
    return f"{path}:{line}"


def unsupported(graph: CaffeGraph, node: torch.fx.Node, reason: str, alternatives: str | None = None) -> EmitError:
    """Build the one-line error for a node the exporter cannot map."""
    op = op_description(graph, node)
    hint = alternatives or registry.alternatives(node.op, op)
    return EmitError(
        f"Caffe export: node '{node.name}' ({node.op} {op}) at {model_location(node, graph.model_name)}: "
        f"{reason}; {hint}"
    )
