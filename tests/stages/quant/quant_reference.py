"""Numpy reference implementations of the int8 arithmetic, written independently of stages.quant."""

from __future__ import annotations

import numpy as np

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def f32(value: float) -> float:
    return float(np.float32(value))


def asymmetric_qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = f32((hi - lo) / 255.0)
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def symmetric_qparams(lo: float, hi: float) -> tuple[float, int]:
    return f32(max(-lo, hi) / 127.0), 0


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    qmin, qmax = RANGES[dtype]
    q = np.rint(x.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, qmin, qmax).astype(np.int64)


def requantize(acc: np.ndarray, multiplier: np.ndarray | float, zero_point: int, dtype: str, relu: bool) -> np.ndarray:
    qmin, qmax = RANGES[dtype]
    q = np.rint(acc * multiplier) + zero_point
    return np.clip(q, max(qmin, zero_point) if relu else qmin, qmax).astype(np.int64)


def weight_qparams(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel symmetric int8 in [-127, 127]: (q, scale)."""
    amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = (amax / 127.0).astype(np.float32)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.rint(weight.astype(np.float32) / scale.reshape(shape)), -127, 127).astype(np.int64)
    return q, scale


def conv2d_int(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """Exact int64 convolution of zero-point-centered x (N, C, H, W) with weight (O, C/groups, KH, KW)."""
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    n, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h = (height - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    group_out = out_channels // groups
    out = np.zeros((n, out_channels, out_h, out_w), dtype=np.int64)
    for g in range(groups):
        x_group = x[:, g * group_channels:(g + 1) * group_channels]
        w_group = weight[g * group_out:(g + 1) * group_out].astype(np.int64)
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                y0, x0 = ky * dilation[0], kx * dilation[1]
                patch = x_group[:, :, y0:y0 + stride[0] * (out_h - 1) + 1:stride[0], x0:x0 + stride[1] * (out_w - 1) + 1:stride[1]]
                out[:, g * group_out:(g + 1) * group_out] += np.einsum("nchw,oc->nohw", patch, w_group[:, :, ky, kx])
    return out + bias.astype(np.int64).reshape(1, -1, 1, 1)


def mlas_multiplier(input_scale: float, weight_scale: np.ndarray | float, output_scale: float) -> np.ndarray:
    """float32(float32(input_scale * weight_scale) / output_scale), as QLinearConv and QGemm compute it."""
    product = np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)
    return (product / np.float32(output_scale)).astype(np.float32)


def mlas_requantize(acc: np.ndarray, multiplier: np.ndarray | np.float32, zero_point: int, dtype: str, relu: bool) -> np.ndarray:
    """MlasRequantizeOutput: float32(acc) * multiplier in float32, clamp, round half to even, add zero point."""
    qmin, qmax = RANGES[dtype]
    low = max(qmin, zero_point) if relu else qmin
    scaled = acc.astype(np.float32) * np.asarray(multiplier, dtype=np.float32)
    scaled = np.clip(scaled, np.float32(low - zero_point), np.float32(qmax - zero_point))
    return np.rint(scaled).astype(np.int64) + zero_point


def mlas_add(a: np.ndarray, a_scale: float, a_zero: int, b: np.ndarray, b_scale: float, b_zero: int,
             out_scale: float, out_zero: int, dtype: str) -> np.ndarray:
    """QLinearAdd of onnxruntime's AVX2 kernel: two float32 fused multiply-adds on the raw q values."""
    qmin, qmax = RANGES[dtype]
    ratio_a = np.float32(a_scale) / np.float32(out_scale)
    ratio_b = np.float32(b_scale) / np.float32(out_scale)
    offset = np.float32(out_zero) - (np.float32(ratio_a * np.float32(a_zero)) + np.float32(ratio_b * np.float32(b_zero)))
    # A fused multiply-add rounds once: the float64 product and sum are exact here.
    inner = (b.astype(np.float64) * np.float64(ratio_b) + np.float64(offset)).astype(np.float32)
    total = (a.astype(np.float64) * np.float64(ratio_a) + inner.astype(np.float64)).astype(np.float32)
    return np.clip(np.rint(total), qmin, qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float32(q - zero_point) * float32(scale), as DequantizeLinear computes it."""
    return (q.astype(np.int64) - zero_point).astype(np.float32) * np.float32(scale)
