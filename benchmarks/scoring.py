"""Logits of PyTorch and onnxruntime models over a data set, and their scores.

Scores: top-1 accuracy against labels, top-1 agreement with the fp32
model, and the SQNR of the logits against fp32 (stages.evaluation.sqnr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.evaluation.sqnr import finite_or_none, sqnr_db


def torch_logits(model: torch.nn.Module, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
            outputs.append(model(batch).float().numpy())
    return np.concatenate(outputs)


def ort_logits(path: Path, inputs: np.ndarray, batch_size: int, threads: int) -> np.ndarray:
    """Run an ONNX model over ``inputs``; a model with a fixed batch dimension gets batches of that size."""
    from stages.profiling.onnx_timing import create_session

    session = create_session(path, threads)
    value = session.get_inputs()[0]
    fixed = value.shape[0] if isinstance(value.shape[0], int) else None
    step = fixed or batch_size
    outputs = []
    for start in range(0, len(inputs), step):
        batch = np.ascontiguousarray(inputs[start : start + step], dtype=np.float32)
        if fixed is not None and len(batch) < fixed:
            padding = np.zeros((fixed - len(batch), *batch.shape[1:]), dtype=np.float32)
            outputs.append(session.run(None, {value.name: np.concatenate([batch, padding])})[0][: len(batch)])
        else:
            outputs.append(session.run(None, {value.name: batch})[0])
    return np.concatenate(outputs)


def score(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Return top-1 (when labelled), top-1 agreement with ``reference`` and logit SQNR, in % and dB."""
    predicted = logits.argmax(axis=1)
    reference64 = reference.astype(np.float64)
    noise = float(np.sum((reference64 - logits.astype(np.float64)) ** 2))
    result: dict[str, Any] = {
        "agreement": round(100.0 * float(np.mean(predicted == reference.argmax(axis=1))), 2),
        # None when the logits match exactly (an infinite SQNR).
        "sqnr_db": finite_or_none(sqnr_db(float(np.sum(reference64**2)), noise), 2),
    }
    if labels is not None:
        result["top1"] = round(100.0 * float(np.mean(predicted == labels)), 2)
    return result


def better(candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Order scores by top-1 (when labelled), then agreement, then SQNR."""
    if best is None:
        return True
    keys = ("top1", "agreement", "sqnr_db") if "top1" in candidate else ("agreement", "sqnr_db")
    return tuple(_finite(candidate[key]) for key in keys) > tuple(_finite(best[key]) for key in keys)


def _finite(value: float | None) -> float:
    return float("inf") if value is None else value
