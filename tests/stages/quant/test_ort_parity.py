"""Int8 modules against onnxruntime running the QDQ pattern each docstring names.

onnxruntime fuses DequantizeLinear -> Conv/Gemm/Add -> QuantizeLinear into
QLinearConv, QGemm and QLinearAdd; the modules must equal its integer
outputs exactly where it fuses, and within one step on the float QDQ path
(int8 activations, or a Relu it cannot drop).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from stages.quant.arithmetic import QParams, qlinear_mul
from stages.quant.modules import (
    QuantAdaptiveAvgPool2d,
    QuantAdd,
    QuantConv2d,
    QuantLinear,
    QuantMaskedSoftmax,
    QuantSoftmax,
    softmax_qparams,
)
from stages.quant.modules.tensor_ops import MASK_MARGIN
from stages.tracing.window_attention import shift_mask

ONNX_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8}


def _qparam_initializers(prefix: str, qparams: QParams) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array(qparams.scale, dtype=np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.array(qparams.zero_point, dtype=NUMPY_TYPES[qparams.dtype]), f"{prefix}_zero_point"),
    ]


def _weight_initializers(module: QuantConv2d | QuantLinear) -> list[onnx.TensorProto]:
    out_channels = module.weight.shape[0]
    return [
        numpy_helper.from_array(module.weight.numpy(), "w"),
        numpy_helper.from_array(module.weight_scale.numpy(), "w_scale"),
        numpy_helper.from_array(np.zeros(out_channels, dtype=np.int8), "w_zero_point"),
        numpy_helper.from_array(module.bias.numpy(), "b"),
        numpy_helper.from_array(module.bias_scale.numpy(), "b_scale"),
        numpy_helper.from_array(np.zeros(out_channels, dtype=np.int32), "b_zero_point"),
    ]


def _run(nodes: list, initializers: list, inputs: dict[str, np.ndarray], output: torch.Tensor) -> np.ndarray:
    graph_inputs = [
        helper.make_tensor_value_info(name, ONNX_TYPES[str(value.dtype)], list(value.shape)) for name, value in inputs.items()
    ]
    graph = helper.make_graph(
        nodes, "qdq", graph_inputs, [helper.make_tensor_value_info("y", ONNX_TYPES[str(output.numpy().dtype)], list(output.shape))], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
    )
    return session.run(["y"], inputs)[0]


def _weighted_nodes(op: str, relu: bool, attributes: dict) -> list:
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_float"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero_point"], ["w_float"], axis=0),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero_point"], ["b_float"], axis=0),
        helper.make_node(op, ["x_float", "w_float", "b_float"], ["acc"], **attributes),
    ]
    if relu:
        nodes.append(helper.make_node("Relu", ["acc"], ["acc_relu"]))
    nodes.append(helper.make_node("QuantizeLinear", ["acc_relu" if relu else "acc", "y_scale", "y_zero_point"], ["y"]))
    return nodes


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("groups,dilation,relu", [(1, 1, False), (1, 2, True), (4, 1, True), (8, 1, False)])
def test_conv_predicts_onnxruntime(dtype: str, groups: int, dilation: int, relu: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16 if groups != 8 else 8, 3, stride=1, padding=1, dilation=dilation, groups=groups)
    zero_point = 121 if dtype == "uint8" else 0
    input_qparams = QParams(float(np.float32(0.023)), zero_point, dtype)
    output_qparams = QParams(float(np.float32(0.041)), 98 if dtype == "uint8" else 0, dtype)
    module = QuantConv2d(conv, input_qparams, output_qparams, relu=relu)
    x = torch.randint(input_qparams.qmin, input_qparams.qmax + 1, (2, 8, 10, 10)).to(input_qparams.torch_dtype)

    nodes = _weighted_nodes(
        "Conv", relu, {"pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [dilation] * 2, "group": groups, "kernel_shape": [3, 3]}
    )
    initializers = _qparam_initializers("x", input_qparams) + _qparam_initializers("y", output_qparams) + _weight_initializers(module)
    actual_tensor = module(x)
    expected = _run(nodes, initializers, {"x": x.numpy()}, actual_tensor).astype(np.int64)

    actual = actual_tensor.numpy().astype(np.int64)
    assert np.abs(actual - expected).max() <= 1
    assert np.mean(actual == expected) > 0.99
    if dtype == "uint8" and not relu:
        assert np.array_equal(actual, expected)


@pytest.mark.parametrize("relu", [False, True])
def test_wide_conv_equals_qlinearconv(relu: bool) -> None:
    """256 output channels with spread scales, accumulators above 2**24: bit-exact."""
    torch.manual_seed(3)
    conv = nn.Conv2d(96, 256, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-2, 1, 256).reshape(-1, 1, 1, 1))
        conv.bias.mul_(5.0)
    input_qparams = QParams(float(np.float32(0.0173)), 117, "uint8")
    output_qparams = QParams(float(np.float32(0.31)), 0 if relu else 131, "uint8")
    module = QuantConv2d(conv, input_qparams, output_qparams, relu=relu)
    x = torch.randint(0, 256, (2, 96, 12, 12), generator=torch.Generator().manual_seed(4)).to(torch.uint8)

    nodes = _weighted_nodes("Conv", relu, {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]})
    initializers = _qparam_initializers("x", input_qparams) + _qparam_initializers("y", output_qparams) + _weight_initializers(module)
    actual = module(x)
    expected = _run(nodes, initializers, {"x": x.numpy()}, actual)

    assert np.array_equal(actual.numpy(), expected)


@pytest.mark.parametrize("relu", [False, True])
def test_linear_predicts_onnxruntime(relu: bool) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(64, 10)
    input_qparams = QParams(float(np.float32(0.02)), 130, "uint8")
    output_qparams = QParams(float(np.float32(0.05)), 120, "uint8")
    module = QuantLinear(linear, input_qparams, output_qparams, relu=relu)
    x = torch.randint(0, 256, (16, 64)).to(torch.uint8)

    nodes = _weighted_nodes("Gemm", relu, {"transB": 1})
    initializers = _qparam_initializers("x", input_qparams) + _qparam_initializers("y", output_qparams) + _weight_initializers(module)
    actual = module(x)
    expected = _run(nodes, initializers, {"x": x.numpy()}, actual)

    assert np.array_equal(actual.numpy(), expected)


@pytest.mark.parametrize(
    "dtype,relu,output_zero_point", [("uint8", False, 100), ("uint8", True, 100), ("uint8", True, 0), ("int8", False, 0)]
)
def test_add_equals_qlinearadd(dtype: str, relu: bool, output_zero_point: int) -> None:
    """Every pair of input values, for several scale triples."""
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    grid_a, grid_b = torch.meshgrid(torch.arange(qmin, qmax + 1), torch.arange(qmin, qmax + 1), indexing="ij")
    a = grid_a.reshape(1, -1).to(getattr(torch, dtype))
    b = grid_b.reshape(1, -1).to(getattr(torch, dtype))
    for scales in [(0.021, 0.034, 0.047), (0.0113, 0.0297, 0.0311), (0.5, 0.01, 0.07)]:
        a_qparams = QParams(float(np.float32(scales[0])), 140 if dtype == "uint8" else 0, dtype)
        b_qparams = QParams(float(np.float32(scales[1])), 70 if dtype == "uint8" else 0, dtype)
        output_qparams = QParams(float(np.float32(scales[2])), output_zero_point, dtype)
        _check_add(QuantAdd(a_qparams, b_qparams, output_qparams, relu=relu), a, b)


def test_add_matches_qlinearadd_random_qparams() -> None:
    """Every pair of uint8 values for 40 seeded scale and zero point triples.

    With the kernel's offset computed without its fused multiply-add, 6 of
    these 2.6 million sums round to the other side of a half.
    """
    grid_a, grid_b = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    a = grid_a.reshape(1, -1).to(torch.uint8)
    b = grid_b.reshape(1, -1).to(torch.uint8)
    rng = np.random.default_rng(1)
    for _ in range(40):
        a_qparams, b_qparams, output_qparams = (
            QParams(float(np.float32(rng.uniform(0.005, high))), int(rng.integers(0, 256)), "uint8") for high in (0.2, 0.2, 0.3)
        )
        _check_add(QuantAdd(a_qparams, b_qparams, output_qparams), a, b)


def _check_add(module: QuantAdd, a: torch.Tensor, b: torch.Tensor) -> None:
    a_qparams, b_qparams, output_qparams, relu = module.a_qparams, module.b_qparams, module.output_qparams, module.relu

    nodes = [
        helper.make_node("DequantizeLinear", ["a", "a_scale", "a_zero_point"], ["a_float"]),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero_point"], ["b_float"]),
        helper.make_node("Add", ["a_float", "b_float"], ["sum"]),
    ]
    if relu:
        nodes.append(helper.make_node("Relu", ["sum"], ["sum_relu"]))
    nodes.append(helper.make_node("QuantizeLinear", ["sum_relu" if relu else "sum", "y_scale", "y_zero_point"], ["y"]))
    initializers = (
        _qparam_initializers("a", a_qparams) + _qparam_initializers("b", b_qparams) + _qparam_initializers("y", output_qparams)
    )
    actual = module(a, b)
    expected = _run(nodes, initializers, {"a": a.numpy(), "b": b.numpy()}, actual)

    assert np.array_equal(actual.numpy(), expected)


def test_global_average_pool_equals_onnxruntime() -> None:
    input_qparams = QParams(float(np.float32(0.037)), 121, "uint8")
    output_qparams = QParams(float(np.float32(0.011)), 17, "uint8")
    module = QuantAdaptiveAvgPool2d((1, 1), input_qparams, output_qparams)
    x = torch.randint(0, 256, (4, 64, 7, 7), generator=torch.Generator().manual_seed(5)).to(torch.uint8)

    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_float"]),
        helper.make_node("GlobalAveragePool", ["x_float"], ["mean"]),
        helper.make_node("QuantizeLinear", ["mean", "y_scale", "y_zero_point"], ["y"]),
    ]
    initializers = _qparam_initializers("x", input_qparams) + _qparam_initializers("y", output_qparams)
    actual = module(x)
    expected = _run(nodes, initializers, {"x": x.numpy()}, actual)

    assert np.array_equal(actual.numpy(), expected)


@pytest.mark.slow
def test_resnet18_int8_equals_onnxruntime() -> None:
    """A deep model: errors would compound over 20 layers, so every output must match."""
    from stages.onnx.emitter import export_graph_module
    from stages.onnx.exporter import output_quantization_steps
    from stages.onnx.parity import chunk_inputs, compare_outputs, create_session
    from torchvision_quant import quantize_model, torchvision_fp32

    shape = [4, 3, 64, 64]
    int8, _ = quantize_model(torchvision_fp32("resnet18", shape), shape, calibration_batches=4)
    inputs = np.random.default_rng(3).standard_normal((16, 3, 64, 64)).astype(np.float32)
    model = export_graph_module(int8, torch.from_numpy(inputs[:4]), opset=17)

    comparison = compare_outputs(create_session(model), int8, chunk_inputs(inputs, 4), output_quantization_steps(int8))

    assert comparison.within_one_step_pct is not None
    assert comparison.within_one_step_pct >= 99.9
    assert comparison.max_abs_diff == 0.0


@pytest.mark.parametrize(("scale", "zero_point", "length"), [(0.021, 131, 197), (0.08, 40, 49), (0.5, 200, 7)])
def test_softmax_equals_qlinearsoftmax(scale: float, zero_point: int, length: int) -> None:
    input_qparams = QParams(float(np.float32(scale)), zero_point, "uint8")
    module = QuantSoftmax(input_qparams, softmax_qparams(), dim=-1)
    generator = torch.Generator().manual_seed(length)
    x = torch.randint(0, 256, (2, 3, 5, length), generator=generator).to(torch.uint8)
    expected = module(x)

    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_float"]),
        helper.make_node("Softmax", ["x_float"], ["probabilities"], axis=-1),
        helper.make_node("QuantizeLinear", ["probabilities", "y_scale", "y_zero_point"], ["y"]),
    ]
    initializers = _qparam_initializers("x", input_qparams) + _qparam_initializers("y", softmax_qparams())
    actual = _run(nodes, initializers, {"x": x.numpy()}, expected)

    assert np.array_equal(actual, expected.numpy())


@pytest.mark.parametrize(("scale", "zero_point"), [(0.06, 140), (0.3, 250), (0.01, 0)])
def test_masked_softmax_equals_onnxruntime(scale: float, zero_point: int) -> None:
    mask = shift_mask((14, 14), [7, 7], [3, 3])
    windows, heads, length = mask.shape[0], 3, mask.shape[-1]
    input_qparams = QParams(float(np.float32(scale)), zero_point, "uint8")
    module = QuantMaskedSoftmax(input_qparams, softmax_qparams(), mask, windows)
    generator = torch.Generator().manual_seed(zero_point)
    x = torch.randint(0, 256, (2 * windows, heads, length, length), generator=generator).to(torch.uint8)
    expected = module(x)

    nodes = [
        helper.make_node("Reshape", ["x", "per_window_shape"], ["per_window"]),
        helper.make_node("DequantizeLinear", ["per_window", "x_scale", "x_zero_point"], ["scores"]),
        helper.make_node("DequantizeLinear", ["mask", "mask_scale", "mask_zero_point"], ["mask_float"]),
        helper.make_node("Add", ["scores", "mask_float"], ["masked"]),
        helper.make_node("QuantizeLinear", ["masked", "masked_scale", "masked_zero_point"], ["masked_q"]),
        helper.make_node("Reshape", ["masked_q", "flat_shape"], ["flat"]),
        helper.make_node("DequantizeLinear", ["flat", "masked_scale", "masked_zero_point"], ["flat_float"]),
        helper.make_node("Softmax", ["flat_float"], ["probabilities"], axis=-1),
        helper.make_node("QuantizeLinear", ["probabilities", "y_scale", "y_zero_point"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, windows, heads, length, length], dtype=np.int64), "per_window_shape"),
        numpy_helper.from_array(np.array([-1, heads, length, length], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(module.mask.numpy(), "mask"),
        *_qparam_initializers("x", input_qparams),
        *_qparam_initializers("mask", module.mask_qparams),
        *_qparam_initializers("masked", module.masked_qparams),
        *_qparam_initializers("y", softmax_qparams()),
    ]
    actual = _run(nodes, initializers, {"x": x.numpy()}, expected)

    assert np.array_equal(actual, expected.numpy())


def test_masked_softmax_drops_masked_pairs() -> None:
    """Masked pairs get probability 0; the rest follow float64 softmax of the requantized masked scores."""
    mask = shift_mask((14, 14), [7, 7], [3, 3])
    windows, heads, length = mask.shape[0], 2, mask.shape[-1]
    input_qparams = QParams(float(np.float32(0.05)), 128, "uint8")
    module = QuantMaskedSoftmax(input_qparams, softmax_qparams(), mask, windows)
    x = torch.randint(0, 256, (windows, heads, length, length), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    probabilities = module(x).numpy().astype(np.float64) / 256.0

    masked_qparams = module.masked_qparams
    assert masked_qparams.scale * (0 - masked_qparams.zero_point) <= input_qparams.scale * (0 - 128) - MASK_MARGIN + masked_qparams.scale
    scores = (x.numpy().astype(np.float64) - 128) * input_qparams.scale + mask.numpy()
    levels = np.clip(np.rint(scores / masked_qparams.scale) + masked_qparams.zero_point, 0, 255)
    requantized = (levels - masked_qparams.zero_point) * masked_qparams.scale
    reference = np.exp(requantized - requantized.max(axis=-1, keepdims=True))
    reference /= reference.sum(axis=-1, keepdims=True)

    dropped = np.broadcast_to(mask.numpy() < 0, probabilities.shape)
    assert dropped.any()
    assert np.all(probabilities[dropped] == 0.0)
    within_one_step = np.abs(probabilities - reference) <= 1.0 / 256.0 + 1e-12
    assert within_one_step.mean() >= 0.999


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("scales", [(0.043, 1.0 / 255.0, 0.027), (0.02, 0.05, 0.01)])
@pytest.mark.parametrize("broadcast", [False, True])
def test_mul_equals_qlinearmul(dtype: str, scales: tuple[float, float, float], broadcast: bool) -> None:
    """Every pair of input values. With the second scales, a float path rounds 279 of them apart."""
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    shift = 0 if dtype == "uint8" else -128
    a_qparams = QParams(float(np.float32(scales[0])), 131 + shift, dtype)
    b_qparams = QParams(float(np.float32(scales[1])), 0 + shift, dtype)
    output = QParams(float(np.float32(scales[2])), 40 + shift, dtype)
    values = torch.arange(qmin, qmax + 1)
    a = values.repeat(256, 1).to(a_qparams.torch_dtype)
    b = (values[:, None] if broadcast else values[:, None].repeat(1, 256)).to(b_qparams.torch_dtype)
    expected = qlinear_mul(a, a_qparams, b, b_qparams, output)

    nodes = [
        helper.make_node("DequantizeLinear", ["a", "a_scale", "a_zero_point"], ["a_float"]),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero_point"], ["b_float"]),
        helper.make_node("Mul", ["a_float", "b_float"], ["product"]),
        helper.make_node("QuantizeLinear", ["product", "y_scale", "y_zero_point"], ["y"]),
    ]
    initializers = _qparam_initializers("a", a_qparams) + _qparam_initializers("b", b_qparams) + _qparam_initializers("y", output)
    actual = _run(nodes, initializers, {"a": a.numpy(), "b": b.numpy()}, expected)

    assert np.array_equal(actual, expected.numpy())
