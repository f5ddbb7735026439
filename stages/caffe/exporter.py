"""Export an fp32 model artifact to Caffe and gate it on parity with pycaffe.

The export stage calls :func:`export_caffe`. It checks that Caffe imports,
loads the GraphModule, optionally folds BatchNorm into the convolutions and
emits the net. An unsupported op stops the export there, before any file
exists. Then it writes the ``.prototxt`` and ``.caffemodel`` to a temporary
folder, runs them in a pycaffe subprocess on data set inputs (or seeded
random inputs) and compares the outputs with PyTorch's. Only when the parity gate passes are the model, the
input contract and (with a calibration artifact) the calibration table
written to the artifact folder.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.errors import StageError, StageFailed
from stages.artifacts import load_meta, load_model, write_json
from stages.caffe.calibration import build_table
from stages.caffe.emitter import CaffeGraph, EmitError, build_net, output_blobs
from stages.caffe.parity import (
    CaffeCrash,
    chunk_inputs,
    compare_outputs,
    find_divergence,
    probe_caffe,
    record_fx_values,
    run_caffe,
    run_torch,
)
from stages.caffe.proto import CaffeMissing

log = logging.getLogger(__name__)

PROTOTXT_FILE = "model.prototxt"
MODEL_FILE = "model.caffemodel"
CONTRACT_FILE = "input_contract.json"
CALIBRATION_FILE = "calibration_table.json"
CONTRACT_VERSION = 1
# Seeds of the example input for the shape pass and of random parity inputs (as the ONNX export).
EXAMPLE_SEED = 0
RANDOM_INPUT_SEED = 1


@dataclass
class CaffeExportRequest:
    """Settings of one Caffe export, taken from the stage's params and context."""

    stage_name: str
    model_dir: Path
    output_dir: Path
    root: Path
    samples: int
    max_rel_diff: float
    fold_batchnorm: bool
    published_path: str
    dataset_name: str | None = None
    dataset_spec: Mapping[str, Any] | None = None
    calibration_dir: Path | None = None


def export_caffe(request: CaffeExportRequest) -> tuple[dict[str, Any], str]:
    """Export, check and write the model; return the metrics and the message.

    Raises:
        StageError: Caffe is missing, the model has an op without a Caffe
            mapping, or the Caffe process crashed.
        StageFailed: the parity gate failed; nothing is written.
    """
    try:
        probe_caffe()
    except CaffeMissing as exc:
        raise StageError(str(exc)) from exc

    graph_module = load_model(request.model_dir, request.root)
    meta = load_meta(request.model_dir)
    input_shape = list(meta["input_shape"])
    emitted, blob_names = _prepare(graph_module, request.fold_batchnorm)

    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    try:
        graph = build_net(emitted, example, request.stage_name, blob_names, meta.get("source"))
    except EmitError as exc:
        raise StageError(str(exc)) from exc

    batch_size = input_shape[0]
    samples = _parity_inputs(request, input_shape)
    inputs = chunk_inputs(samples, batch_size)
    outputs = output_blobs(graph)
    with tempfile.TemporaryDirectory(prefix="caffe-export-") as folder:
        work = Path(folder)
        prototxt, caffemodel = write_net(graph, work)
        try:
            results = run_caffe(prototxt, caffemodel, inputs, outputs)
            comparison = compare_outputs([results[name] for name in outputs], run_torch(graph_module, inputs, batch_size), batch_size)
            metrics: dict[str, Any] = {
                "path": request.published_path,
                "format": "caffe",
                "precision": "fp32",
                "samples": len(samples),
                "layers": len(graph.net.layer),
                "max_abs_diff": comparison.max_abs_diff,
                "max_rel_diff": comparison.max_rel_diff,
            }
            passed = comparison.max_rel_diff <= request.max_rel_diff
            metrics["passed"] = passed
            sign = "<=" if passed else ">"
            verdict = f"max_rel_diff={comparison.max_rel_diff:.3g} ({sign} {request.max_rel_diff:g}) in pycaffe"
            if not passed:
                start = comparison.worst_batch * batch_size
                batch = inputs[start : start + batch_size]
                blobs = run_caffe(prototxt, caffemodel, batch, all_blobs=True)
                divergence = find_divergence(
                    blobs,
                    record_fx_values(emitted, batch),
                    graph.values,
                    graph.producers,
                    [layer.name for layer in graph.net.layer],
                    request.max_rel_diff,
                )
                detail = divergence.describe() if divergence is not None else "no blob matches an fx node"
                raise StageFailed(f"accuracy test failed: {verdict}; {detail}", metrics)
        except CaffeMissing as exc:
            raise StageError(str(exc)) from exc
        except CaffeCrash as exc:
            raise StageError(f"pycaffe failed on the exported model: {exc}") from exc

        shutil.copyfile(prototxt, request.output_dir / PROTOTXT_FILE)
        shutil.copyfile(caffemodel, request.output_dir / MODEL_FILE)

    write_json(request.output_dir / CONTRACT_FILE, build_contract(graph, request.dataset_spec))
    if request.calibration_dir is not None:
        table = build_table(graph, request.calibration_dir)
        write_json(request.output_dir / CALIBRATION_FILE, table)
        metrics["calibrated_blobs"] = len(table["activations"])
        metrics["calibrated_layers"] = len(table["weights"])
    return metrics, f"accuracy test passed: {verdict}"


def _prepare(graph_module: torch.fx.GraphModule, fold: bool) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """Return the GraphModule to emit and its blob names (a folded conv's blob takes the BatchNorm's name)."""
    if not fold:
        return graph_module, {}
    from stages.quant.fold import fold_batchnorm

    folded, absorbed = fold_batchnorm(graph_module)
    return folded, absorbed


def write_net(graph: CaffeGraph, folder: Path) -> tuple[Path, Path]:
    """Write ``model.prototxt`` (layers without weights) and ``model.caffemodel`` into ``folder``."""
    from google.protobuf import text_format

    definition = copy.deepcopy(graph.net)
    for layer in definition.layer:
        del layer.blobs[:]
    prototxt = folder / PROTOTXT_FILE
    caffemodel = folder / MODEL_FILE
    prototxt.write_text(text_format.MessageToString(definition))
    caffemodel.write_bytes(graph.net.SerializeToString())
    return prototxt, caffemodel


def build_contract(graph: CaffeGraph, dataset_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Describe the net's input and output blobs and the data set's preprocessing."""
    from stages.onnx.contract import LAYOUT, SOURCE_SCALES

    nodes = list(graph.graph_module.graph.nodes)
    placeholder = next(node for node in nodes if node.op == "placeholder")
    input_shape = graph.shape(placeholder)
    output_node = nodes[-1]
    results = output_node.args[0]
    results = [results] if isinstance(results, torch.fx.Node) else list(results)

    preprocessing = None
    if dataset_spec is not None:
        source = str(dataset_spec["source"])
        preprocessing = {
            "source": source,
            "scale": SOURCE_SCALES.get(source),
            "mean": dataset_spec.get("mean"),
            "std": dataset_spec.get("std"),
            "resize": dataset_spec.get("resize"),
            "image_size": dataset_spec.get("image_size"),
        }
    return {
        "format_version": CONTRACT_VERSION,
        "format": "caffe",
        "precision": "fp32",
        "inputs": [{"name": graph.values[placeholder.name], "shape": input_shape, "dtype": "float32", "layout": LAYOUT}],
        "outputs": [{"name": graph.bottom(result), "shape": graph.shape(result), "dtype": "float32"} for result in results],
        "preprocessing": preprocessing,
    }


def _parity_inputs(request: CaffeExportRequest, input_shape: list[int]) -> np.ndarray:
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
