"""Export a model artifact to ONNX and gate it on parity with onnxruntime.

The export stage calls :func:`export_onnx`; it loads the GraphModule, emits
the ONNX model with its input contract in ``metadata_props``, writes it
(with an external data file when the proto would pass 2 GB), checks it,
compares onnxruntime with the GraphModule on data set inputs (or seeded
random inputs), and keeps ``model.onnx`` and ``input_contract.json`` only
when the parity gate passes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.shape_inference
import torch

from pipeline.errors import StageError, StageFailed
from stages.artifacts import load_meta, load_model, write_json
from stages.export import op_counts
from stages.onnx.contract import build_input_contract
from stages.onnx.emitter import EmitError, export_graph_module
from stages.onnx.parity import (
    chunk_inputs,
    compare_outputs,
    count_int8_kernels,
    create_session,
    find_divergence,
    float_compute_nodes,
    other_float_ops,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONTRACT_FILE = "input_contract.json"
CONTRACT_METADATA_KEY = "input_contract"
# protobuf's limit on one serialized message (2 GB).
PROTO_SIZE_LIMIT = 2**31 - 1
# Seeds of the example input for the shape pass and of random parity inputs.
EXAMPLE_SEED = 0
RANDOM_INPUT_SEED = 1


@dataclass
class ExportRequest:
    """What one export stage run needs, taken from its params and context."""

    stage_name: str
    model_dir: Path
    output_dir: Path
    root: Path
    precision: str
    opset: int
    dynamic_batch: bool
    samples: int
    max_rel_diff: float
    min_within_one_step_pct: float
    published_path: str
    dataset_name: str | None = None
    dataset_spec: Mapping[str, Any] | None = None
    # Serialized size above which weights go to an external data file (None: PROTO_SIZE_LIMIT).
    external_data_threshold: int | None = None


def export_onnx(request: ExportRequest) -> tuple[dict[str, Any], str]:
    """Export, check and write the model; return the metrics and the message.

    Raises:
        StageError: the model cannot be exported or the inputs do not fit.
        StageFailed: the parity gate failed; nothing is kept.
    """
    graph_module = load_model(request.model_dir, request.root)
    input_shape = list(load_meta(request.model_dir)["input_shape"])

    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    try:
        model = export_graph_module(graph_module, example, request.opset, request.dynamic_batch, request.stage_name)
    except EmitError as exc:
        raise StageError(str(exc)) from exc
    contract = build_input_contract(model, request.precision, request.dataset_spec)
    attach_contract(model, contract)

    model_path = request.output_dir / MODEL_FILE
    data_name = f"{PurePosixPath(request.published_path).name}.data"
    external = save_onnx(model, model_path, data_name, request.external_data_threshold)
    try:
        metrics, message = _check_and_compare(request, graph_module, model, model_path, input_shape)
    except Exception:
        model_path.unlink(missing_ok=True)
        if external is not None:
            (request.output_dir / external).unlink(missing_ok=True)
        raise
    if external is not None:
        metrics["external_data"] = external
    write_json(request.output_dir / CONTRACT_FILE, contract)
    return metrics, message


def save_onnx(model: onnx.ModelProto, path: Path, data_name: str, threshold: int | None = None) -> str | None:
    """Write the model; return the external data file's name, or None when it fits one proto.

    A protobuf message cannot exceed 2 GB, so above ``threshold`` bytes every
    initializer goes to ``data_name`` beside the model file. ``threshold``
    defaults to PROTO_SIZE_LIMIT.
    """
    threshold = PROTO_SIZE_LIMIT if threshold is None else threshold
    if model.ByteSize() <= threshold:
        onnx.save_model(model, str(path))
        return None
    (path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)
    # Saving moved the weights out of the proto; put them back for the divergence search.
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    log.info("saved %s with external data %s (%d bytes > %d)", path.name, data_name, model.ByteSize(), threshold)
    return data_name


def attach_contract(model: onnx.ModelProto, contract: Mapping[str, Any]) -> None:
    """Store the input contract as JSON in the model's metadata_props (key ``input_contract``)."""
    entry = model.metadata_props.add()
    entry.key = CONTRACT_METADATA_KEY
    entry.value = json.dumps(contract, sort_keys=True)


def _check_and_compare(
    request: ExportRequest,
    graph_module: torch.fx.GraphModule,
    model: onnx.ModelProto,
    model_path: Path,
    input_shape: list[int],
) -> tuple[dict[str, Any], str]:
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        detail = " ".join(str(exc).split())
        raise StageError(f"the emitted ONNX model is invalid: {detail}") from exc

    inputs = _parity_inputs(request, input_shape)
    batches = chunk_inputs(inputs, None if request.dynamic_batch else input_shape[0])
    session = create_session(model_path)
    output_steps = output_quantization_steps(graph_module) if request.precision == "int8" else None
    comparison = compare_outputs(session, graph_module, batches, output_steps)

    metrics: dict[str, Any] = {
        "path": request.published_path,
        "format": "onnx",
        "precision": request.precision,
        "opset": request.opset,
        "samples": comparison.samples,
        "max_abs_diff": comparison.max_abs_diff,
        "max_rel_diff": comparison.max_rel_diff,
    }
    if request.precision == "int8":
        int8_kernels, histogram = count_int8_kernels(model_path, request.output_dir)
        metrics["int8_kernels"] = int8_kernels
        metrics["float_compute_nodes"] = float_compute_nodes(histogram)
        metrics["float_ops"] = other_float_ops(histogram)
        metrics["within_one_step_pct"] = comparison.within_one_step_pct

    passed, verdict = _gate(request, comparison.max_rel_diff, comparison.within_one_step_pct)
    metrics["passed"] = passed
    if not passed:
        # NOTE: the divergence search copies the proto, so it needs a model under 2 GB.
        divergence = find_divergence(
            model,
            graph_module,
            batches[comparison.worst_batch],
            request.max_rel_diff,
            request.min_within_one_step_pct,
        )
        where = divergence.describe() if divergence is not None else "no intermediate tensor matches an fx node"
        raise StageFailed(f"accuracy test failed: {verdict}; {where}", metrics)
    message = f"accuracy test passed: {verdict}"
    if request.precision == "int8":
        message += (
            f"; onnxruntime's optimized graph runs {metrics['int8_kernels']} int8 kernels "
            f"({metrics['float_compute_nodes']} Conv, Gemm, MatMul or Add left in float; other float ops: {op_counts(metrics['float_ops'])})"
        )
    return metrics, message


def output_quantization_steps(graph_module: torch.fx.GraphModule) -> list[float] | None:
    """Return each output's quantization scale, from the node that feeds its final Dequantize.

    Returns None when an output is not produced by a Dequantize module
    (a float fallback at the end of the model).
    """
    from stages.quant.modules import Dequantize

    output_node = next(node for node in graph_module.graph.nodes if node.op == "output")
    results = output_node.args[0]
    results = results if isinstance(results, (list, tuple)) else [results]
    qparams = getattr(graph_module, "qparams", {}) or {}

    steps = []
    for result in results:
        if not (isinstance(result, torch.fx.Node) and result.op == "call_module"):
            return None
        module = graph_module.get_submodule(result.target)
        if not isinstance(module, Dequantize):
            return None
        feeder = result.args[0]
        if isinstance(feeder, torch.fx.Node) and feeder.name in qparams:
            steps.append(float(qparams[feeder.name]["scale"]))
        else:
            steps.append(float(module.qparams.scale))
    return steps


def _gate(request: ExportRequest, max_rel_diff: float, within_pct: float | None) -> tuple[bool, str]:
    if request.precision == "int8" and within_pct is not None:
        passed = within_pct >= request.min_within_one_step_pct
        sign = ">=" if passed else "<"
        return passed, f"within_one_step_pct={within_pct:.3f} ({sign} {request.min_within_one_step_pct})"

    # NOTE: an int8 model whose output is not dequantized from an int8 module
    # has no output step, so it is gated on max_rel_diff like an fp32 model.
    passed = max_rel_diff <= request.max_rel_diff
    sign = "<=" if passed else ">"
    return passed, f"max_rel_diff={max_rel_diff:.3g} ({sign} {request.max_rel_diff:g})"


def _parity_inputs(request: ExportRequest, input_shape: list[int]) -> np.ndarray:
    """Return the first ``samples`` data set inputs, or seeded normal random inputs."""
    if request.dataset_spec is None:
        rng = np.random.default_rng(RANDOM_INPUT_SEED)
        return rng.standard_normal([request.samples, *input_shape[1:]]).astype(np.float32)

    from stages.data import load_dataset

    dataset = load_dataset(request.dataset_spec, request.root, request.dataset_name)
    if list(dataset.sample_shape) != input_shape[1:]:
        raise StageError(
            f"data set '{request.dataset_name}' has samples of shape "
            f"{list(dataset.sample_shape)}, the model expects {input_shape[1:]} (model.input_shape without the batch); "
            f"set image_size or choose a matching data set"
        )
    if len(dataset) == 0:
        raise StageError(f"data set '{request.dataset_name}' is empty")
    return np.ascontiguousarray(dataset.inputs[: request.samples], dtype=np.float32)
