"""The trace stage: artifact, metrics, cache-key files and failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages.artifacts import load_meta, load_model
from stages.trace import Trace

USER_MODULE = '''
import torch
from torch import nn


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:
            return x
        return -x


class Net(nn.Module):
    def __init__(self, gated: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = Gate() if gated else nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        return self.fc(torch.flatten(x, 1))
'''


def make_context(root: Path, model: dict[str, Any], params: dict[str, Any] | None = None) -> StageContext:
    output = root / "artifact"
    output.mkdir()
    schema = load_schema(stage_schema_path("trace"))
    return StageContext(
        stage_name="trace",
        kind="trace",
        params=fill_defaults(schema, params or {}),
        config={"model": model},
        inputs={},
        outputs={"fp32_model": output},
        root=root,
        output_dir=root / "out",
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "user_net.py").write_text(USER_MODULE)
    return tmp_path


def test_trace_writes_model_artifact(root: Path) -> None:
    model_spec = {"source": "user_net:Net", "kwargs": {}, "input_shape": [2, 1, 8, 8]}
    ctx = make_context(root, model_spec)

    result = Trace().run(ctx)

    graph_module = load_model(ctx.outputs["fp32_model"], root)
    assert isinstance(graph_module, torch.fx.GraphModule)
    assert load_meta(ctx.outputs["fp32_model"]) == {"input_shape": [2, 1, 8, 8], "source": "user_net:Net"}
    assert result.metrics["nodes"] == len(graph_module.graph.nodes)
    assert result.metrics["max_abs_diff"] == 0.0


def test_trace_files_list_checkpoint_and_module(root: Path) -> None:
    pipeline = {"model": {"source": "user_net:Net", "checkpoint": "weights.pt", "input_shape": [1, 1, 8, 8]}}

    files = Trace().files({}, pipeline, root)

    assert files == [root / "weights.pt", root / "user_net.py"]


def test_trace_config_selects_model_section() -> None:
    pipeline = {"model": {"source": "torchvision:resnet18"}, "data": {"x": {}}}

    assert Trace().config({}, pipeline) == {"model": {"source": "torchvision:resnet18"}}


def test_trace_failure_one_line(root: Path) -> None:
    model_spec = {"source": "user_net:Net", "kwargs": {"gated": True}, "input_shape": [1, 1, 8, 8]}

    with pytest.raises(StageError) as failure:
        Trace().run(make_context(root, model_spec))

    message = str(failure.value)
    assert "\n" not in message
    assert "'act' (Gate)" in message
    if_line = USER_MODULE.splitlines().index("        if x.mean() > 0:") + 1
    assert f"{root / 'user_net.py'}:{if_line}" in message
    assert "'user_net.Gate' to the trace stage's leaf_modules" in message


def test_trace_with_leaf_modules_param(root: Path) -> None:
    model_spec = {"source": "user_net:Net", "kwargs": {"gated": True}, "input_shape": [1, 1, 8, 8]}
    ctx = make_context(root, model_spec, {"leaf_modules": ["user_net.Gate"]})

    result = Trace().run(ctx)

    graph_module = load_model(ctx.outputs["fp32_model"], root)
    assert any(node.op == "call_module" and node.target == "act" for node in graph_module.graph.nodes)
    assert result.metrics["max_abs_diff"] == 0.0


def test_trace_accepts_swin_rounding(root: Path) -> None:
    """Swin's inlined window attention reorders products: the check takes that float rounding."""
    model_spec = {"source": "torchvision:swin_t", "input_shape": [1, 3, 64, 64]}

    result = Trace().run(make_context(root, model_spec))

    assert 0.0 < result.metrics["max_abs_diff"] < 1e-4


def test_trace_names_input_shape_on_failure(root: Path) -> None:
    model_spec = {"source": "user_net:Net", "input_shape": [1, 1, 6, 6]}

    with pytest.raises(StageError) as failure:
        Trace().run(make_context(root, model_spec))

    message = str(failure.value)
    assert "\n" not in message
    assert "model.input_shape [1, 1, 6, 6]" in message
