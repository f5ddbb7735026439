"""The export stage: files, metrics, params, the input contract and the gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.contract import Input, StageContext
from pipeline.errors import StageError, StageFailed
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages.artifacts import save_model
from stages.export import Export
from stages.tracing.tracer import trace_model


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def save_fp32_artifact(folder: Path, input_shape: list[int]) -> None:
    torch.manual_seed(0)
    folder.mkdir()
    save_model(trace_model(DigitsNet().eval()), folder, meta={"input_shape": input_shape, "source": "test"})


def make_context(root: Path, params: dict[str, Any], data: dict[str, Any] | None = None) -> StageContext:
    output = root / "export_artifact"
    output.mkdir()
    schema = load_schema(stage_schema_path("export"))
    return StageContext(
        stage_name="onnx_fp32",
        kind="export",
        params=fill_defaults(schema, params),
        config={} if data is None else {"data": data},
        inputs={"model": root / "model_artifact"},
        outputs={"export": output},
        root=root,
        output_dir=root / "out",
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    save_fp32_artifact(tmp_path / "model_artifact", [2, 1, 8, 8])
    return tmp_path


def run_model(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def test_fp32_export_writes_model_and_contract(root: Path) -> None:
    ctx = make_context(root, {"format": "onnx", "samples": 10})

    result = Export().run(ctx)

    folder = ctx.outputs["export"]
    assert sorted(path.name for path in folder.iterdir()) == ["input_contract.json", "model.onnx"]
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    assert result.publish == {
        "onnx_fp32.onnx": "export/model.onnx",
        "onnx_fp32.json": "export/input_contract.json",
    }
    assert result.message.startswith("accuracy test passed: max_rel_diff=")
    assert result.message.endswith("(<= 0.0001)")


def test_fp32_export_metrics(root: Path) -> None:
    result = Export().run(make_context(root, {"format": "onnx", "samples": 10}))

    metrics = result.metrics
    assert metrics["path"] == "out/onnx_fp32.onnx"
    assert metrics["format"] == "onnx"
    assert metrics["precision"] == "fp32"
    assert metrics["opset"] == 17
    assert metrics["passed"] is True
    # 10 samples in batches of the model's batch size 2.
    assert metrics["samples"] == 10
    assert 0 <= metrics["max_rel_diff"] <= 1e-4
    assert metrics["max_abs_diff"] >= 0
    assert "int8_kernels" not in metrics


def test_export_matches_torch_new_input(root: Path) -> None:
    ctx = make_context(root, {"format": "onnx"})
    Export().run(ctx)
    graph_module = torch.load(root / "model_artifact" / "model.pt", weights_only=False)
    batch = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)

    actual = run_model(ctx.outputs["export"] / "model.onnx", batch)

    np.testing.assert_allclose(actual, graph_module(torch.from_numpy(batch)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_file_name_sets_published_names(root: Path) -> None:
    result = Export().run(make_context(root, {"format": "onnx", "file_name": "digits_net"}))

    assert set(result.publish) == {"digits_net.onnx", "digits_net.json"}
    assert result.metrics["path"] == "out/digits_net.onnx"


def test_opset_and_dynamic_batch_params(root: Path) -> None:
    ctx = make_context(root, {"format": "onnx", "opset": 13, "dynamic_batch": True})

    Export().run(ctx)

    model = onnx.load(str(ctx.outputs["export"] / "model.onnx"))
    assert [(entry.domain, entry.version) for entry in model.opset_import] == [("", 13)]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    contract = json.loads((ctx.outputs["export"] / "input_contract.json").read_text())
    assert contract["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert contract["opset"] == 13
    batch = np.zeros((5, 1, 8, 8), dtype=np.float32)
    assert run_model(ctx.outputs["export"] / "model.onnx", batch).shape == (5, 10)


def test_input_contract_with_data_set(root: Path) -> None:
    data = {"source": "digits", "split": "test", "test_size": 40, "seed": 0, "batch_size": 16, "mean": [0.3], "std": [0.4], "kwargs": {}, "crops_per_image": 1}
    ctx = make_context(root, {"format": "onnx", "data": "holdout", "samples": 20}, data)

    result = Export().run(ctx)

    contract = json.loads((ctx.outputs["export"] / "input_contract.json").read_text())
    assert contract["format"] == "onnx"
    assert contract["precision"] == "fp32"
    assert contract["inputs"] == [{"name": "x", "shape": [2, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]
    assert contract["outputs"] == [{"name": "fc", "shape": [2, 10], "dtype": "float32"}]
    assert contract["preprocessing"]["source"] == "digits"
    assert contract["preprocessing"]["scale"] == 1 / 16
    assert contract["preprocessing"]["mean"] == [0.3]
    assert contract["preprocessing"]["std"] == [0.4]
    assert result.metrics["samples"] == 20


def test_data_set_of_wrong_shape_rejected(tmp_path: Path) -> None:
    save_fp32_artifact(tmp_path / "model_artifact", [1, 1, 16, 16])
    data = {"source": "digits", "split": "all", "test_size": 0.25, "seed": 0, "batch_size": 8, "kwargs": {}, "crops_per_image": 1}

    with pytest.raises(StageError, match=r"shape \[1, 8, 8\], the model expects \[1, 16, 16\]"):
        Export().run(make_context(tmp_path, {"format": "onnx", "data": "digits"}, data))


def test_gate_failure_names_node(root: Path) -> None:
    # No float32 runtime matches PyTorch to 1e-12 on a conv network with real accumulation.
    ctx = make_context(root, {"format": "onnx", "max_rel_diff": 1e-12, "samples": 8})

    with pytest.raises(StageFailed) as failure:
        Export().run(ctx)

    message = str(failure.value)
    assert message.startswith("accuracy test failed: max_rel_diff=")
    assert "(> 1e-12)" in message
    assert "first diverging node '" in message
    assert failure.value.metrics["passed"] is False
    assert list(ctx.outputs["export"].iterdir()) == []


def test_inputs_follow_precision() -> None:
    assert Export().inputs({"format": "onnx", "precision": "fp32"}) == (Input("model", "fp32_model"),)
    assert Export().inputs({"format": "onnx", "precision": "int8"}) == (Input("model", "int8_model"),)


def test_config_and_files_select_data_set(tmp_path: Path) -> None:
    pipeline = {"data": {"holdout": {"source": "digits"}, "other": {"source": "random"}}}

    assert Export().config({"data": "holdout"}, pipeline) == {"data": {"source": "digits"}}
    assert Export().config({}, pipeline) == {}
    assert Export().files({}, pipeline, tmp_path) == []


def test_contract_is_in_model_metadata(root: Path) -> None:
    ctx = make_context(root, {"format": "onnx", "dynamic_batch": True})
    Export().run(ctx)

    folder = ctx.outputs["export"]
    model = onnx.load(str(folder / "model.onnx"))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    beside = json.loads((folder / "input_contract.json").read_text())
    assert json.loads(metadata["input_contract"]) == beside
    assert beside["inputs"] == [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]


def test_external_data_above_threshold(root: Path) -> None:
    from stages.onnx.exporter import ExportRequest, export_onnx

    output = root / "export_artifact"
    output.mkdir()
    request = ExportRequest(
        stage_name="onnx_fp32",
        model_dir=root / "model_artifact",
        output_dir=output,
        root=root,
        precision="fp32",
        opset=17,
        dynamic_batch=False,
        samples=4,
        max_rel_diff=1e-4,
        min_within_one_step_pct=99.9,
        published_path="out/big.onnx",
        external_data_threshold=1024,
    )

    metrics, _ = export_onnx(request)

    assert metrics["external_data"] == "big.onnx.data"
    assert sorted(path.name for path in output.iterdir()) == ["big.onnx.data", "input_contract.json", "model.onnx"]
    assert (output / "model.onnx").stat().st_size < 4096 < (output / "big.onnx.data").stat().st_size
    graph_module = torch.load(root / "model_artifact" / "model.pt", weights_only=False)
    batch = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    expected = graph_module(torch.from_numpy(batch)).detach().numpy()
    np.testing.assert_allclose(run_model(output / "model.onnx", batch), expected, rtol=1e-4, atol=1e-5)


def test_stage_publishes_external_data(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.onnx import exporter

    # A limit of 1 KiB makes this small model take the path of a model over 2 GB.
    monkeypatch.setattr(exporter, "PROTO_SIZE_LIMIT", 1024)
    ctx = make_context(root, {"format": "onnx", "file_name": "digits"})

    result = Export().run(ctx)

    assert result.publish["digits.onnx.data"] == "export/digits.onnx.data"
    assert (ctx.outputs["export"] / "digits.onnx.data").is_file()


def test_failed_gate_removes_external_data(root: Path) -> None:
    from stages.onnx import exporter

    request = exporter.ExportRequest(
        stage_name="onnx_fp32",
        model_dir=root / "model_artifact",
        output_dir=root,
        root=root,
        precision="fp32",
        opset=17,
        dynamic_batch=False,
        samples=4,
        max_rel_diff=1e-12,
        min_within_one_step_pct=99.9,
        published_path="out/big.onnx",
        external_data_threshold=1024,
    )
    before = sorted(path.name for path in root.iterdir())

    with pytest.raises(StageFailed):
        exporter.export_onnx(request)
    assert sorted(path.name for path in root.iterdir()) == before
