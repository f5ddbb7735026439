from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import fx, nn

from pipeline.contract import StageContext
from pipeline.errors import StageError
from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages import load_stage
from stages.artifacts import load_meta, load_model, save_model
from stages.quant.calibration import calibrate, collect_stats, save_stats
from stages.quant.modules import QuantConv2d, QuantLinear
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def _prepare(tmp_path: Path, calibrated: bool = True) -> tuple[fx.GraphModule, StageContext]:
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Small().eval())
    params = {"activation_observer": "minmax", "percentile": 99.99, "weight_observer": "minmax", "activation_dtype": "uint8", "per_channel": True, "skip": []}
    observed, _ = insert_observers(gm, build_qconfig(gm, [1, 1, 6, 6], params))
    for folder in ("observed_model", "calibration", "int8_model"):
        (tmp_path / folder).mkdir()
    save_model(observed, tmp_path / "observed_model", {"input_shape": [1, 1, 6, 6]})
    if calibrated:
        calibrate(observed, [torch.randn(16, 1, 6, 6) for _ in range(4)])
    save_stats(collect_stats(observed), tmp_path / "calibration")

    ctx = StageContext(
        stage_name="convert",
        kind="convert",
        params=fill_defaults(load_schema(stage_schema_path("convert")), {}),
        config={},
        inputs={"observed_model": tmp_path / "observed_model", "calibration": tmp_path / "calibration"},
        outputs={"int8_model": tmp_path / "int8_model"},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )
    return gm, ctx


def test_convert_stage_writes_int8_model(tmp_path: Path) -> None:
    fp32, ctx = _prepare(tmp_path)
    result = load_stage("convert").run(ctx)

    int8 = load_model(tmp_path / "int8_model")
    modules = dict(int8.named_modules())
    assert isinstance(modules["conv"], QuantConv2d) and modules["conv"].relu
    assert isinstance(modules["fc"], QuantLinear)
    assert int8.value_names["conv"] == "relu"
    assert set(int8.qparams) == {"x_quantize", "conv", "flatten", "fc"}
    assert load_meta(tmp_path / "int8_model")["input_shape"] == [1, 1, 6, 6]
    assert result.metrics == {"quantized_nodes": 3, "float_nodes": 0, "quantize_nodes": 1, "dequantize_nodes": 1}

    x = torch.randn(32, 1, 6, 6)
    with torch.no_grad():
        reference = fp32(x)
        error = (reference - int8(x)).pow(2).mean()
    assert 10 * torch.log10(reference.pow(2).mean() / error) > 20


def test_convert_rejects_uncalibrated_observers(tmp_path: Path) -> None:
    _, ctx = _prepare(tmp_path, calibrated=False)
    with pytest.raises(StageError, match="saw no data"):
        load_stage("convert").run(ctx)
