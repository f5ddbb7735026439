"""Integer arithmetic of the affine quantization scheme.

real = scale * (q - zero_point). Rounding is half to even (``torch.round``),
results saturate to the integer range of the dtype. Scales are float32
values (the precision ONNX stores them in).

Requantization follows onnxruntime's MLAS kernel MlasRequantizeOutput
(used by QLinearConv, QGemm and QLinearGlobalAveragePool) bit for bit. The
exact int32 accumulator is converted to float32 and multiplied in float32
by the multiplier float32(float32(input_scale * weight_scale) /
output_scale). The product is clamped to [qmin - zero_point, qmax -
zero_point], rounded half to even and shifted by the zero point.

Activations are ``uint8`` (asymmetric, any zero point in [0, 255]) or
``int8`` (symmetric, zero point 0, range [-128, 127]). Weights are ``int8``
symmetric with the restricted range [-127, 127], so that ``-w`` is always
representable. Biases are ``int32`` at ``input_scale * weight_scale``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

QRANGES: dict[str, tuple[int, int]] = {"uint8": (0, 255), "int8": (-128, 127)}
TORCH_DTYPES: dict[str, torch.dtype] = {"uint8": torch.uint8, "int8": torch.int8}
WEIGHT_QMAX = 127
INT32_MAX = 2**31 - 1
# Integers up to this magnitude are exact in float32.
FLOAT32_EXACT = 2**24
INT32_MIN = -(2**31)


@dataclass(frozen=True)
class QParams:
    """Scale, zero point and integer dtype of one quantized tensor."""

    scale: float
    zero_point: int
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in QRANGES:
            raise ValueError(f"invalid quantized dtype {self.dtype!r}: expected one of {sorted(QRANGES)}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"invalid scale {self.scale!r}: expected a finite positive number")
        qmin, qmax = QRANGES[self.dtype]
        if not qmin <= self.zero_point <= qmax:
            raise ValueError(f"zero point {self.zero_point} is outside the {self.dtype} range [{qmin}, {qmax}]")

    @property
    def qmin(self) -> int:
        return QRANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QRANGES[self.dtype][1]

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def to_float32(value: float) -> float:
    """Round a Python float to the nearest float32 value."""
    return float(np.float32(value))


def qparams_from_range(lo: float, hi: float, dtype: str) -> QParams:
    """Compute activation qparams that cover [lo, hi] (widened to contain 0).

    uint8: scale = (hi - lo) / 255, zero_point = round(-lo / scale).
    int8 (symmetric): scale = max(|lo|, |hi|) / 127, zero_point = 0.
    A range of width 0 gives scale 1, so that an all-zero tensor still has
    valid qparams.
    """
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if dtype == "uint8":
        scale = to_float32((hi - lo) / 255.0) if hi > lo else 1.0
        zero_point = int(np.clip(np.rint(-lo / scale), 0, 255))
        return QParams(scale, zero_point, dtype)
    if dtype == "int8":
        amax = max(-lo, hi)
        scale = to_float32(amax / 127.0) if amax > 0 else 1.0
        return QParams(scale, 0, dtype)
    raise ValueError(f"invalid activation dtype {dtype!r}: expected 'uint8' or 'int8'")


def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Quantize a float tensor: clamp(round(x / scale) + zero_point)."""
    scale = torch.tensor(qparams.scale, dtype=torch.float32)
    q = torch.round(x.to(torch.float32) / scale) + qparams.zero_point
    return q.clamp(qparams.qmin, qparams.qmax).to(qparams.torch_dtype)


def dequantize(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Dequantize an integer tensor to float32: scale * (q - zero_point)."""
    scale = torch.tensor(qparams.scale, dtype=torch.float32)
    return (q.to(torch.float32) - qparams.zero_point) * scale


def saturate(values: torch.Tensor, qparams: QParams, relu: bool = False) -> torch.Tensor:
    """Round half to even, add the zero point, clamp and cast to the dtype.

    ``values`` are real values divided by the output scale (float64). A fused
    ReLU clamps at the zero point, which is quantize(max(real, 0)) because
    quantization is monotonic and quantize(0) = zero_point.
    """
    q = torch.round(values) + qparams.zero_point
    low = max(qparams.qmin, qparams.zero_point) if relu else qparams.qmin
    return q.clamp(low, qparams.qmax).to(qparams.torch_dtype)


def requantize_multiplier(input_scale: float, weight_scales: torch.Tensor, output_scale: float) -> torch.Tensor:
    """Return float32(float32(input_scale * weight_scale) / output_scale) per channel.

    Each operation rounds to float32, as onnxruntime's QLinearConv and QGemm
    compute their output scales in C++ ``float``.
    """
    product = torch.tensor(input_scale, dtype=torch.float32) * weight_scales.to(torch.float32)
    return product / torch.tensor(output_scale, dtype=torch.float32)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, qparams: QParams, relu: bool = False) -> torch.Tensor:
    """Requantize exact integer accumulators the way MlasRequantizeOutput does.

    ``acc`` contains exact integers in any float or integer dtype; ``multiplier``
    is float32 and broadcasts against it. y = round_half_even(clamp(float32(acc)
    * multiplier, low - zero_point, qmax - zero_point)) + zero_point, where low
    is the zero point with a fused ReLU and qmin without.
    """
    scaled = acc.to(torch.float32) * multiplier
    low = max(qparams.qmin, qparams.zero_point) if relu else qparams.qmin
    scaled = scaled.clamp(low - qparams.zero_point, qparams.qmax - qparams.zero_point)
    return (torch.round(scaled) + qparams.zero_point).to(qparams.torch_dtype)


def qlinear_add(a: torch.Tensor, a_qparams: QParams, b: torch.Tensor, b_qparams: QParams, output: QParams) -> torch.Tensor:
    """Add two quantized tensors the way onnxruntime 1.32's QLinearAdd does on x86-64.

    The MLAS AVX2 kernel computes in float32 with fused multiply-adds:
    y = fma(a, ratio_a, fma(b, ratio_b, offset)) with ratio = input_scale /
    output_scale and offset = output_zero_point - fma(ratio_a, a_zero_point,
    ratio_b * b_zero_point). The compiler contracts the offset's products
    into that fused multiply-add. The result is rounded half to even and saturated.
    """
    f32 = torch.float32
    ratio_a = torch.tensor(a_qparams.scale, dtype=f32) / torch.tensor(output.scale, dtype=f32)
    ratio_b = torch.tensor(b_qparams.scale, dtype=f32) / torch.tensor(output.scale, dtype=f32)
    zero_part = fma32(ratio_a, torch.tensor(float(a_qparams.zero_point), dtype=f32), ratio_b * float(b_qparams.zero_point))
    offset = torch.tensor(float(output.zero_point), dtype=f32) - zero_part

    inner = fma32(b.to(f32), ratio_b, offset)
    total = fma32(a.to(f32), ratio_a, inner)
    return torch.round(total).clamp(output.qmin, output.qmax).to(output.torch_dtype)


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return float32 a * b + c rounded once, as a fused multiply-add instruction computes it (broadcasting).

    A float64 represents the product of two float32 values exactly. The float64 sum
    s and its exact error (two-sum) locate the exact result. Rounding s to
    float32 is correct except when s falls exactly halfway between two
    float32 values, where the error's sign picks the side.
    """
    product = a.to(torch.float64) * b.to(torch.float64)
    addend = c.to(torch.float64)
    total = product + addend
    back = total - product
    error = (product - (total - back)) + (addend - back)

    rounded = total.to(torch.float32)
    rounded_64 = rounded.to(torch.float64)
    direction = torch.where(total > rounded_64, torch.tensor(float("inf")), torch.tensor(float("-inf"))).to(torch.float32)
    neighbor = torch.nextafter(rounded, direction)
    halfway = (total != rounded_64) & (total == (rounded_64 + neighbor.to(torch.float64)) / 2)
    # At a halfway total, a nonzero error on the neighbor's side means the exact result is nearer the neighbor.
    toward_neighbor = halfway & (error != 0) & ((error > 0) == (total > rounded_64))
    return torch.where(toward_neighbor, neighbor, rounded)


def qlinear_mul(a: torch.Tensor, a_qparams: QParams, b: torch.Tensor, b_qparams: QParams, output: QParams) -> torch.Tensor:
    """Multiply two quantized tensors (broadcasting) the way onnxruntime 1.32's QLinearMul does on x86-64.

    The MLAS SSE2 kernel multiplies the centered integers exactly, then
    computes y = float32(product) * ratio + output_zero_point in float32,
    with ratio = float32(float32(a_scale * b_scale) / output_scale), and
    rounds half to even and saturates.
    """
    f32 = torch.float32
    product = (a.to(torch.int32) - a_qparams.zero_point) * (b.to(torch.int32) - b_qparams.zero_point)
    ratio = torch.tensor(a_qparams.scale, dtype=f32) * torch.tensor(b_qparams.scale, dtype=f32) / torch.tensor(output.scale, dtype=f32)
    total = product.to(f32) * ratio + torch.tensor(float(output.zero_point), dtype=f32)
    return torch.round(total).clamp(output.qmin, output.qmax).to(output.torch_dtype)


def global_average_multiplier(input_scale: float, output_scale: float, count: int) -> torch.Tensor:
    """Return float32(input_scale / float32(output_scale * count)), QLinearGlobalAveragePool's scale."""
    f32 = torch.float32
    denominator = torch.tensor(output_scale, dtype=f32) * torch.tensor(float(count), dtype=f32)
    return torch.tensor(input_scale, dtype=f32) / denominator


def centered(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Return q - zero_point as float64 (exact for integers below 2**53)."""
    return q.to(torch.float64) - qparams.zero_point


WEIGHT_MSE_STEPS = 100


def weight_scales(weight: torch.Tensor, per_channel: bool, observer: str = "minmax") -> torch.Tensor:
    """Symmetric int8 weight scales per output channel (axis 0).

    ``minmax``: max|w| / 127. ``mse``: clip / 127 for the clip among
    k / 100 * max|w| (k = 1..100) whose quantized weights have the least
    squared error. With ``per_channel=False`` every channel gets the scale
    of the whole tensor, so the result always has shape (out_channels,). A
    channel of zeros gets scale 1.
    """
    if observer not in ("minmax", "mse"):
        raise ValueError(f"unknown weight observer {observer!r}: expected 'minmax' or 'mse'")
    flat = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    if not per_channel:
        flat = flat.reshape(1, -1)
    amax = flat.abs().amax(dim=1)
    clip = amax
    if observer == "mse":
        clip = _mse_clip(flat, amax)
    scales = torch.where(clip > 0, clip / WEIGHT_QMAX, torch.ones_like(clip)).to(torch.float32)
    return scales if per_channel else scales.expand(weight.shape[0]).clone()


def _mse_clip(flat: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Per row of ``flat``, the clip value with the least squared quantization error."""
    best_clip = amax.clone()
    best_error = torch.full_like(amax, float("inf"))
    for step in range(1, WEIGHT_MSE_STEPS + 1):
        clip = amax * (step / WEIGHT_MSE_STEPS)
        scale = torch.where(clip > 0, clip / WEIGHT_QMAX, torch.ones_like(clip)).to(torch.float32).double().unsqueeze(1)
        error = ((torch.round(flat / scale).clamp(-WEIGHT_QMAX, WEIGHT_QMAX) * scale - flat) ** 2).sum(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_clip = torch.where(better, clip, best_clip)
    return best_clip


def quantize_weight(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Quantize a weight per output channel to int8 in [-127, 127]."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.round(weight.detach().to(torch.float32) / scales.reshape(shape))
    return q.clamp(-WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8)


def quantize_bias(bias: torch.Tensor | None, bias_scales: torch.Tensor) -> torch.Tensor:
    """Quantize a float bias to int32 at ``bias_scales`` (zeros when absent)."""
    if bias is None:
        return torch.zeros(bias_scales.shape, dtype=torch.int32)
    q = torch.round(bias.detach().to(torch.float64) / bias_scales.to(torch.float64))
    return q.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def accumulator_bound(fan_in: int, input_qparams: QParams, weight: torch.Tensor, bias: torch.Tensor) -> int:
    """Return the largest |accumulator| an integer dot product can reach.

    fan_in * max|x - zero_point| * max|w| + max|bias|; it must fit int32,
    the accumulator onnxruntime's QLinearConv and QGemm use.
    """
    x_span = max(input_qparams.zero_point - input_qparams.qmin, input_qparams.qmax - input_qparams.zero_point)
    w_max = int(weight.to(torch.int32).abs().max()) if weight.numel() else 0
    b_max = int(bias.to(torch.int64).abs().max()) if bias.numel() else 0
    return fan_in * x_span * w_max + b_max
