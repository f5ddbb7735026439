from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import save_model
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig

RANDOM_DATA = {"source": "random", "kwargs": {"shape": [100, 1, 6, 6]}, "batch_size": 16, "seed": 3}


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def _observed(tmp_path: Path, observer: str) -> Path:
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Small().eval())
    params = {"activation_observer": observer, "percentile": 99.0, "weight_observer": "minmax", "activation_dtype": "uint8", "per_channel": True, "skip": []}
    observed, _ = insert_observers(gm, build_qconfig(gm, [1, 1, 6, 6], params))
    folder = tmp_path / "observed_model"
    folder.mkdir()
    save_model(observed, folder, {"input_shape": [1, 1, 6, 6]})
    return folder


def _context(tmp_path: Path, params: dict[str, Any], ticks: list[tuple[str, int, int]]) -> StageContext:
    def progress(description: str, total: int):
        return lambda n: ticks.append((description, total, n))

    (tmp_path / "calibration").mkdir()
    return StageContext(
        stage_name="calibrate",
        kind="calibrate",
        params=fill_defaults(load_schema(stage_schema_path("calibrate")), {"data": "calib", **params}),
        config={"data": RANDOM_DATA},
        inputs={"observed_model": tmp_path / "observed_model"},
        outputs={"calibration": tmp_path / "calibration"},
        root=tmp_path,
        output_dir=tmp_path / "out",
        progress_factory=progress,
    )


def test_calibrate_writes_statistics(tmp_path: Path) -> None:
    _observed(tmp_path, "minmax")
    ticks: list[tuple[str, int, int]] = []
    result = load_stage("calibrate").run(_context(tmp_path, {}, ticks))

    assert ticks == [("calibrate", 7, 1)] * 7
    assert result.metrics == {"batches": 7, "samples": 100, "observers": 3}
    stats = torch.load(tmp_path / "calibration" / "calibration.pt", weights_only=True)
    assert set(stats["observers"]) == {"observer_x", "observer_relu", "observer_fc"}

    table = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    data = np.random.default_rng(3).standard_normal((100, 1, 6, 6), dtype=np.float32)
    entry = table["values"]["x"]
    assert entry["min"] == pytest.approx(float(data.min()))
    assert entry["max"] == pytest.approx(float(data.max()))
    assert entry["observer"] == "minmax"
    assert entry["dtype"] == "uint8"
    assert entry["scale"] == pytest.approx((entry["max"] - entry["min"]) / 255, rel=1e-6)
    assert table["values"]["relu"]["min"] == 0.0


def test_calibrate_max_batches_and_histograms(tmp_path: Path) -> None:
    _observed(tmp_path, "percentile")
    ticks: list[tuple[str, int, int]] = []
    result = load_stage("calibrate").run(_context(tmp_path, {"max_batches": 2}, ticks))

    assert result.metrics["batches"] == 2
    assert result.metrics["samples"] == 32
    assert len(ticks) == 2
    stats = torch.load(tmp_path / "calibration" / "calibration.pt", weights_only=True)
    counts = stats["observers"]["observer_x"]["hist_counts"]
    assert counts.sum() == 32 * 36
    table = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    assert table["values"]["x"]["clip_max"] < table["values"]["x"]["max"]


def test_calibrate_reports_bad_data(tmp_path: Path) -> None:
    _observed(tmp_path, "minmax")
    ctx = _context(tmp_path, {}, [])
    ctx.config = {"data": {**RANDOM_DATA, "kwargs": {"shape": [10, 3, 6, 6]}}}
    with pytest.raises(StageError, match="calibration on data set .* failed"):
        load_stage("calibrate").run(ctx)
