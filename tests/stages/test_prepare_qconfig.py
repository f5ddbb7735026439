from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import fx, nn

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import save_model


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.tanh(self.relu(self.bn(self.conv(x)))), 1))


def _context(tmp_path: Path, params: dict[str, Any]) -> StageContext:
    fp32 = tmp_path / "fp32_model"
    fp32.mkdir()
    torch.manual_seed(0)
    save_model(fx.symbolic_trace(Small().eval()), fp32, {"input_shape": [1, 1, 6, 6]})
    (tmp_path / "qconfig").mkdir()
    return StageContext(
        stage_name="qconfig",
        kind="prepare-qconfig",
        params=fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), params),
        config={},
        inputs={"fp32_model": fp32},
        outputs={"qconfig": tmp_path / "qconfig"},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )


def test_prepare_qconfig_defaults(tmp_path: Path) -> None:
    result = load_stage("prepare-qconfig").run(_context(tmp_path, {}))
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())

    assert qconfig["activation"] == {"observer": "minmax", "dtype": "uint8"}
    assert qconfig["weight"] == {"observer": "minmax", "dtype": "int8", "per_channel": True}
    conv = qconfig["nodes"]["conv"]
    assert conv["op_type"] == "Conv2d"
    assert conv["target"] == "conv"
    assert conv["pattern"] == "conv"
    assert conv["quantize"] is True
    assert conv["weight"]["per_channel"] is True
    assert qconfig["nodes"]["tanh"]["pattern"] == "float"
    assert qconfig["nodes"]["tanh"]["quantize"] is False
    assert qconfig["nodes"]["flatten"]["op_type"] == "flatten"
    assert result.metrics["quantized_nodes"] == 6
    assert result.metrics["skipped_nodes"] == 0
    assert result.metrics["float_nodes"] == 1
    assert result.metrics["float"] == ["tanh"]
    assert result.metrics["target"] == "onnxruntime"
    assert "6 nodes to quantize" in result.message


def test_prepare_qconfig_records_params_and_skip(tmp_path: Path) -> None:
    params = {"activation_observer": "percentile", "percentile": 99.9, "activation_dtype": "int8", "skip": ["fc"]}
    result = load_stage("prepare-qconfig").run(_context(tmp_path, params))
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())

    assert qconfig["activation"] == {"observer": "percentile", "dtype": "int8", "percentile": 99.9}
    assert qconfig["nodes"]["conv"]["activation"]["percentile"] == 99.9
    assert qconfig["nodes"]["fc"]["skipped"] is True
    assert qconfig["nodes"]["fc"]["quantize"] is False
    assert result.metrics["skipped_nodes"] == 1
    # A skipped node is counted once, as skipped, not also as float.
    assert result.metrics["float_nodes"] == len(result.metrics["float"])


def test_prepare_qconfig_rejects_unknown_skip(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="'layer4'"):
        load_stage("prepare-qconfig").run(_context(tmp_path, {"skip": ["layer4"]}))


def test_symmetric_target_and_explicit_override(tmp_path: Path) -> None:
    load_stage("prepare-qconfig").run(_context(tmp_path, {"target": "symmetric", "per_channel": False}))
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())

    assert qconfig["target"] == "symmetric"
    assert qconfig["activation"] == {"observer": "minmax", "dtype": "int8"}
    assert qconfig["weight"] == {"observer": "minmax", "dtype": "int8", "per_channel": False}
    assert qconfig["nodes"]["conv"]["activation"]["dtype"] == "int8"


def test_override_rules_apply_in_order(tmp_path: Path) -> None:
    overrides = [
        {"op": "Conv2d", "activation_observer": "percentile", "weight_observer": "mse"},
        {"match": "con*", "activation_dtype": "int8"},
        {"match": "conv", "activation_observer": "entropy"},
        {"op": "Linear", "quantize": False},
    ]
    result = load_stage("prepare-qconfig").run(_context(tmp_path, {"overrides": overrides}))
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())
    conv = qconfig["nodes"]["conv"]

    assert conv["activation"] == {"observer": "entropy", "dtype": "int8"}
    assert conv["weight"]["observer"] == "mse"
    assert conv["overrides"] == [0, 1, 2]
    assert qconfig["nodes"]["relu"]["activation"] == {"observer": "minmax", "dtype": "uint8"}
    assert qconfig["nodes"]["fc"]["quantize"] is False
    assert "fc" not in qconfig["skip"]

    report = load_stage("prepare-qconfig").report("qconfig", {"metrics": result.metrics})
    assert report.startswith("## Quantization config: qconfig")
    assert "- weights: int8 symmetric, minmax observer, per channel" in report
    assert "4. op=Linear, quantize=False" in report
    assert "- float (not quantizable): tanh" in report


def test_skip_wins_over_override(tmp_path: Path) -> None:
    params = {"overrides": [{"match": "fc", "quantize": True}], "skip": ["fc"]}
    load_stage("prepare-qconfig").run(_context(tmp_path, params))
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())
    assert qconfig["nodes"]["fc"]["quantize"] is False
    assert qconfig["nodes"]["fc"]["skipped"] is True


def test_override_matching_nothing_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="override rule 0 .* matches no node"):
        load_stage("prepare-qconfig").run(_context(tmp_path, {"overrides": [{"match": "layer9.*", "quantize": False}]}))
