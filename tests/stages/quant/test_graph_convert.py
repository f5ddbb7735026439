"""Conversion of observed GraphModules into int8 GraphModules, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import fx, nn

from quant_models import qconfig_for, tiny_resnet
from stages.artifacts import load_model, save_model
from stages.quant.calibration import calibrate, collect_stats
from stages.quant.convert import convert, load_calibration
from stages.quant.modules import Dequantize, QuantAdd, QuantConv2d, QuantLinear, Quantize
from stages.quant.observe import insert_observers


def _sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).mean() / (reference - actual).pow(2).mean()))


def _quantize(gm: fx.GraphModule, batches: list[torch.Tensor], **params) -> fx.GraphModule:
    observed, _ = insert_observers(gm, qconfig_for(gm, **params))
    calibrate(observed, batches)
    int8, _ = convert(observed)
    return int8


def _calibration_batches(seed: int = 1, count: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 1, 8, 8, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "entropy", "mse"])
def test_resnet_int8_close_to_fp32(observer: str) -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches(), activation_observer=observer)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        sqnr = _sqnr_db(gm(x), int8(x))
    assert sqnr > 20.0


def test_resnet_int8_symmetric_activations() -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches(), activation_dtype="int8")
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 20.0
    assert all(entry["dtype"] == "int8" for entry in int8.qparams.values())
    assert all(entry["zero_point"] == 0 for entry in int8.qparams.values())


def test_int8_graph_structure() -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches())
    modules = dict(int8.named_modules())
    kinds = [type(modules[node.target]) for node in int8.graph.nodes if node.op == "call_module"]

    assert kinds.count(QuantConv2d) == 6
    assert kinds.count(QuantAdd) == 2
    assert kinds.count(QuantLinear) == 1
    assert kinds.count(Quantize) == 1
    assert kinds.count(Dequantize) == 1
    assert not any(isinstance(module, nn.BatchNorm2d | nn.Conv2d | nn.ReLU) for module in modules.values())
    assert modules["conv1"].relu is True
    assert modules["layer1.0.conv2"].relu is False
    assert modules["add"].relu is True


def test_int8_tensors_flow_between_modules() -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches())
    seen: dict[str, torch.dtype] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            if isinstance(result, torch.Tensor):
                seen[node.name] = result.dtype
            return result

    Recorder(int8).run(torch.randn(2, 1, 8, 8))
    assert seen["x"] == torch.float32
    assert seen["fc_dequantize"] == torch.float32
    for name in int8.qparams:
        assert seen[name] == torch.uint8, name


def test_value_names_and_qparams() -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches())
    fp32_names = {node.name for node in gm.graph.nodes}

    assert int8.value_names["conv1"] == "relu"
    assert int8.value_names["layer1_0_conv2"] == "layer1_0_bn2"
    assert int8.value_names["add"] == "layer1_0_relu_1"
    assert int8.value_names["x_quantize"] == "x"
    assert set(int8.value_names.values()) <= fp32_names
    assert int8.qparams["flatten"] == int8.qparams["avgpool"]
    for entry in int8.qparams.values():
        assert set(entry) == {"scale", "zero_point", "dtype"}
        assert entry["scale"] > 0


def test_int8_module_predicts_its_own_qparams() -> None:
    """The output of each quantized node, dequantized with its qparams, tracks the fp32 value."""
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches())
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    fp32_values: dict[str, torch.Tensor] = {}
    int8_values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def __init__(self, module: fx.GraphModule, store: dict[str, torch.Tensor]) -> None:
            super().__init__(module)
            self.store = store

        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            self.store[node.name] = result
            return result

    with torch.no_grad():
        Recorder(gm, fp32_values).run(x)
        Recorder(int8, int8_values).run(x)

    for name, entry in int8.qparams.items():
        reference = fp32_values[int8.value_names[name]]
        dequantized = (int8_values[name].double() - entry["zero_point"]) * entry["scale"]
        assert _sqnr_db(reference.double(), dequantized) > 20.0, name


def test_skip_keeps_layer_float() -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches(), skip=["layer1.0.conv1"])
    modules = dict(int8.named_modules())
    node = next(node for node in int8.graph.nodes if node.name == "layer1_0_conv1")

    assert type(modules[node.target]) is nn.Conv2d
    assert isinstance(modules[node.args[0].target], Dequantize)
    assert "layer1_0_conv1" not in int8.qparams
    # The ReLU after it runs on integers again, behind a Quantize.
    relu = next(node for node in int8.graph.nodes if node.name == "layer1_0_relu")
    assert isinstance(modules[relu.args[0].target], Quantize)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 20.0


def test_unsupported_op_falls_back_to_float() -> None:
    class WithTanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(torch.tanh(self.conv(x)))

    torch.manual_seed(0)
    gm = fx.symbolic_trace(WithTanh().eval())
    int8 = _quantize(gm, _calibration_batches())
    modules = dict(int8.named_modules())
    tanh = next(node for node in int8.graph.nodes if node.name == "tanh")

    assert isinstance(modules[tanh.args[0].target], Dequantize)
    conv2 = next(node for node in int8.graph.nodes if node.name == "conv2")
    assert isinstance(modules[conv2.args[0].target], Quantize)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 20.0


def test_softmax_gets_fixed_output_qparams() -> None:
    class WithSoftmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(torch.softmax(self.conv(x), dim=1))

    torch.manual_seed(0)
    gm = fx.symbolic_trace(WithSoftmax().eval())
    int8 = _quantize(gm, _calibration_batches())
    modules = dict(int8.named_modules())
    softmax = next(node for node in int8.graph.nodes if node.name == "softmax")

    assert type(modules[softmax.target]).__name__ == "QuantSoftmax"
    assert int8.qparams["softmax"] == {"scale": 1.0 / 256.0, "zero_point": 0, "dtype": "uint8"}
    conv2 = next(node for node in int8.graph.nodes if node.name == "conv2")
    assert conv2.args[0] is softmax
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 20.0


def test_int8_activation_softmax_stays_float() -> None:
    class WithSoftmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.conv(x), dim=1)

    torch.manual_seed(0)
    gm = fx.symbolic_trace(WithSoftmax().eval())
    int8 = _quantize(gm, _calibration_batches(), activation_dtype="int8")
    modules = dict(int8.named_modules())
    softmax = next(node for node in int8.graph.nodes if node.name == "softmax")

    assert softmax.op == "call_function"
    assert isinstance(modules[softmax.args[0].target], Dequantize)
    assert "softmax" not in int8.qparams
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(int8(x), gm(x), atol=0.05, rtol=0)


def test_calibration_stats_reload_gives_same_model(tmp_path: Path) -> None:
    gm = tiny_resnet()
    observed, _ = insert_observers(gm, qconfig_for(gm, activation_observer="percentile"))
    save_model(observed, tmp_path, {"input_shape": [1, 1, 8, 8]})
    calibrate(observed, _calibration_batches())
    direct, _ = convert(observed)

    fresh = load_model(tmp_path)
    load_calibration(fresh, collect_stats(observed))
    reloaded, _ = convert(fresh)
    assert reloaded.qparams == direct.qparams


def test_int8_model_survives_save_and_load(tmp_path: Path) -> None:
    gm = tiny_resnet()
    int8 = _quantize(gm, _calibration_batches())
    save_model(int8, tmp_path, {"input_shape": [1, 1, 8, 8]})
    loaded = load_model(tmp_path)
    x = torch.randn(4, 1, 8, 8)

    assert loaded.value_names == int8.value_names
    assert loaded.qparams == int8.qparams
    assert torch.equal(loaded(x), int8(x))


def test_override_rules_reach_the_int8_model() -> None:
    gm = tiny_resnet()
    overrides = [
        {"match": "layer1.0.conv1", "activation_dtype": "int8"},
        {"op": "Linear", "per_channel": False, "weight_observer": "mse"},
        {"match": "layer1.1.*", "op": "Conv2d", "quantize": False},
    ]
    int8 = _quantize(gm, _calibration_batches(), overrides=overrides)
    modules = dict(int8.named_modules())

    assert int8.qparams["layer1_0_conv1"]["dtype"] == "int8"
    assert int8.qparams["conv1"]["dtype"] == "uint8"
    fc = modules["fc"]
    assert isinstance(fc, QuantLinear)
    assert torch.all(fc.weight_scale == fc.weight_scale[0])
    assert type(modules["layer1.1.conv1"]) is nn.Conv2d
    assert type(modules["layer1.1.conv2"]) is nn.Conv2d
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 20.0


def test_mixed_ops_convert_to_int8_modules() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.act = nn.Hardswish()
            self.gate = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.conv(x))
            a, b = torch.chunk(y, 2, dim=1)
            s = torch.sigmoid(self.gate(y).mean((2, 3), keepdim=True))
            z = torch.cat([b, a], dim=1) * s
            z = torch.nn.functional.relu6(z).permute(0, 2, 3, 1)
            return torch.matmul(z, z.transpose(2, 3)).flatten(1)

    torch.manual_seed(0)
    gm = fx.symbolic_trace(Mixed().eval())
    int8 = _quantize(gm, _calibration_batches())
    modules = dict(int8.named_modules())
    kinds = {type(modules[node.target]).__name__ for node in int8.graph.nodes if node.op == "call_module"}

    assert {"QuantHardswish", "QuantSigmoid", "QuantMean", "QuantCat", "QuantMul", "QuantReLU6", "QuantMatMul"} <= kinds
    assert kinds <= {"Quantize", "Dequantize", "QuantConv2d"} | {
        "QuantHardswish", "QuantSigmoid", "QuantMean", "QuantCat", "QuantMul", "QuantReLU6", "QuantMatMul"
    }
    for name in ("chunk", "getitem", "getitem_1", "permute", "transpose"):
        assert name in int8.qparams
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert _sqnr_db(gm(x), int8(x)) > 15.0
