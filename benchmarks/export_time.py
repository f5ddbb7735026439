"""ONNX export time: our export against torch.onnx.export of the same fp32 model.

Ours is timed twice: the fx-to-ONNX emitter alone, and the whole export
stage (emitter, onnx.checker with full_check, onnxruntime parity on the
data set's samples, writing the files). torch.onnx.export is the
TorchScript exporter (``dynamo=False``), because the dynamo exporter needs
onnxscript, which is not installed.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.environment import time_call
from benchmarks.workspace import ExampleRun

OPSET = 17


def export_time(run: ExampleRun, repeats: int) -> dict[str, Any]:
    """Return the seconds of our emitter, our export stage and torch.onnx.export on the example's fp32 model.

    The emitter and torch.onnx.export are each the fastest of ``repeats``
    calls, so one-time imports and first-call set-up do not count against
    either side.
    """
    from pipeline.schema import fill_defaults, load_schema, stage_schema_path
    from stages.artifacts import load_meta, load_model
    from stages.onnx.emitter import export_graph_module
    from stages.onnx.exporter import ExportRequest, export_onnx

    model_dir = run.artifact("trace", "fp32_model")
    graph_module = load_model(model_dir, run.folder)
    example = torch.randn(load_meta(model_dir)["input_shape"], generator=torch.Generator().manual_seed(0))
    params = fill_defaults(load_schema(stage_schema_path("export")), {"format": "onnx", "precision": "fp32"})

    emitter_seconds = fastest(lambda: export_graph_module(graph_module, example, OPSET, False, "benchmark"), repeats)
    with tempfile.TemporaryDirectory(prefix="pipe-export-benchmark-") as folder:
        request = ExportRequest(
            stage_name="benchmark", model_dir=model_dir, output_dir=Path(folder), root=run.folder, precision="fp32",
            opset=OPSET, dynamic_batch=False, samples=params["samples"], max_rel_diff=params["max_rel_diff"],
            min_within_one_step_pct=params["min_within_one_step_pct"], published_path="benchmark.onnx",
        )
        # Once: its onnxruntime parity check dominates and varies little.
        stage_seconds = fastest(lambda: export_onnx(request), 1)

    def torch_export() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph_module, (example,), io.BytesIO(), dynamo=False, opset_version=OPSET)

    torch_seconds = fastest(torch_export, repeats)
    return {
        "ours, emitter": {"seconds": round(emitter_seconds, 3), "ratio": round(emitter_seconds / torch_seconds, 2)},
        "ours, export stage (with checker and parity)": {"seconds": round(stage_seconds, 3), "ratio": round(stage_seconds / torch_seconds, 2)},
        "torch.onnx.export (TorchScript)": {"seconds": round(torch_seconds, 3), "ratio": 1.0},
    }


def fastest(function: Callable[[], Any], repeats: int) -> float:
    return min(time_call(function)[0] for _ in range(repeats))
