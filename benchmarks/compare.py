"""Accuracy and speed of our int8 model against torch.ao FX and onnxruntime quantize_static.

All three quantize the same fp32 model, calibrate on the same data set
(the pipeline's calibrate stage's) and are scored on the same held-out
data set (the evaluate stage's). Our numbers come from the pipeline run:
the evaluate stage's PyTorch int8 model and the int8 ONNX export run in
onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.environment import time_call
from benchmarks.peers import ORT_METHODS, fx_quantize, ort_quantize
from benchmarks.scoring import better, ort_logits, score, torch_logits
from benchmarks.workspace import ExampleRun
from stages.artifacts import load_model
from stages.profiling.onnx_timing import time_onnx_models
from stages.profiling.torch_timing import time_torch

log = logging.getLogger(__name__)

THREADS = 2
WARMUP = 5


def _data_names(run: ExampleRun) -> tuple[str, str]:
    """Return the names of the calibrate stage's and the evaluate stage's data sets."""
    from pipeline.config import load

    stages = load(run.path).stages
    calib = next(stage.params["data"] for stage in stages if stage.kind == "calibrate")
    holdout = next(stage.params["data"] for stage in stages if stage.kind == "evaluate")
    return calib, holdout


def _load_data(run: ExampleRun) -> tuple[Any, Any]:
    from pipeline.config import load
    from stages.data import load_dataset

    document = load(run.path).document
    calib, holdout = _data_names(run)
    return (
        load_dataset(document["data"][calib], run.folder, calib),
        load_dataset(document["data"][holdout], run.folder, holdout),
    )


def _fp32_module(run: ExampleRun) -> torch.nn.Module:
    from pipeline.config import load
    from stages.tracing.source import build_model

    return build_model(load(run.path).document["model"], run.folder).eval()


def compare_example(run: ExampleRun, work_dir: Path, quick: bool) -> dict[str, Any]:
    """Return accuracy rows, speed rows and quantization times for one example pipeline."""
    calib, holdout = _load_data(run)
    labels = holdout.labels
    fp32 = _fp32_module(run)
    fp32_export = run.published("onnx_fp32")
    our_int8_export = run.published("onnx_int8")

    reference = torch_logits(fp32, holdout.inputs, holdout.batch_size)
    evaluate = run.metrics("evaluate")
    accuracy: dict[str, dict[str, Any]] = {"fp32 (PyTorch)": score(reference, reference, labels)}
    accuracy["ours, PyTorch int8 (evaluate stage)"] = {
        key: value
        for key, value in (("top1", evaluate.get("top1_int8")), ("agreement", evaluate.get("top1_agreement")), ("sqnr_db", evaluate.get("sqnr_db")))
        if value is not None
    }
    accuracy["ours, int8 ONNX in onnxruntime"] = score(ort_logits(our_int8_export, holdout.inputs, holdout.batch_size, THREADS), reference, labels)

    calibration_batches = [torch.from_numpy(np.ascontiguousarray(batch)) for batch, _ in calib.batches()]
    example = calibration_batches[0][:1]
    fx_seconds, fx_model = time_call(lambda: fx_quantize(_fp32_module(run), example, calibration_batches))
    accuracy["torch.ao FX (x86 qconfig)"] = score(torch_logits(fx_model, holdout.inputs, holdout.batch_size), reference, labels)

    peer_dir = work_dir / run.name / "peers"
    peer_dir.mkdir(parents=True, exist_ok=True)
    samples = [calib.inputs[index : index + 1] for index in range(len(calib.inputs))]
    best: dict[str, Any] | None = None
    best_path: Path | None = None
    ort_seconds: dict[str, float] = {}
    for method in ORT_METHODS[:1] if quick else ORT_METHODS:
        path = peer_dir / f"quantize_static_{method.lower()}.onnx"
        seconds, _ = time_call(lambda: ort_quantize(fp32_export, path, samples, method))
        ort_seconds[method] = round(seconds, 2)
        result = score(ort_logits(path, holdout.inputs, holdout.batch_size, THREADS), reference, labels)
        result["method"] = method
        log.info("benchmark %s: quantize_static %s: %s", run.name, method, result)
        if better(result, best):
            best, best_path = result, path
    assert best is not None and best_path is not None
    accuracy[f"onnxruntime quantize_static (best: {best['method']})"] = {key: value for key, value in best.items() if key != "method"}

    repeats = 20 if quick else 100
    timing = (THREADS, WARMUP, repeats)
    onnx_exports = {
        "onnxruntime fp32 (our export)": fp32_export,
        "onnxruntime int8 (ours)": our_int8_export,
        f"onnxruntime int8 (quantize_static {best['method']})": best_path,
    }
    speed = {
        **time_onnx_models(onnx_exports, 1, *timing),
        "PyTorch fp32": time_torch(fp32, list(example.shape), *timing),
        "PyTorch int8 (torch.ao FX, x86)": time_torch(fx_model, list(example.shape), *timing),
    }
    return {
        "samples": len(holdout.inputs),
        "calibration_samples": len(calib.inputs),
        "accuracy": accuracy,
        "speed_ms": {name: {"median": latency.median_ms, "p10": latency.p10_ms, "p90": latency.p90_ms} for name, latency in speed.items()},
        "quantize_seconds": {"torch.ao FX": round(fx_seconds, 2), **{f"quantize_static {m}": s for m, s in ort_seconds.items()}},
    }
