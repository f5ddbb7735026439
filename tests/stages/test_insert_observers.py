from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import load_meta, load_model, save_model
from stages.quant.observers import Observer


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def _context(tmp_path: Path, kind: str, inputs: dict[str, Path], output: str) -> StageContext:
    (tmp_path / output).mkdir()
    return StageContext(
        stage_name=kind,
        kind=kind,
        params=fill_defaults(load_schema(stage_schema_path(kind)), {}),
        config={},
        inputs=inputs,
        outputs={output: tmp_path / output},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )


def _fp32(tmp_path: Path, model: nn.Module) -> Path:
    folder = tmp_path / "fp32_model"
    folder.mkdir()
    save_model(fx.symbolic_trace(model.eval()), folder, {"input_shape": [1, 1, 6, 6]})
    return folder


def test_insert_observers_stage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fp32 = _fp32(tmp_path, Small())
    load_stage("prepare-qconfig").run(_context(tmp_path, "prepare-qconfig", {"fp32_model": fp32}, "qconfig"))
    ctx = _context(tmp_path, "insert-observers", {"fp32_model": fp32, "qconfig": tmp_path / "qconfig"}, "observed_model")
    result = load_stage("insert-observers").run(ctx)

    observed = load_model(tmp_path / "observed_model")
    observers = [module for module in observed.modules() if isinstance(module, Observer)]
    assert [observer.value_name for observer in observers] == ["x", "relu", "fc"]
    assert observed.value_names["conv"] == "bn"
    assert observed.quant_plan["conv"]["relu"] == "relu"
    assert load_meta(tmp_path / "observed_model")["input_shape"] == [1, 1, 6, 6]
    assert result.metrics == {"observers": 3, "folded_batchnorms": 1, "fused_relus": 1, "quantized_nodes": 2}
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(observed(x), load_model(fp32)(x), atol=1e-5)


def test_insert_observers_rejects_foreign_qconfig(tmp_path: Path) -> None:
    fp32 = _fp32(tmp_path, Small())
    (tmp_path / "qconfig").mkdir()
    (tmp_path / "qconfig" / "qconfig.json").write_text(json.dumps({"format_version": 1, "activation": {}, "nodes": {"y": {}}}))
    ctx = _context(tmp_path, "insert-observers", {"fp32_model": fp32, "qconfig": tmp_path / "qconfig"}, "observed_model")
    with pytest.raises(StageError, match="qconfig nodes do not match"):
        load_stage("insert-observers").run(ctx)
