"""Int8 modules of the elementwise, mul, matmul, cat and mean families against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import quant_reference as ref
from stages.quant.arithmetic import QParams, weight_scales
from stages.quant.modules import (
    QuantBatchNorm2d,
    QuantCat,
    QuantGELU,
    QuantHardsigmoid,
    QuantHardswish,
    QuantMatMul,
    QuantMean,
    QuantMul,
    QuantReLU6,
    QuantSigmoid,
    QuantSiLU,
    gate_qparams,
)

IN = QParams(ref.f32(0.043), 131, "uint8")
OUT = QParams(ref.f32(0.021), 40, "uint8")
OTHER = QParams(ref.f32(0.017), 90, "uint8")
SYMMETRIC = QParams(ref.f32(0.037), 0, "int8")


def _all_values(qparams: QParams) -> torch.Tensor:
    return torch.arange(qparams.qmin, qparams.qmax + 1).to(qparams.torch_dtype).reshape(1, -1)


def _random_q(shape: tuple[int, ...], qparams: QParams, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(qparams.qmin, qparams.qmax + 1, shape, generator=generator).to(qparams.torch_dtype)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _np_normal_cdf(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * (1.0 + erf(x.astype(np.float64) / math.sqrt(2.0)))


def _np_hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


ELEMENTWISE = [
    (QuantReLU6, lambda x: np.clip(x, 0.0, 6.0)),
    (QuantHardsigmoid, _np_hardsigmoid),
    (QuantSigmoid, _np_sigmoid),
]
# x * gate(x), with the gate quantized to 256 levels on [0, 1] before the product.
GATED = [
    (QuantHardswish, _np_hardsigmoid),
    (QuantSiLU, _np_sigmoid),
]


def _np_erf_core(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2.0))


def _np_tanh_core(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))


# GELU's gate (1 + core(x)) / 2, the core quantized at 1/127 on [-1, 1].
GELU_CORES = [("none", _np_erf_core), ("tanh", _np_tanh_core)]


@pytest.mark.parametrize("cls,function", ELEMENTWISE, ids=[cls.__name__ for cls, _ in ELEMENTWISE])
@pytest.mark.parametrize("input_qparams,output_qparams", [(IN, OUT), (SYMMETRIC, SYMMETRIC)], ids=["uint8", "int8"])
def test_elementwise_matches_numpy_table(cls, function, input_qparams: QParams, output_qparams: QParams) -> None:
    """Every input value: quantize(f(dequantize(q))), to one step where float32 and float64 round apart."""
    x = _all_values(input_qparams)
    real = ref.dequantize(x.numpy(), input_qparams.scale, input_qparams.zero_point)
    expected = ref.quantize(function(real).astype(np.float32), output_qparams.scale, output_qparams.zero_point, output_qparams.dtype)

    actual = cls(input_qparams, output_qparams)(x)

    assert actual.dtype == output_qparams.torch_dtype
    difference = np.abs(actual.numpy().astype(np.int64) - expected)
    assert difference.max() <= 1
    assert np.mean(difference == 0) > 0.98


@pytest.mark.parametrize("cls,gate", GATED, ids=[cls.__name__.lstrip("_") for cls, _ in GATED])
@pytest.mark.parametrize("qparams", [IN, SYMMETRIC], ids=["uint8", "int8"])
def test_gated_matches_two_step_numpy(cls, gate, qparams: QParams) -> None:
    """Every input value: quantize(x * dequantize(quantize(gate(x), 1/255))), to one step."""
    x = _all_values(qparams)
    real = ref.dequantize(x.numpy(), qparams.scale, qparams.zero_point)
    gate_zero_point = 0 if qparams.dtype == "uint8" else -128
    gate_scale = ref.f32(1.0 / 255.0)
    gate_q = ref.quantize(gate(real).astype(np.float32), gate_scale, gate_zero_point, qparams.dtype)
    product = real * ref.dequantize(gate_q, gate_scale, gate_zero_point)
    expected = ref.quantize(product.astype(np.float32), OUT.scale, OUT.zero_point, "uint8")

    actual = cls(qparams, OUT)(x)

    assert actual.dtype == torch.uint8
    difference = np.abs(actual.numpy().astype(np.int64) - expected)
    assert difference.max() <= 1
    assert np.mean(difference == 0) > 0.98


@pytest.mark.parametrize("approximate,core", GELU_CORES, ids=[name for name, _ in GELU_CORES])
@pytest.mark.parametrize("qparams", [IN, SYMMETRIC], ids=["uint8", "int8"])
def test_gelu_matches_quantized_core_numpy(approximate: str, core, qparams: QParams) -> None:
    """Every input value: quantize(x * (1 + dequantize(quantize(core(x), 1/127))) / 2), to one step."""
    x = _all_values(qparams)
    real = ref.dequantize(x.numpy(), qparams.scale, qparams.zero_point)
    core_zero_point = 127 if qparams.dtype == "uint8" else 0
    core_scale = ref.f32(1.0 / 127.0)
    core_q = ref.quantize(core(real).astype(np.float32), core_scale, core_zero_point, qparams.dtype)
    gate = (1.0 + ref.dequantize(core_q, core_scale, core_zero_point)) / 2.0
    expected = ref.quantize((real * gate).astype(np.float32), OUT.scale, OUT.zero_point, "uint8")

    actual = QuantGELU(qparams, OUT, approximate)(x)

    assert actual.dtype == torch.uint8
    difference = np.abs(actual.numpy().astype(np.int64) - expected)
    assert difference.max() <= 1
    assert np.mean(difference == 0) > 0.98


@pytest.mark.parametrize("qparams", [IN, SYMMETRIC], ids=["uint8", "int8"])
def test_gelu_gate_reads_core_integers(qparams: QParams) -> None:
    module = QuantGELU(qparams, OUT)
    levels = np.arange(module.core_qparams.qmin, module.core_qparams.qmax + 1)
    core = ref.dequantize(levels, module.core_qparams.scale, module.core_qparams.zero_point)
    gate = ref.dequantize(levels, module.gate_qparams.scale, module.gate_qparams.zero_point)
    # float32(1/127) * 127 differs from 1 by float32 rounding, so the two agree to within that rounding.
    np.testing.assert_allclose(gate, (1.0 + core) / 2.0, rtol=0, atol=1e-7)
    assert core.min() <= -1.0
    assert core.max() >= 1.0


def test_gate_qparams_cover_zero_to_one() -> None:
    for dtype in ("uint8", "int8"):
        qparams = gate_qparams(dtype)
        assert ref.dequantize(np.array([qparams.qmin, qparams.qmax]), qparams.scale, qparams.zero_point).tolist() == pytest.approx([0.0, 1.0])


def test_relu6_saturates_at_six() -> None:
    wide = QParams(ref.f32(0.1), 0, "uint8")
    output = QParams(ref.f32(6.0 / 255), 0, "uint8")
    x = torch.tensor([[255, 0, 20, 61]], dtype=torch.uint8)
    assert QuantReLU6(wide, output)(x).tolist() == [[255, 0, 85, 255]]


def test_batchnorm_matches_numpy() -> None:
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    x = _random_q((2, 3, 4, 4), IN, seed=1)
    real = ref.dequantize(x.numpy(), IN.scale, IN.zero_point).astype(np.float64)
    mean = np.array([0.5, -1.0, 0.0]).reshape(1, 3, 1, 1)
    var = np.array([2.0, 0.5, 1.0]).reshape(1, 3, 1, 1)
    gamma = np.array([1.5, -0.5, 1.0]).reshape(1, 3, 1, 1)
    beta = np.array([0.1, 0.2, -0.3]).reshape(1, 3, 1, 1)
    normalized = (real - mean) / np.sqrt(var + bn.eps) * gamma + beta
    expected = ref.quantize(normalized.astype(np.float32), OUT.scale, OUT.zero_point, "uint8")

    actual = QuantBatchNorm2d(bn, IN, OUT)(x).numpy().astype(np.int64)

    assert np.abs(actual - expected).max() <= 1
    assert np.mean(actual == expected) > 0.98


def test_mul_matches_numpy_with_broadcast() -> None:
    a = _random_q((2, 4, 5, 5), IN, seed=2)
    b = _random_q((2, 4, 1, 1), OTHER, seed=3)
    product = ref.dequantize(a.numpy(), IN.scale, IN.zero_point) * ref.dequantize(b.numpy(), OTHER.scale, OTHER.zero_point)
    expected = ref.quantize(product, OUT.scale, OUT.zero_point, "uint8")

    actual = QuantMul(IN, OTHER, OUT)(a, b)

    assert actual.shape == (2, 4, 5, 5)
    assert np.array_equal(actual.numpy().astype(np.int64), expected)


def test_matmul_matches_integer_reference() -> None:
    output = QParams(ref.f32(0.9), 128, "uint8")
    a = _random_q((2, 3, 5, 16), IN, seed=4)
    b = _random_q((2, 3, 16, 7), OTHER, seed=5)
    acc = np.matmul(a.numpy().astype(np.int64) - IN.zero_point, b.numpy().astype(np.int64) - OTHER.zero_point)
    multiplier = ref.mlas_multiplier(IN.scale, np.float32(OTHER.scale), output.scale)
    expected = ref.mlas_requantize(acc, multiplier, output.zero_point, "uint8", False)

    actual = QuantMatMul(IN, OTHER, output)(a, b)

    assert np.array_equal(actual.numpy().astype(np.int64), expected)


def test_cat_requantizes_to_output_scale() -> None:
    a = _random_q((1, 2, 3, 3), IN, seed=6)
    b = _random_q((1, 3, 3, 3), OUT, seed=7)
    module = QuantCat([IN, OUT], OUT, dim=1)

    actual = module(a, b).numpy().astype(np.int64)

    requantized = ref.quantize(ref.dequantize(a.numpy(), IN.scale, IN.zero_point), OUT.scale, OUT.zero_point, "uint8")
    assert actual.shape == (1, 5, 3, 3)
    assert np.array_equal(actual[:, :2], requantized)
    assert np.array_equal(actual[:, 2:], b.numpy().astype(np.int64))


def test_mean_matches_numpy() -> None:
    x = _random_q((2, 6, 4, 4), IN, seed=8)
    real = ref.dequantize(x.numpy(), IN.scale, IN.zero_point)
    expected = ref.quantize(real.mean(axis=(2, 3), dtype=np.float64).astype(np.float32), OUT.scale, OUT.zero_point, "uint8")

    actual = QuantMean((2, 3), False, IN, OUT)(x).numpy().astype(np.int64)

    assert actual.shape == (2, 6)
    assert np.abs(actual - expected).max() <= 1
    assert np.mean(actual == expected) > 0.95


def test_mse_weight_scales_beat_minmax_on_outliers() -> None:
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(4, 4096, generator=generator) ** 3
    minmax = weight_scales(weight, per_channel=True, observer="minmax")
    mse = weight_scales(weight, per_channel=True, observer="mse")

    def error(scales: torch.Tensor) -> np.ndarray:
        w = weight.double().numpy()
        s = scales.double().numpy()[:, None]
        return ((np.clip(np.rint(w / s), -127, 127) * s - w) ** 2).sum(axis=1)

    assert np.allclose(minmax.numpy(), weight.abs().amax(dim=1).numpy() / 127, rtol=1e-6)
    assert (mse < minmax).all()
    assert (error(mse) < error(minmax)).all()


def test_per_tensor_weight_scales_are_equal() -> None:
    weight = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(10))
    scales = weight_scales(weight, per_channel=False, observer="mse")
    assert scales.shape == (5,)
    assert torch.all(scales == scales[0])
