"""Calibration: run data through an observed GraphModule and export observer statistics.

The calibration artifact holds ``calibration.pt`` (observer module name ->
statistics tensors, loadable with ``torch.load(weights_only=True)``) and
``calibration.json``, one entry per observed fp32 value with its min, max,
clip range and qparams, for readers that do not load torch (a Caffe
calibration table, a report).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx

from stages.quant.arithmetic import qparams_from_range
from stages.quant.observers import Observer

FORMAT_VERSION = 1
STATS_FILE = "calibration.pt"
TABLE_FILE = "calibration.json"


@dataclass
class CalibrationSummary:
    """Counts reported by the calibrate stage."""

    batches: int
    samples: int
    observers: int


def observers_of(gm: fx.GraphModule) -> dict[str, Observer]:
    return {name: module for name, module in gm.named_modules() if isinstance(module, Observer)}


def calibrate(
    observed: fx.GraphModule,
    batches: Iterable[torch.Tensor],
    max_batches: int | None = None,
    tick: Callable[[int], None] | None = None,
) -> CalibrationSummary:
    """Run ``batches`` through ``observed`` so its observers accumulate statistics."""
    observed.eval()
    count = 0
    samples = 0
    with torch.no_grad():
        for inputs in batches:
            if max_batches is not None and count >= max_batches:
                break
            observed(inputs)
            count += 1
            samples += int(inputs.shape[0])
            if tick is not None:
                tick(1)
    if count == 0:
        raise ValueError("calibration got no batches; check the data set and max_batches")
    return CalibrationSummary(batches=count, samples=samples, observers=len(observers_of(observed)))


def collect_stats(observed: fx.GraphModule) -> dict[str, dict[str, torch.Tensor]]:
    """Map each observer module name to its statistics tensors."""
    return {name: observer.stats() for name, observer in observers_of(observed).items()}


def calibration_table(observed: fx.GraphModule) -> dict[str, Any]:
    """One JSON-ready entry per observed fp32 value: min, max, clip range, qparams."""
    values: dict[str, Any] = {}
    for name, observer in observers_of(observed).items():
        # Call clip_range() once, because the entropy and mse searches take time.
        lo, hi = observer.clip_range()
        qparams = qparams_from_range(lo, hi, observer.dtype)
        values[observer.value_name] = {
            "observer_module": name,
            **observer.settings(),
            "min": observer.min_val,
            "max": observer.max_val,
            "clip_min": lo,
            "clip_max": hi,
            "scale": qparams.scale,
            "zero_point": qparams.zero_point,
        }
    return {"format_version": FORMAT_VERSION, "values": values}


def save_stats(stats: dict[str, dict[str, torch.Tensor]], folder: Path) -> None:
    torch.save({"format_version": FORMAT_VERSION, "observers": stats}, folder / STATS_FILE)


def load_stats(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    data = torch.load(folder / STATS_FILE, weights_only=True)
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder / STATS_FILE} has format version {data.get('format_version')!r}, expected {FORMAT_VERSION}; rerun calibrate"
        )
    return data["observers"]
