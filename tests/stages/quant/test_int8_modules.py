"""Int8 modules against the numpy integer reference in quant_reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import quant_reference as ref
from stages.quant.arithmetic import QParams, dequantize, quantize
from stages.quant.modules import (
    Dequantize,
    QuantAdaptiveAvgPool2d,
    QuantAdd,
    QuantAvgPool2d,
    QuantConv2d,
    QuantLinear,
    QuantMaxPool2d,
    QuantReLU,
    Quantize,
)

UINT8_IN = QParams(ref.f32(0.031), 117, "uint8")
UINT8_OUT = QParams(ref.f32(0.047), 102, "uint8")
INT8_IN = QParams(ref.f32(0.029), 0, "int8")
INT8_OUT = QParams(ref.f32(0.051), 0, "int8")


def _random_q(shape: tuple[int, ...], qparams: QParams, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(qparams.qmin, qparams.qmax + 1, shape, generator=generator).to(qparams.torch_dtype)


CONV_CASES = [
    # in_channels, out_channels, kernel, stride, padding, dilation, groups, relu
    (3, 8, 3, 1, 1, 1, 1, False),
    (3, 8, 3, 1, 1, 1, 1, True),
    (4, 6, 3, 2, 0, 2, 2, True),
    (8, 8, 3, 1, 1, 1, 8, False),
    (5, 4, 1, 1, 0, 1, 1, True),
    (6, 6, (3, 1), (2, 1), (1, 0), 1, 3, False),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("qparams", [(UINT8_IN, UINT8_OUT), (INT8_IN, INT8_OUT)], ids=["uint8", "int8"])
def test_conv_matches_numpy(case: tuple, qparams: tuple[QParams, QParams]) -> None:
    in_channels, out_channels, kernel, stride, padding, dilation, groups, relu = case
    input_qparams, output_qparams = qparams
    torch.manual_seed(1)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias=True)
    module = QuantConv2d(conv, input_qparams, output_qparams, relu=relu)
    x = _random_q((2, in_channels, 9, 7), input_qparams, seed=2)

    weight_q, weight_scale = ref.weight_qparams(conv.weight.detach().numpy())
    bias_scale = (np.float32(input_qparams.scale) * weight_scale).astype(np.float32)
    bias_q = np.rint(conv.bias.detach().numpy().astype(np.float64) / bias_scale.astype(np.float64)).astype(np.int64)
    acc = ref.conv2d_int(
        x.numpy().astype(np.int64) - input_qparams.zero_point,
        weight_q,
        bias_q,
        module.stride,
        module.padding,
        module.dilation,
        groups,
    )
    multiplier = ref.mlas_multiplier(input_qparams.scale, weight_scale, output_qparams.scale)
    expected = ref.mlas_requantize(acc, multiplier.reshape(1, -1, 1, 1), output_qparams.zero_point, output_qparams.dtype, relu)

    actual = module(x)
    assert actual.dtype == output_qparams.torch_dtype
    assert np.array_equal(module.weight.numpy(), weight_q)
    assert np.array_equal(module.bias.numpy(), bias_q)
    assert np.array_equal(actual.numpy().astype(np.int64), expected)


def test_conv_close_to_float() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    input_qparams = QParams(ref.f32(8.0 / 255), 128, "uint8")
    output_qparams = QParams(ref.f32(6.0 / 255), 128, "uint8")
    module = QuantConv2d(conv, input_qparams, output_qparams)

    actual = dequantize(module(quantize(x.clamp(-3.9, 3.9), input_qparams)), output_qparams)
    expected = conv(x.clamp(-3.9, 3.9)).detach().clamp(-128 * output_qparams.scale, 127 * output_qparams.scale)

    # Input rounding (half a step times the weight norm) dominates the error.
    assert (actual - expected).abs().max() < 0.15


def test_conv_rejects_overflowing_accumulator() -> None:
    conv = nn.Conv2d(512, 1, 23, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    with pytest.raises(ValueError, match="int32 accumulator may overflow"):
        QuantConv2d(conv, UINT8_IN, UINT8_OUT)


@pytest.mark.parametrize("relu", [False, True])
def test_linear_matches_numpy(relu: bool) -> None:
    torch.manual_seed(4)
    linear = nn.Linear(37, 11)
    module = QuantLinear(linear, UINT8_IN, UINT8_OUT, relu=relu)
    x = _random_q((5, 37), UINT8_IN, seed=5)

    weight_q, weight_scale = ref.weight_qparams(linear.weight.detach().numpy())
    bias_scale = (np.float32(UINT8_IN.scale) * weight_scale).astype(np.float64)
    bias_q = np.rint(linear.bias.detach().numpy().astype(np.float64) / bias_scale).astype(np.int64)
    acc = (x.numpy().astype(np.int64) - UINT8_IN.zero_point) @ weight_q.T + bias_q
    multiplier = ref.mlas_multiplier(UINT8_IN.scale, weight_scale, UINT8_OUT.scale)
    expected = ref.mlas_requantize(acc, multiplier, UINT8_OUT.zero_point, "uint8", relu)

    assert np.array_equal(module(x).numpy().astype(np.int64), expected)


def test_linear_per_tensor_weights_share_one_scale() -> None:
    torch.manual_seed(6)
    linear = nn.Linear(8, 4)
    module = QuantLinear(linear, UINT8_IN, UINT8_OUT, per_channel=False)
    expected = np.float32(np.abs(linear.weight.detach().numpy()).max() / 127.0)
    assert np.allclose(module.weight_scale.numpy(), expected, rtol=1e-7)


@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_numpy(relu: bool) -> None:
    a_qparams = QParams(ref.f32(0.02), 130, "uint8")
    b_qparams = QParams(ref.f32(0.035), 90, "uint8")
    module = QuantAdd(a_qparams, b_qparams, UINT8_OUT, relu=relu)
    a = _random_q((2, 3, 4, 4), a_qparams, seed=7)
    b = _random_q((2, 3, 4, 4), b_qparams, seed=8)

    expected = ref.mlas_add(a.numpy(), a_qparams.scale, 130, b.numpy(), b_qparams.scale, 90, UINT8_OUT.scale, UINT8_OUT.zero_point, "uint8")
    if relu:
        # The output zero point is not 0, so onnxruntime keeps the Relu and runs the float path.
        real = np.maximum(ref.dequantize(a.numpy(), a_qparams.scale, 130) + ref.dequantize(b.numpy(), b_qparams.scale, 90), 0)
        expected = ref.quantize(real, UINT8_OUT.scale, UINT8_OUT.zero_point, "uint8")

    assert np.array_equal(module(a, b).numpy().astype(np.int64), expected)


def test_add_relu_with_zero_point_zero_clamps() -> None:
    output = QParams(ref.f32(0.05), 0, "uint8")
    module = QuantAdd(UINT8_IN, UINT8_OUT, output, relu=True)
    a = _random_q((2, 3, 9, 9), UINT8_IN, seed=17)
    b = _random_q((2, 3, 9, 9), UINT8_OUT, seed=18)
    expected = ref.mlas_add(a.numpy(), UINT8_IN.scale, UINT8_IN.zero_point, b.numpy(), UINT8_OUT.scale, UINT8_OUT.zero_point, output.scale, 0, "uint8")
    actual = module(a, b).numpy().astype(np.int64)
    assert np.array_equal(actual, expected)
    assert actual.min() == 0


def test_relu_requantizes_to_output_qparams() -> None:
    module = QuantReLU(UINT8_IN, UINT8_OUT)
    x = _random_q((3, 50), UINT8_IN, seed=9)
    real = np.maximum(ref.dequantize(x.numpy(), UINT8_IN.scale, UINT8_IN.zero_point), 0.0)
    expected = ref.quantize(real, UINT8_OUT.scale, UINT8_OUT.zero_point, "uint8")
    assert np.array_equal(module(x).numpy().astype(np.int64), expected)


def test_relu_with_equal_qparams_clamps_at_zero_point() -> None:
    x = _random_q((4, 40), UINT8_IN, seed=10)
    expected = np.maximum(x.numpy(), UINT8_IN.zero_point)
    assert np.array_equal(QuantReLU(UINT8_IN, UINT8_IN)(x).numpy(), expected)


def test_maxpool_is_integer_max() -> None:
    x = _random_q((1, 2, 6, 6), UINT8_IN, seed=11)
    module = QuantMaxPool2d(nn.MaxPool2d(2, 2), UINT8_IN)
    windows = x.numpy().reshape(1, 2, 3, 2, 3, 2)
    assert np.array_equal(module(x).numpy(), windows.max(axis=(3, 5)))
    assert module(x).dtype == torch.uint8


def test_maxpool_padding_is_never_selected() -> None:
    x = torch.zeros(1, 1, 4, 4, dtype=torch.int8)
    module = QuantMaxPool2d(nn.MaxPool2d(3, 2, padding=1), INT8_IN)
    assert module(x).eq(0).all()


def test_avgpool_matches_numpy() -> None:
    x = _random_q((2, 3, 6, 6), UINT8_IN, seed=12)
    module = QuantAvgPool2d(nn.AvgPool2d(2, 2), UINT8_IN, UINT8_OUT)
    real = ref.dequantize(x.numpy(), UINT8_IN.scale, UINT8_IN.zero_point)
    mean = real.reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5), dtype=np.float32)
    expected = ref.quantize(mean, UINT8_OUT.scale, UINT8_OUT.zero_point, "uint8")
    assert np.array_equal(module(x).numpy().astype(np.int64), expected)


def test_avgpool_padding_counts_as_real_zero() -> None:
    x = torch.full((1, 1, 2, 2), UINT8_IN.zero_point + 40, dtype=torch.uint8)
    module = QuantAvgPool2d(nn.AvgPool2d(2, 2, padding=1, count_include_pad=True), UINT8_IN, UINT8_IN)
    # Each corner window holds one value 40 steps above zero and three padded zeros.
    assert module(x).eq(UINT8_IN.zero_point + 10).all()


def test_adaptive_avgpool_matches_numpy() -> None:
    x = _random_q((2, 4, 5, 5), UINT8_IN, seed=13)
    module = QuantAdaptiveAvgPool2d((1, 1), UINT8_IN, UINT8_OUT)
    acc = (x.numpy().astype(np.int64) - UINT8_IN.zero_point).sum(axis=(2, 3), keepdims=True)
    multiplier = np.float32(UINT8_IN.scale) / (np.float32(UINT8_OUT.scale) * np.float32(25))
    expected = ref.mlas_requantize(acc, multiplier, UINT8_OUT.zero_point, "uint8", False)
    assert np.array_equal(module(x).numpy().astype(np.int64), expected)


@pytest.mark.parametrize("qparams", [UINT8_IN, INT8_IN], ids=["uint8", "int8"])
def test_quantize_dequantize_match_numpy(qparams: QParams) -> None:
    x = torch.linspace(-6, 6, 1001)
    q = Quantize(qparams)(x)
    expected = ref.quantize(x.numpy(), qparams.scale, qparams.zero_point, qparams.dtype)
    assert q.dtype == qparams.torch_dtype
    assert np.array_equal(q.numpy().astype(np.int64), expected)
    restored = Dequantize(qparams)(q).numpy()
    assert np.allclose(restored, (expected - qparams.zero_point) * np.float32(qparams.scale), atol=0, rtol=1e-6)


def test_quantize_rounds_half_to_even() -> None:
    qparams = QParams(1.0, 0, "int8")
    q = Quantize(qparams)(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0]))
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_long_dot_products_stay_exact() -> None:
    """Fan-in 4608 and 2048: partial sums pass 2**24, so the modules sum float32 chunks in float64."""
    torch.manual_seed(11)
    conv = nn.Conv2d(512, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.abs_()
    input_qparams = QParams(ref.f32(0.01), 0, "uint8")
    module = QuantConv2d(conv, input_qparams, UINT8_OUT)
    x = torch.full((1, 512, 3, 3), 255, dtype=torch.uint8)
    x[0, :, 1, 1] = torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(12)).to(torch.uint8)
    weight_q, _ = ref.weight_qparams(conv.weight.detach().numpy())
    acc = ref.conv2d_int(x.numpy().astype(np.int64), weight_q, module.bias.numpy(), (1, 1), (1, 1), (1, 1), 1)
    expected = ref.mlas_requantize(acc, module.multiplier.numpy().reshape(1, -1, 1, 1), UINT8_OUT.zero_point, "uint8", False)

    assert module.exact_float32 is False
    assert 0 < module.chunk_features < 4608
    assert np.abs(acc).max() > 2**24
    assert np.array_equal(module(x).numpy().astype(np.int64), expected)

    linear = nn.Linear(2048, 3)
    with torch.no_grad():
        linear.weight.abs_()
    module = QuantLinear(linear, input_qparams, UINT8_OUT)
    x = torch.randint(200, 256, (2, 2048), generator=torch.Generator().manual_seed(13)).to(torch.uint8)
    weight_q, _ = ref.weight_qparams(linear.weight.detach().numpy())
    acc = x.numpy().astype(np.int64) @ weight_q.T + module.bias.numpy().astype(np.int64)
    expected = ref.mlas_requantize(acc, module.multiplier.numpy(), UINT8_OUT.zero_point, "uint8", False)
    assert np.abs(acc).max() > 2**24
    assert np.array_equal(module(x).numpy().astype(np.int64), expected)
