from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from pipeline.contract import StageContext
from pipeline.errors import StageFailed
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import save_model
from stages.quant.arithmetic import QParams
from stages.quant.modules import Dequantize, Quantize


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def _models(fc_noise: float) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    torch.manual_seed(0)
    fp32 = torch.fx.symbolic_trace(Small().eval())
    int8 = copy.deepcopy(fp32)
    with torch.no_grad():
        int8.fc.weight.add_(fc_noise * torch.randn_like(int8.fc.weight))

    qparams = QParams(0.01, 0, "uint8")
    int8.add_submodule("relu_quant", Quantize(qparams))
    int8.add_submodule("relu_dequant", Dequantize(qparams))
    relu = next(node for node in int8.graph.nodes if node.name == "relu")
    with int8.graph.inserting_after(relu):
        quant = int8.graph.call_module("relu_quant", (relu,))
    with int8.graph.inserting_after(quant):
        dequant = int8.graph.call_module("relu_dequant", (quant,))
    relu.replace_all_uses_with(dequant)
    quant.args = (relu,)
    int8.recompile()
    int8.value_names = {"x": "x", "conv": "conv", "relu_quant": "relu", "pool": "pool", "flatten": "flatten", "fc": "fc"}
    int8.qparams = {"relu_quant": qparams.to_dict()}
    return fp32, int8


def _context(tmp_path: Path, fc_noise: float, params: dict[str, Any]) -> StageContext:
    fp32, int8 = _models(fc_noise)
    inputs = np.random.default_rng(0).standard_normal((60, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        labels = fp32(torch.from_numpy(inputs)).argmax(dim=1).numpy()
    labels[:6] = (labels[:6] + 1) % 4
    np.savez(tmp_path / "holdout.npz", inputs=inputs, labels=labels)

    folders = {}
    for name, model in (("fp32_model", fp32), ("int8_model", int8)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        save_model(model, folders[name], {"input_shape": [1, 1, 6, 6]})
    (tmp_path / "evaluation").mkdir()

    schema = load_schema(stage_schema_path("evaluate"))
    return StageContext(
        stage_name="evaluate",
        kind="evaluate",
        params=fill_defaults(schema, {"data": "holdout", **params}),
        config={"data": {"source": "npy", "path": "holdout.npz", "batch_size": 16}},
        inputs=folders,
        outputs={"evaluation": tmp_path / "evaluation"},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )


def test_evaluate_passes_identical_models(tmp_path: Path) -> None:
    ctx = _context(tmp_path, 0.0, {})
    result = load_stage("evaluate").run(ctx)

    metrics = result.metrics
    assert metrics["passed"] is True
    assert metrics["samples"] == 60
    assert metrics["top1_fp32"] == 90.0
    assert metrics["top1_agreement"] > 90
    assert abs(metrics["top1_drop"]) <= 1.0
    assert result.message.startswith("accuracy test passed: int8 top-1")
    assert result.publish == {"evaluate_sqnr.png": "evaluation/sqnr.png"}

    per_node = json.loads((tmp_path / "evaluation" / "per_node.json").read_text())
    assert per_node["nodes"][0]["node"] == "relu"
    assert (tmp_path / "evaluation" / "sqnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_gate_fails_on_large_drop(tmp_path: Path) -> None:
    ctx = _context(tmp_path, 3.0, {"max_top1_drop": 0.5})
    with pytest.raises(StageFailed, match=r"accuracy test failed: int8 top-1 .* vs fp32 90.00%, drop .* > max_top1_drop 0.5") as failure:
        load_stage("evaluate").run(ctx)
    assert failure.value.metrics["passed"] is False
    assert failure.value.metrics["top1_drop"] > 0.5


def test_evaluate_agreement_gate(tmp_path: Path) -> None:
    ctx = _context(tmp_path, 3.0, {"max_top1_drop": 100.0, "min_top1_agreement": 99.9})
    with pytest.raises(StageFailed, match=r"top-1 agreement .* < min_top1_agreement 99.9%"):
        load_stage("evaluate").run(ctx)


def test_evaluate_report_section(tmp_path: Path) -> None:
    ctx = _context(tmp_path, 0.5, {"max_top1_drop": 100.0})
    stage = load_stage("evaluate")
    result = stage.run(ctx)
    section = stage.report("evaluate", {"metrics": result.metrics, "measurements": {}, "published": ["evaluate_sqnr.png"]})
    assert "| int8 |" in section
    assert "![Per-node SQNR of evaluate](evaluate_sqnr.png)" in section
    assert f"`{result.metrics['worst_nodes'][0]['node']}`" in section


def test_evaluate_files_and_config(tmp_path: Path) -> None:
    pipeline = {"data": {"holdout": {"source": "npy", "path": "holdout.npz"}}}
    (tmp_path / "holdout.npz").write_bytes(b"")
    stage = load_stage("evaluate")
    assert stage.config({"data": "holdout"}, pipeline) == {"data": pipeline["data"]["holdout"]}
    assert stage.files({"data": "holdout"}, pipeline, tmp_path) == [(tmp_path / "holdout.npz").resolve()]
