"""Export a model artifact to ONNX and gate it on parity with onnxruntime.

The export stage calls :func:`export_onnx`; it loads the GraphModule, emits
and checks the ONNX model, compares onnxruntime with the GraphModule on data
set inputs (or seeded random inputs), and writes ``model.onnx`` and
``input_contract.json`` only when the parity gate passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnx.checker
import onnx.shape_inference
import torch

from pipeline.errors import StageError, StageFailed
from stages.artifacts import load_meta, load_model, write_json
from stages.onnx.contract import build_input_contract
from stages.onnx.emitter import EmitError, export_graph_module
from stages.onnx.parity import chunk_inputs, compare_outputs, count_int8_kernels, create_session, find_divergence

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONTRACT_FILE = "input_contract.json"
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


def export_onnx(request: ExportRequest) -> tuple[dict[str, Any], str]:
    """Export, check and write the model; return the metrics and the message.

    Raises:
        StageError: the model cannot be exported or the inputs do not fit.
        StageFailed: the parity gate failed; nothing is written.
    """
    graph_module = load_model(request.model_dir, request.root)
    input_shape = list(load_meta(request.model_dir)["input_shape"])

    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    try:
        model = export_graph_module(graph_module, example, request.opset, request.dynamic_batch, request.stage_name)
    except EmitError as exc:
        raise StageError(f"stage '{request.stage_name}': {exc}") from exc
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        detail = " ".join(str(exc).split())
        raise StageError(f"stage '{request.stage_name}': the emitted ONNX model is invalid: {detail}") from exc

    inputs = _parity_inputs(request, input_shape)
    batches = chunk_inputs(inputs, None if request.dynamic_batch else input_shape[0])
    session = create_session(model)
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
        int8_kernels, _ = count_int8_kernels(model, request.output_dir)
        metrics["int8_kernels"] = int8_kernels
        metrics["within_one_step_pct"] = comparison.within_one_step_pct

    passed, verdict = _gate(request, comparison.max_rel_diff, comparison.within_one_step_pct)
    metrics["passed"] = passed
    if not passed:
        divergence = find_divergence(
            model,
            graph_module,
            batches[comparison.worst_batch],
            request.max_rel_diff,
            request.min_within_one_step_pct,
        )
        where = divergence.describe() if divergence is not None else "no intermediate tensor matches an fx node"
        raise StageFailed(f"accuracy test failed: {verdict}; {where}", metrics)

    onnx.save(model, str(request.output_dir / MODEL_FILE))
    contract = build_input_contract(model, request.precision, request.dataset_spec)
    write_json(request.output_dir / CONTRACT_FILE, contract)
    return metrics, f"accuracy test passed: {verdict}"


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
            f"stage '{request.stage_name}': data set '{request.dataset_name}' has samples of shape "
            f"{list(dataset.sample_shape)}, the model expects {input_shape[1:]} (model.input_shape without the batch); "
            f"set image_size or choose a matching data set"
        )
    if len(dataset) == 0:
        raise StageError(f"stage '{request.stage_name}': data set '{request.dataset_name}' is empty")
    return np.ascontiguousarray(dataset.inputs[: request.samples], dtype=np.float32)
