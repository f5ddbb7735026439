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
from stages.artifacts import load_model, save_model, write_json
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig

INPUT_SHAPE = [1, 3, 8, 8]
RANDOM_DATA = {"source": "random", "kwargs": {"shape": [64, 3, 8, 8]}, "batch_size": 16, "seed": 5}


class FragileNet(nn.Module):
    """Four convs and a linear head; conv3 has one huge weight per output channel.

    conv2's channel 0 is always 0 (zero weights, negative bias, ReLU), and
    each conv3 filter has a weight of 1000 on that channel. The outlier never
    changes a float output, but it sets conv3's per-channel int8 weight
    scale to about 1000 / 127, so every other conv3 weight rounds to 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 64, 10)
        with torch.no_grad():
            self.conv2.weight[0].zero_()
            self.conv2.bias[0] = -1.0
            self.conv3.weight[:, 0, 1, 1] = 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.relu(self.conv4(x))
        return self.fc(torch.flatten(x, 1))


def _context(tmp_path: Path, params: dict[str, Any]) -> StageContext:
    torch.manual_seed(0)
    fp32 = tmp_path / "fp32_model"
    fp32.mkdir()
    gm = fx.symbolic_trace(FragileNet().eval())
    save_model(gm, fp32, {"input_shape": INPUT_SHAPE})
    qconfig_params = fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {})
    (tmp_path / "qconfig_in").mkdir()
    write_json(tmp_path / "qconfig_in" / "qconfig.json", build_qconfig(gm, INPUT_SHAPE, qconfig_params))
    (tmp_path / "qconfig").mkdir()
    return StageContext(
        stage_name="sensitivity",
        kind="sensitivity",
        params=fill_defaults(load_schema(stage_schema_path("sensitivity")), {"data": "calib", **params}),
        config={"data": RANDOM_DATA},
        inputs={"fp32_model": fp32, "qconfig": tmp_path / "qconfig_in"},
        outputs={"qconfig": tmp_path / "qconfig"},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )


@pytest.mark.slow
def test_fragile_layer_ranked_worst_and_skipped(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"budget": 25.0, "max_batches": 2})
    stage = load_stage("sensitivity")
    result = stage.run(ctx)
    metrics = result.metrics

    assert metrics["ranking"][0]["node"] == "conv3"
    assert not any(item["op_type"] == "ReLU" for item in metrics["ranking"])
    assert metrics["ranking"][0]["score_alone"] < 10.0
    assert metrics["ranking"][1]["score_alone"] > 25.0
    assert [item["node"] for item in metrics["skipped"]] == ["conv3"]
    assert metrics["initial_score"] < 10.0
    assert metrics["final_score"] >= 25.0
    assert metrics["budget_met"] is True

    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())
    assert qconfig["skip"] == ["conv3", "relu_2"]
    assert qconfig["nodes"]["conv3"]["quantize"] is False
    assert qconfig["nodes"]["relu_2"]["quantize"] is False
    assert "quantized alone" in qconfig["nodes"]["conv3"]["skip_reason"]
    assert qconfig["nodes"]["conv2"]["quantize"] is True

    observed, _ = insert_observers(load_model(tmp_path / "fp32_model", tmp_path), qconfig)
    assert observed.quant_plan["conv3"]["quantize"] is False
    assert observed.quant_plan["conv4"]["quantize"] is True
    assert "| conv3 | Conv2d |" in stage.report("sensitivity", {"metrics": metrics})


@pytest.mark.slow
def test_budget_already_met_skips_nothing(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"budget": -100.0, "max_batches": 1})
    result = load_stage("sensitivity").run(ctx)
    assert result.metrics["skipped"] == []
    assert result.metrics["budget_met"] is True
    qconfig = json.loads((tmp_path / "qconfig" / "qconfig.json").read_text())
    assert qconfig["nodes"]["conv3"]["quantize"] is True


@pytest.mark.slow
def test_max_skipped_caps_skips(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"budget": 1000.0, "max_skipped": 2, "max_batches": 1})
    result = load_stage("sensitivity").run(ctx)
    assert len(result.metrics["skipped"]) == 2
    assert result.metrics["budget_met"] is False
    assert "NOT met" in result.message


@pytest.mark.slow
def test_top1_metric_ranks_layers(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"budget": 5.0, "metric": "top1", "max_batches": 1})
    result = load_stage("sensitivity").run(ctx)
    assert result.metrics["ranking"][0]["node"] == "conv3"
    assert result.metrics["final_score"] >= 95.0


def test_bad_data_is_a_stage_error(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"budget": 20.0})
    ctx.config = {"data": {**RANDOM_DATA, "kwargs": {"shape": [8, 1, 8, 8]}}}
    with pytest.raises(StageError, match="sensitivity analysis on data set .* failed"):
        load_stage("sensitivity").run(ctx)
