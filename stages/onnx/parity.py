"""Run an exported ONNX model in onnxruntime against its GraphModule.

:func:`compare_outputs` measures the final outputs over many inputs;
:func:`find_divergence` exposes every ONNX tensor that carries an fx node's
value as an extra graph output (in a copy of the model) and returns the
first ONNX node, in graph order, whose output differs from the fx node's.
:func:`count_int8_kernels` counts the integer kernels in onnxruntime's
optimized graph, :func:`float_compute_nodes` the Conv, Gemm, MatMul and Add
nodes it left in float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
import torch
import torch.fx

from stages.onnx.session import DISABLED_OPTIMIZERS, PROVIDERS, session_options

log = logging.getLogger(__name__)

# Op types of onnxruntime's integer kernels (standard and com.microsoft domains).
INT8_KERNEL_PREFIXES = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QAttention")
# Float op types of onnxruntime's optimized graph that an int8 model should not keep:
# the compute an int8 kernel replaces (the Fused* forms carry a fused activation).
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Add"})
# Op types that move or reshape data, or convert between float and integers:
# they do no arithmetic that an int8 kernel could take over.
DATA_MOVEMENT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Slice", "Concat", "Split", "Gather", "Flatten",
    "Squeeze", "Unsqueeze", "Identity", "Shape", "Cast", "Expand", "Pad", "MaxPool",
})  # fmt: skip
# Relative slack on "one step": dequantized values carry float32 rounding.
STEP_SLACK = 1e-3

NUMPY_TO_ONNX = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float64): onnx.TensorProto.DOUBLE,
    np.dtype(np.uint8): onnx.TensorProto.UINT8,
    np.dtype(np.int8): onnx.TensorProto.INT8,
    np.dtype(np.int32): onnx.TensorProto.INT32,
    np.dtype(np.int64): onnx.TensorProto.INT64,
    np.dtype(np.bool_): onnx.TensorProto.BOOL,
}


@dataclass
class OutputComparison:
    """Differences between onnxruntime and PyTorch over all compared inputs."""

    samples: int
    max_abs_diff: float
    max_rel_diff: float
    # Share (percent) of output elements within one output step; None without a step.
    within_one_step_pct: float | None
    # Index of the input batch with the largest relative difference.
    worst_batch: int


@dataclass
class Divergence:
    """The first ONNX node whose output differs from the matching fx node's value."""

    onnx_node: str
    op_type: str
    fx_node: str
    max_abs_diff: float
    max_rel_diff: float
    onnx_stats: str
    torch_stats: str

    def describe(self) -> str:
        return (
            f"first diverging node '{self.onnx_node}' ({self.op_type}, fx node '{self.fx_node}'): "
            f"max_abs_diff={self.max_abs_diff:.4g}, max_rel_diff={self.max_rel_diff:.4g}, "
            f"onnx {self.onnx_stats}, torch {self.torch_stats}"
        )


def create_session(
    model: onnx.ModelProto | Path,
    optimized_path: Path | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """Create a CPU session with every graph optimization enabled.

    ``model`` is a proto or the path of a saved model (a model with external
    data: a proto over 2 GB cannot be serialized). ``threads`` fixes the
    intra-op thread count (default: onnxruntime's choice).
    """
    options = session_options(threads)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=PROVIDERS, disabled_optimizers=DISABLED_OPTIMIZERS)


def run_torch(graph_module: torch.nn.Module, batch: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        result = graph_module(torch.from_numpy(batch))
    results = result if isinstance(result, (list, tuple)) else [result]
    return [value.detach().cpu().numpy() for value in results]


def chunk_inputs(inputs: np.ndarray, batch_size: int | None) -> list[np.ndarray]:
    """Split inputs into batches of the model's batch size.

    ``batch_size`` None (dynamic batch) keeps one batch. A last partial batch
    is filled up with the first inputs, so every batch has the fixed size.
    """
    if batch_size is None or len(inputs) == 0:
        return [inputs]
    batches = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        if len(batch) < batch_size:
            repeats = -(-batch_size // len(inputs))
            filler = np.concatenate([inputs] * repeats)[: batch_size - len(batch)]
            batch = np.concatenate([batch, filler])
        batches.append(np.ascontiguousarray(batch))
    return batches


def compare_outputs(
    session: ort.InferenceSession,
    graph_module: torch.nn.Module,
    batches: Sequence[np.ndarray],
    output_steps: Sequence[float] | None = None,
) -> OutputComparison:
    """Compare onnxruntime's outputs with the GraphModule's on every batch.

    ``max_rel_diff`` is max|a - b| / max|b| over all outputs and batches.
    ``output_steps`` (each output's quantization scale) adds the share of
    elements that differ by at most one step.
    """
    input_name = session.get_inputs()[0].name
    max_abs_diff = 0.0
    max_reference = 0.0
    within = 0
    total = 0
    worst_batch = 0
    worst_rel = -1.0
    samples = 0

    for index, batch in enumerate(batches):
        actual = session.run(None, {input_name: batch})
        expected = run_torch(graph_module, batch)
        samples += len(batch)
        batch_abs = 0.0
        batch_reference = 0.0
        for position, (got, want) in enumerate(zip(actual, expected)):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            batch_abs = max(batch_abs, float(diff.max(initial=0.0)))
            batch_reference = max(batch_reference, float(np.abs(want).max(initial=0.0)))
            if output_steps is not None:
                step = output_steps[position]
                within += int(np.count_nonzero(diff <= step * (1 + STEP_SLACK)))
                total += diff.size
        max_abs_diff = max(max_abs_diff, batch_abs)
        max_reference = max(max_reference, batch_reference)
        batch_rel = _relative(batch_abs, batch_reference)
        if batch_rel > worst_rel:
            worst_rel = batch_rel
            worst_batch = index

    within_pct = None
    if output_steps is not None:
        within_pct = 100.0 * within / total if total else 100.0
    return OutputComparison(
        samples=samples,
        max_abs_diff=max_abs_diff,
        max_rel_diff=_relative(max_abs_diff, max_reference),
        within_one_step_pct=within_pct,
        worst_batch=worst_batch,
    )


def find_divergence(
    model: onnx.ModelProto,
    graph_module: torch.fx.GraphModule,
    batch: np.ndarray,
    max_rel_diff: float,
    min_within_one_step_pct: float = 100.0,
) -> Divergence | None:
    """Return the first ONNX node, in graph order, whose output diverges from its fx node.

    An ONNX tensor matches the fx node of the same name. A float tensor
    diverges when its max_rel_diff exceeds ``max_rel_diff``; an integer
    (quantized) tensor when fewer than ``min_within_one_step_pct`` percent of
    its elements are within one step. Without a node over the limit, the
    node with the largest relative difference is returned.
    """
    fx_values = _record_fx_values(graph_module, batch)
    candidates = _matched_outputs(model, fx_values)
    if not candidates:
        return None

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {output.name for output in probe.graph.output}
    for node, tensor_name in candidates:
        if tensor_name not in existing:
            element_type = NUMPY_TO_ONNX[fx_values[tensor_name].dtype]
            probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor_name, element_type, None))
            existing.add(tensor_name)

    session = create_session(probe)
    names = [tensor_name for _, tensor_name in candidates]
    input_name = session.get_inputs()[0].name
    values = dict(zip(names, session.run(names, {input_name: batch})))

    largest: Divergence | None = None
    for node, tensor_name in candidates:
        divergence = _compare_tensor(node, tensor_name, values[tensor_name], fx_values[tensor_name])
        if _diverges(values[tensor_name], fx_values[tensor_name], max_rel_diff, min_within_one_step_pct):
            return divergence
        if largest is None or divergence.max_rel_diff > largest.max_rel_diff:
            largest = divergence
    return largest


def count_int8_kernels(model: onnx.ModelProto | Path, work_dir: Path) -> tuple[int, dict[str, int]]:
    """Count integer kernel nodes in onnxruntime's optimized graph.

    The optimized model is written to ``work_dir`` and deleted afterwards.
    Returns the count and the optimized graph's op type histogram.
    """
    histogram = optimized_histogram(model, work_dir)
    count = sum(number for op_type, number in histogram.items() if op_type.startswith(INT8_KERNEL_PREFIXES))
    return count, histogram


def float_compute_nodes(histogram: dict[str, int]) -> int:
    """Count the Conv, Gemm, MatMul and Add nodes (and their fused forms) left in float."""
    return sum(number for op_type, number in histogram.items() if op_type in FLOAT_COMPUTE_OPS)


def other_float_ops(histogram: dict[str, int]) -> dict[str, int]:
    """Return the op types (with counts) that are neither int8 kernels nor data movement: the arithmetic left in float."""
    return {
        op_type: number
        for op_type, number in histogram.items()
        if not op_type.startswith(INT8_KERNEL_PREFIXES) and op_type not in DATA_MOVEMENT_OPS
    }


def optimized_histogram(model: onnx.ModelProto | Path, work_dir: Path) -> dict[str, int]:
    """Return the op type histogram of the graph onnxruntime runs (CPU, every optimization)."""
    histogram: dict[str, int] = {}
    for node in optimized_graph(model, work_dir).node:
        histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
    return dict(sorted(histogram.items()))


def optimized_graph(model: onnx.ModelProto | Path, work_dir: Path) -> onnx.GraphProto:
    """Return the graph onnxruntime runs (CPU, every optimization), without its large initializers' data.

    The optimized model is written to ``work_dir`` and deleted afterwards.
    """
    optimized_path = work_dir / "optimized.tmp.onnx"
    optimized_data = work_dir / "optimized.tmp.onnx.data"
    try:
        options = session_options(None)
        options.optimized_model_filepath = str(optimized_path)
        # Keep the weights out of the proto, so a model over 2 GB can be written.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized_data.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        source = str(model) if isinstance(model, Path) else model.SerializeToString()
        ort.InferenceSession(source, options, providers=PROVIDERS, disabled_optimizers=DISABLED_OPTIMIZERS)
        return onnx.load(str(optimized_path), load_external_data=False).graph
    finally:
        optimized_path.unlink(missing_ok=True)
        optimized_data.unlink(missing_ok=True)


def kernel_signature(graph: onnx.GraphProto) -> list[tuple[Any, ...]]:
    """Return each node's op type, attributes and input dtypes and shapes, in graph order.

    Two graphs with equal signatures run the same kernels on the same tensor
    shapes; only names and initializer values may differ.
    """
    initializers = {tensor.name: (tensor.data_type, tuple(tensor.dims)) for tensor in graph.initializer}
    signature = []
    for node in graph.node:
        attributes = tuple(sorted((attribute.name, str(onnx.helper.get_attribute_value(attribute))) for attribute in node.attribute))
        inputs = tuple(initializers.get(name, "computed") for name in node.input)
        signature.append((node.domain, node.op_type, attributes, inputs))
    return signature


def _relative(abs_diff: float, reference: float) -> float:
    if reference == 0.0:
        return 0.0 if abs_diff == 0.0 else float("inf")
    return abs_diff / reference


def _record_fx_values(graph_module: torch.fx.GraphModule, batch: np.ndarray) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                # A copy: a later in-place op (ReLU(inplace=True)) would change the array.
                values[n.name] = result.detach().cpu().numpy().copy()
            return result

    with torch.no_grad():
        Recorder(graph_module).run(torch.from_numpy(batch))
    return values


def _matched_outputs(model: onnx.ModelProto, fx_values: dict[str, np.ndarray]) -> list[tuple[onnx.NodeProto, str]]:
    matched = []
    for node in model.graph.node:
        for output in node.output:
            if output in fx_values and fx_values[output].dtype in NUMPY_TO_ONNX:
                matched.append((node, output))
    return matched


def _diverges(actual: np.ndarray, expected: np.ndarray, max_rel_diff: float, min_within_pct: float) -> bool:
    if actual.shape != expected.shape:
        return True
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if np.issubdtype(expected.dtype, np.integer):
        within_pct = 100.0 * np.count_nonzero(diff <= 1) / diff.size if diff.size else 100.0
        return within_pct < min_within_pct
    reference = float(np.abs(expected).max(initial=0.0))
    return _relative(float(diff.max(initial=0.0)), reference) > max_rel_diff


def _compare_tensor(node: onnx.NodeProto, tensor_name: str, actual: np.ndarray, expected: np.ndarray) -> Divergence:
    if actual.shape == expected.shape:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        max_abs = float(diff.max(initial=0.0))
    else:
        max_abs = float("inf")
    reference = float(np.abs(expected).max(initial=0.0))
    return Divergence(
        onnx_node=node.name,
        op_type=node.op_type,
        fx_node=tensor_name,
        max_abs_diff=max_abs,
        max_rel_diff=_relative(max_abs, reference),
        onnx_stats=_stats(actual),
        torch_stats=_stats(expected),
    )


def _stats(values: np.ndarray) -> str:
    if values.size == 0:
        return f"shape={list(values.shape)} (empty)"
    as_float = values.astype(np.float64)
    return (
        f"shape={list(values.shape)} min={as_float.min():.4g} max={as_float.max():.4g} "
        f"mean={as_float.mean():.4g} std={as_float.std():.4g}"
    )
