"""Calibration cost per observer against a plain fp32 forward pass over the same batches.

The fp32 model is traced with the trace stage's functions; each observer
gets the prepare-qconfig and insert-observers stages' functions with
default params except ``activation_observer``. Timed: what the calibrate
stage computes, ``calibrate()`` (the forward passes through the observed
model) plus ``calibration_table()`` (the clip-range search of histogram
observers), without the data loading and artifact writing both share. Each
observer's time is divided by an fp32 forward timed right before it, so a
change of machine load between observers does not skew the ratios.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.environment import time_call

BATCH_SIZE = 32
# Targets of the calibration-cost ratio (calibrate time / fp32 forward time).
TARGETS = {"minmax": 1.3, "moving_average": 1.3, "percentile": 2.0, "entropy": 2.0, "mse": 2.0}
# --quick times one plain and one histogram observer.
QUICK_OBSERVERS = ("minmax", "percentile")


def qconfig_params(observer: str) -> dict[str, Any]:
    """Return the prepare-qconfig params with schema defaults and ``activation_observer``."""
    from pipeline.schema import fill_defaults, load_schema, stage_schema_path

    return fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {"activation_observer": observer})


def calibration_cost(model_spec: dict[str, Any], data_spec: dict[str, Any], root: Path, quick: bool) -> dict[str, Any]:
    """Return per observer the calibration seconds, the fp32 forward seconds and their ratio."""
    from stages.data import load_dataset
    from stages.quant.calibration import calibrate, calibration_table
    from stages.quant.observe import insert_observers
    from stages.quant.observers import OBSERVERS
    from stages.quant.qconfig import build_qconfig
    from stages.tracing.source import build_model
    from stages.tracing.tracer import trace_model

    fp32 = trace_model(build_model(model_spec, root))
    input_shape = list(model_spec["input_shape"])
    dataset = load_dataset({**data_spec, "batch_size": BATCH_SIZE}, root, "calibration benchmark")
    batches = [torch.from_numpy(np.ascontiguousarray(batch)) for batch, _ in dataset.batches(1 if quick else None)]

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                fp32(batch)

    forward()  # warm-up: first-call allocations and kernel selection
    rows: dict[str, Any] = {}
    for observer in QUICK_OBSERVERS if quick else tuple(OBSERVERS):
        qconfig = build_qconfig(fp32, input_shape, qconfig_params(observer))
        observed, _ = insert_observers(copy.deepcopy(fp32), qconfig)

        forward_seconds, _ = time_call(forward)
        calibrate_seconds, _ = time_call(lambda: (calibrate(observed, iter(batches)), calibration_table(observed)))
        ratio = calibrate_seconds / forward_seconds
        rows[observer] = {
            "calibrate_s": round(calibrate_seconds, 3),
            "fp32_forward_s": round(forward_seconds, 3),
            "ratio": round(ratio, 2),
            "target": TARGETS.get(observer),
            "met": None if observer not in TARGETS else ratio <= TARGETS[observer],
        }
    return {"batches": len(batches), "batch_size": BATCH_SIZE, "samples": sum(len(batch) for batch in batches), "observers": rows}
