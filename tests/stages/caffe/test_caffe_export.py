"""The export stage with format caffe: files, metrics, gates, errors and the calibration table."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from torch import nn

from caffe_helpers import requires_caffe
from pipeline.contract import Input, StageContext
from pipeline.errors import StageError, StageFailed
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages.artifacts import save_model, write_json
from stages.caffe.emitter import EmitError, build_net, model_location
from stages.caffe.parity import CaffeCrash, probe_caffe, run_caffe
from stages.caffe.proto import CaffeMissing, caffe_pb2
from stages.export import Export
from stages.quant.calibration import TABLE_FILE, calibrate, calibration_table
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig
from stages.tracing.tracer import ModelTracer, trace_model

INPUT_SHAPE = [2, 1, 8, 8]


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv(x))


def save_artifact(folder: Path, module: nn.Module) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    folder.mkdir()
    graph_module = trace_model(module.eval())
    save_model(graph_module, folder, meta={"input_shape": INPUT_SHAPE, "source": f"test:{type(module).__name__}"})
    return graph_module


def make_context(root: Path, params: dict[str, Any], calibration: Path | None = None) -> StageContext:
    output = root / "export_artifact"
    output.mkdir()
    inputs: dict[str, Any] = {"model": root / "model_artifact"}
    if calibration is not None:
        inputs["calibration"] = calibration
    return StageContext(
        stage_name="caffe",
        kind="export",
        params=fill_defaults(load_schema(stage_schema_path("export")), {"format": "caffe", **params}),
        config={},
        inputs=inputs,
        outputs={"export": output},
        root=root,
        output_dir=root / "out",
    )


def read_net(path: Path, binary: bool) -> Any:
    net = caffe_pb2().NetParameter()
    if binary:
        net.ParseFromString(path.read_bytes())
    else:
        text_format.Parse(path.read_text(), net)
    return net


def test_stage_declares_inputs_and_packages() -> None:
    params = {"format": "caffe", "precision": "fp32"}

    assert Export().inputs(params) == (Input("model", "fp32_model"), Input("calibration", "calibration", optional=True))
    assert "brocolli-caffe" in Export().packages(params)
    assert "onnxruntime" not in Export().packages(params)


@requires_caffe
def test_caffe_distribution_is_the_declared_package() -> None:
    assert importlib.metadata.version("brocolli-caffe") == "9.0.2"


def test_probe_names_install_script_when_caffe_is_missing() -> None:
    python = shutil.which("python3", path="/usr/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 to stand for an interpreter without Caffe")

    with pytest.raises(CaffeMissing) as missing:
        probe_caffe(python)

    message = str(missing.value)
    assert "\n" not in message
    assert "No module named 'caffe'" in message
    assert message.endswith("install it with scripts/install_caffe.sh")


@requires_caffe
@pytest.mark.caffe
@pytest.mark.slow
def test_export_writes_model_and_contract(tmp_path: Path) -> None:
    graph_module = save_artifact(tmp_path / "model_artifact", DigitsNet())
    ctx = make_context(tmp_path, {"samples": 10})

    result = Export().run(ctx)

    folder = ctx.outputs["export"]
    assert sorted(path.name for path in folder.iterdir()) == ["input_contract.json", "model.caffemodel", "model.prototxt"]
    assert result.publish == {
        "caffe.prototxt": "export/model.prototxt",
        "caffe.caffemodel": "export/model.caffemodel",
        "caffe.json": "export/input_contract.json",
    }
    assert result.message.startswith("accuracy test passed: max_rel_diff=")
    metrics = result.metrics
    assert (metrics["path"], metrics["format"], metrics["precision"], metrics["passed"]) == ("out/caffe.caffemodel", "caffe", "fp32", True)
    assert metrics["samples"] == 10
    assert 0 <= metrics["max_rel_diff"] <= 1e-4

    # The written files on a new input, in a fresh pycaffe process, against torch.
    batch = np.random.default_rng(7).standard_normal(INPUT_SHAPE).astype(np.float32)
    contract = json.loads((folder / "input_contract.json").read_text())
    assert contract["inputs"] == [{"name": "x", "shape": INPUT_SHAPE, "dtype": "float32", "layout": "NCHW"}]
    output = contract["outputs"][0]["name"]
    blobs = run_caffe(folder / "model.prototxt", folder / "model.caffemodel", batch, [output])
    expected = graph_module(torch.from_numpy(batch)).detach().numpy()
    np.testing.assert_allclose(blobs[output], expected, rtol=1e-4, atol=1e-5)

    # BatchNorm is folded by default: the conv's blob carries the BatchNorm's value and name.
    layers = {layer.name: layer for layer in read_net(folder / "model.prototxt", binary=False).layer}
    assert "BatchNorm" not in {layer.type for layer in layers.values()}
    assert list(layers["conv1"].top) == ["bn1"]


@requires_caffe
@pytest.mark.caffe
@pytest.mark.slow
def test_unfolded_batchnorm_param(tmp_path: Path) -> None:
    save_artifact(tmp_path / "model_artifact", DigitsNet())
    ctx = make_context(tmp_path, {"fold_batchnorm": False, "file_name": "digits"})

    result = Export().run(ctx)

    types = [layer.type for layer in read_net(ctx.outputs["export"] / "model.prototxt", binary=False).layer]
    assert types[:4] == ["Input", "Convolution", "BatchNorm", "Scale"]
    assert result.metrics["path"] == "out/digits.caffemodel"
    assert result.metrics["passed"] is True


@requires_caffe
@pytest.mark.caffe
def test_gate_failure_names_first_diverging_blob(tmp_path: Path) -> None:
    save_artifact(tmp_path / "model_artifact", DigitsNet())
    # No float32 runtime matches PyTorch to 1e-12 on a conv network with real accumulation.
    ctx = make_context(tmp_path, {"max_rel_diff": 1e-12, "samples": 4})

    with pytest.raises(StageFailed) as failure:
        Export().run(ctx)

    message = str(failure.value)
    assert message.startswith("accuracy test failed: max_rel_diff=")
    assert "(> 1e-12) in pycaffe; first diverging blob '" in message
    assert failure.value.metrics["passed"] is False
    assert list(ctx.outputs["export"].iterdir()) == []


@requires_caffe
def test_unsupported_op_stops_before_any_file(tmp_path: Path) -> None:
    save_artifact(tmp_path / "model_artifact", GeluNet())
    ctx = make_context(tmp_path, {})

    with pytest.raises(StageError) as error:
        Export().run(ctx)

    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("Caffe export: node 'gelu' (call_function torch._C._nn.gelu) at the forward of test:GeluNet (the tracer recorded no line numbers): it has no Caffe mapping; ")
    assert "use ReLU, SiLU or Hardswish; supported functions: " in message
    assert list(ctx.outputs["export"].iterdir()) == []


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * 2  # the line a recorded stack trace points at


def test_unsupported_module_names_its_caller() -> None:
    graph_module = trace_model(Nested().eval())

    with pytest.raises(EmitError) as error:
        build_net(graph_module, torch.randn(1, 3))

    message = str(error.value)
    _, first_line = inspect.getsourcelines(Block.forward)
    assert f"node 'block_act' (call_module torch.nn.modules.activation.GELU) at {inspect.getsourcefile(Block)}:{first_line} (in block: Block.forward)" in message
    assert "supported modules: " in message
    assert "Hardswish" in message


def test_stack_trace_gives_exact_line() -> None:
    tracer = ModelTracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(Nested().eval())
    mul = next(node for node in graph.nodes if node.name == "mul")
    source, start = inspect.getsourcelines(Nested.forward)
    line = start + next(index for index, text in enumerate(source) if "recorded stack trace" in text)

    assert model_location(mul) == f"{inspect.getsourcefile(Nested)}:{line}"


def test_int8_precision_is_rejected(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, {"precision": "int8"})

    with pytest.raises(StageError, match="format caffe exports the fp32 model"):
        Export().run(ctx)


@requires_caffe
def test_caffe_crash_becomes_one_line(tmp_path: Path) -> None:
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 2 dim: 2 } } }\n'
        'layer { name: "cut" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 slice_point: 9 } }\n'
    )
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")

    with pytest.raises(CaffeCrash) as crash:
        run_caffe(prototxt, empty, np.zeros((1, 4, 2, 2), dtype=np.float32), ["a"])

    message = str(crash.value)
    assert "\n" not in message
    assert "Check failed" in message


def calibrate_digits_net(folder: Path) -> torch.fx.GraphModule:
    """Trace, observe and calibrate DigitsNet with the quant library; write calibration.json to ``folder``."""
    torch.manual_seed(0)
    fp32 = trace_model(DigitsNet().eval())
    params = fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {})
    observed, _ = insert_observers(fp32, build_qconfig(fp32, INPUT_SHAPE, params))
    calibrate(observed, torch.randn(32, *INPUT_SHAPE[1:], generator=torch.Generator().manual_seed(3)).split(8))
    folder.mkdir()
    write_json(folder / TABLE_FILE, calibration_table(observed))
    return fp32


@requires_caffe
@pytest.mark.caffe
@pytest.mark.slow
def test_calibration_table_names_match_prototxt(tmp_path: Path) -> None:
    fp32 = calibrate_digits_net(tmp_path / "calibration")
    (tmp_path / "model_artifact").mkdir()
    save_model(fp32, tmp_path / "model_artifact", meta={"input_shape": INPUT_SHAPE})
    ctx = make_context(tmp_path, {}, calibration=tmp_path / "calibration")

    result = Export().run(ctx)

    folder = ctx.outputs["export"]
    assert result.publish["caffe.calibration.json"] == "export/calibration_table.json"
    table = json.loads((folder / "calibration_table.json").read_text())
    assert (table["format"], table["version"]) == ("brocolli-caffe-calibration", 1)

    net = read_net(folder / "model.prototxt", binary=False)
    blobs = {top for layer in net.layer for top in layer.top}
    layer_names = {layer.name for layer in net.layer}
    assert set(table["activations"]) <= blobs
    assert set(table["weights"]) <= layer_names
    # The input, the conv-BN-ReLU output (the quant library observes after the fused ReLU), the logits.
    assert {"x", "relu", "fc"} <= set(table["activations"])
    assert set(table["weights"]) == {"conv1", "conv2", "fc"}
    assert result.metrics["calibrated_blobs"] == len(table["activations"])

    # Activation qparams are the calibrate stage's, under the blob of the same fp32 value.
    values = json.loads((tmp_path / "calibration" / TABLE_FILE).read_text())["values"]
    for blob, entry in table["activations"].items():
        assert entry == {"scale": values[blob]["scale"], "zero_point": values[blob]["zero_point"], "dtype": values[blob]["dtype"]}

    # Weight scales are max|w| / 127 per output channel of the exported (folded) weights.
    weights = {layer.name: layer.blobs[0] for layer in read_net(folder / "model.caffemodel", binary=True).layer if layer.blobs}
    for name, entry in table["weights"].items():
        weight = np.array(weights[name].data, dtype=np.float64).reshape(list(weights[name].shape.dim))
        expected = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1) / 127
        assert entry["axis"] == 0
        np.testing.assert_allclose(entry["scales"], expected, rtol=1e-6)
