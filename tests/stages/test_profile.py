from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.fx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import save_model


def _write_export(folder: Path, precision: str, batch: int | str) -> None:
    """An export folder: a MatMul model (QDQ on its input for int8) and its input contract."""
    folder.mkdir()
    weight = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "weight")]
    nodes = []
    matmul_input = "input"
    if precision == "int8":
        initializers += [
            numpy_helper.from_array(np.array(0.05, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="quantize"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dequantize"),
        ]
        matmul_input = "dq"
    nodes.append(helper.make_node("MatMul", [matmul_input, "weight"], ["output"], name="fc"))
    graph = helper.make_graph(
        nodes,
        "fc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 10])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    (folder / "input_contract.json").write_text(json.dumps({"format": "onnx", "precision": precision}))


def _context(tmp_path: Path, params: dict[str, Any], batch: int | str = "batch") -> StageContext:
    torch.manual_seed(0)
    fp32 = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval())
    int8 = copy.deepcopy(fp32)

    folders: dict[str, Any] = {}
    for name, model in (("fp32_model", fp32), ("int8_model", int8)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        save_model(model, folders[name], {"input_shape": [1, 1, 8, 8]})
    _write_export(tmp_path / "export_a", "fp32", batch)
    _write_export(tmp_path / "export_b", "int8", batch)
    folders["exports"] = [tmp_path / "export_a", tmp_path / "export_b"]
    (tmp_path / "profile").mkdir()

    return StageContext(
        stage_name="profile",
        kind="profile",
        params=fill_defaults(load_schema(stage_schema_path("profile")), {"warmup": 1, "repeats": 5, "memory": False, **params}),
        config={},
        inputs=folders,
        outputs={"profile": tmp_path / "profile"},
        root=tmp_path,
        output_dir=tmp_path / "out",
        input_names={"fp32_model": "trace", "int8_model": "convert", "exports": ["onnx_fp32", "onnx_int8"]},
    )


def _reference_model() -> nn.Module:
    """The module that ``_context`` traces, built again from the same seed: the independent count."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_profile_metrics_against_independent_counts(tmp_path: Path) -> None:
    stage = load_stage("profile")
    result = stage.run(_context(tmp_path, {}))

    metrics = result.metrics
    reference = _reference_model()
    assert metrics["params_fp32"] == sum(parameter.numel() for parameter in reference.parameters())
    assert metrics["params_fp32"] == (4 * 9 + 4) + (144 * 10 + 10)
    # Conv: 4 output channels x 1 input x 3 x 3 at 6 x 6 positions; Linear: 144 x 10.
    assert metrics["macs"] == metrics["macs_fp32"] == 4 * 9 * 36 + 144 * 10
    for precision in ("fp32", "int8"):
        assert metrics[f"torch_size_{precision}_bytes"] == (tmp_path / f"{precision}_model" / "model.pt").stat().st_size
    assert metrics["size_fp32_bytes"] == (tmp_path / "export_a" / "model.onnx").stat().st_size
    assert metrics["size_int8_bytes"] == (tmp_path / "export_b" / "model.onnx").stat().st_size
    assert metrics["size_reduction"] == round(metrics["size_fp32_bytes"] / metrics["size_int8_bytes"], 3)

    measurements = result.measurements
    for key in ("latency_fp32_ms", "latency_int8_ms", "torch_fp32_ms", "torch_int8_ms"):
        assert measurements[key] > 0
        assert measurements[key.replace("_ms", "_p10_ms")] <= measurements[key] <= measurements[key.replace("_ms", "_p90_ms")]
    assert measurements["speedup"] == pytest.approx(measurements["latency_fp32_ms"] / measurements["latency_int8_ms"], rel=1e-2)
    assert measurements["exports"]["onnx_int8"]["precision"] == "int8"
    assert {row["node"] for row in measurements["slowest_nodes_fp32"]} >= {"fc"}
    assert measurements["cpu"].endswith(")")
    assert measurements["onnxruntime_version"] == onnxruntime.__version__
    assert "torch_fp32_peak_mib" not in measurements

    # Only the deterministic metrics go into the artifact.
    stored = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert stored["metrics"] == metrics


def test_profile_report_section(tmp_path: Path) -> None:
    stage = load_stage("profile")
    result = stage.run(_context(tmp_path, {}))
    section = stage.report("profile", {"metrics": result.metrics, "measurements": result.measurements, "published": []})

    assert section.startswith("## Size and speed: profile\n")
    assert f"| parameters | {result.metrics['params_fp32']:,} |" in section
    assert "| ONNX file |" in section
    assert "| PyTorch artifact (model.pt) |" in section
    assert "| onnxruntime | int8 |" in section
    assert "speed-up over fp32" in section
    assert result.measurements["cpu"] in section
    assert "`fc`" in section

    # Without measurements (a record from an old run) the sizes still render.
    assert "| MACs per sample |" in stage.report("profile", {"metrics": result.metrics, "measurements": {}, "published": []})


@pytest.mark.slow
def test_profile_measures_peak_memory(tmp_path: Path) -> None:
    result = load_stage("profile").run(_context(tmp_path, {"memory": True}))
    for prefix in ("torch_fp32", "torch_int8", "onnx_fp32", "onnx_int8"):
        assert result.measurements[f"{prefix}_peak_mib"] >= 0
    assert "VmHWM" in result.measurements["memory_method"]


def test_profile_fixed_batch_mismatch_raises(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="cannot time export 'onnx_fp32'.*fixed batch size of 1, not 4"):
        load_stage("profile").run(_context(tmp_path, {"batch_size": 4}, batch=1))


def test_profile_without_exports(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"top_nodes": 0})
    ctx.inputs["exports"] = []
    ctx.input_names["exports"] = []
    result = load_stage("profile").run(ctx)
    assert "size_fp32_bytes" not in result.metrics
    assert "speedup" not in result.measurements
    assert result.measurements["torch_int8_ms"] > 0


TINY_MODEL = '''
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
'''

TINY_PIPELINE = """
version: 1
name: tiny
model:
  source: tiny_model:build
  input_shape: [1, 1, 8, 8]
data:
  rand:
    source: random
    kwargs: {shape: [32, 1, 8, 8]}
    batch_size: 8
output: out
stages:
  - {name: trace, kind: trace}
  - {name: qconfig, kind: prepare-qconfig}
  - {name: observe, kind: insert-observers}
  - {name: calibrate, kind: calibrate, data: rand}
  - {name: convert, kind: convert}
  - {name: evaluate, kind: evaluate, data: rand, max_top1_drop: 100}
  - {name: onnx_fp32, kind: export, needs: [trace], format: onnx, precision: fp32, data: rand}
  - {name: onnx_int8, kind: export, needs: [evaluate], format: onnx, precision: int8, data: rand, min_within_one_step_pct: 0}
  - {name: profile, kind: profile, needs: [onnx_fp32, onnx_int8], repeats: 5, warmup: 1, memory: false}
"""


@pytest.mark.slow
def test_report_has_every_section(tmp_path: Path) -> None:
    import pipeline
    from pipeline.show import headline_lines, show_data

    (tmp_path / "tiny_model.py").write_text(TINY_MODEL)
    (tmp_path / "tiny.yaml").write_text(TINY_PIPELINE)
    result = pipeline.run(tmp_path / "tiny.yaml")
    assert result["exit_code"] == 0, result.get("error")

    report = (tmp_path / "out" / "report.md").read_text()
    lines = report.splitlines()
    assert lines[0] == "# tiny"
    first_section = next(index for index, line in enumerate(lines) if index > 0 and line.startswith("#"))
    assert lines[first_section - 1] == ""
    assert lines[first_section - 2].startswith("Pipeline file:")
    # Sections follow the pipeline order.
    headings = [line for line in lines if line.startswith("## ")]
    assert headings == [
        "## Quantization config: qconfig", "## Accuracy: evaluate", "## Export: onnx_fp32", "## Export: onnx_int8", "## Size and speed: profile",
    ]
    assert "Parity with PyTorch in onnxruntime passed" in report
    assert "| onnxruntime | int8 |" in report

    # `pipe show` leads with the same run's headline numbers.
    data = show_data(tmp_path / "tiny.yaml", None)
    profile = result["measurements"]["profile"]
    assert data["headline"]["profile"]["latency_int8_ms"] == profile["latency_int8_ms"]
    assert data["headline"]["evaluate"]["top1_agreement"] == result["metrics"]["evaluate"]["top1_agreement"]
    assert data["headline"]["exports"] == {"onnx_fp32": True, "onnx_int8": True}
    shown = headline_lines(data["headline"])
    assert any(line.startswith("ONNX size: fp32") for line in shown)
    assert any(line.startswith("onnxruntime latency: fp32") for line in shown)
