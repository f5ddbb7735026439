"""Quantize and Dequantize at the int8 region's borders, and the weighted int8 ops: conv and linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.quant.arithmetic import (
    FLOAT32_EXACT,
    INT32_MAX,
    QParams,
    accumulator_bound,
    centered,
    dequantize,
    quantize,
    quantize_bias,
    quantize_weight,
    requantize,
    requantize_multiplier,
    weight_scales,
)

from stages.quant.modules.common import repr_qparams


class Quantize(nn.Module):
    """Float tensor to integer tensor.

    Attributes:
        qparams (QParams): output scale, zero point and dtype.

    Arithmetic: q = clamp(round_half_even(float32(x) / scale) + zero_point,
    qmin, qmax), cast to the dtype.

    ONNX: ``QuantizeLinear(x, scale, zero_point)`` (zero point of the dtype).
    """

    def __init__(self, qparams: QParams) -> None:
        super().__init__()
        self.qparams = qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.qparams)

    def extra_repr(self) -> str:
        return repr_qparams("qparams", self.qparams)


class Dequantize(nn.Module):
    """Integer tensor to float32 tensor.

    Attributes:
        qparams (QParams): input scale, zero point and dtype.

    Arithmetic: x = float32(q - zero_point) * scale.

    ONNX: ``DequantizeLinear(q, scale, zero_point)``.
    """

    def __init__(self, qparams: QParams) -> None:
        super().__init__()
        self.qparams = qparams

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return dequantize(q, self.qparams)

    def extra_repr(self) -> str:
        return repr_qparams("qparams", self.qparams)


class _QuantWeighted(nn.Module):
    """Shared state of the int8 modules with a weight: conv and linear.

    Attributes:
        weight (int8 tensor, buffer): [-127, 127], output channels on axis 0.
        weight_scale (float32 tensor (out,), buffer): per output channel,
            weight zero point 0. With per-tensor weights all values are equal.
        bias (int32 tensor (out,), buffer): round(bias / bias_scale); zeros
            when the float module had no bias.
        bias_scale (float32 tensor (out,), buffer): float32(input_scale *
            weight_scale), bias zero point 0.
        multiplier (float32 tensor (out,), buffer): float32(float32(
            input_scale * weight_scale) / output_scale), as onnxruntime
            computes its output scales.
        input_qparams, output_qparams (QParams).
        exact_float32 (bool): every partial sum of the whole dot product
            stays below 2**24, so it runs in float32 in one piece.
        chunk_features (int): how many fan-in elements keep partial sums
            below 2**24; longer dot products run in float32 chunks of this
            size whose sums are added in float64.
        relu (bool): a fused ReLU or ReLU6, applied as a clamp at the output
            zero point. For ReLU6 the output range observed after it lies in
            [0, 6], so the upper clamp at 6 never binds after quantization.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        per_channel: bool,
        weight_observer: str = "minmax",
    ) -> None:
        super().__init__()
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.relu = relu

        scales = weight_scales(weight, per_channel, weight_observer)
        bias_scale = (torch.tensor(input_qparams.scale, dtype=torch.float32) * scales).to(torch.float32)
        self.register_buffer("weight", quantize_weight(weight, scales))
        self.register_buffer("weight_scale", scales)
        self.register_buffer("bias", quantize_bias(bias, bias_scale))
        self.register_buffer("bias_scale", bias_scale)
        multiplier = requantize_multiplier(input_qparams.scale, scales, output_qparams.scale)
        self.register_buffer("multiplier", multiplier)

        fan_in = self.weight[0].numel()
        bound = accumulator_bound(fan_in, input_qparams, self.weight, self.bias)
        # float32 kernels are exact on integers while every partial sum stays
        # below 2**24, in any summation order, and much faster than float64
        # ones. So the input features are split into chunks small enough for
        # that; the chunks' sums are added in float64.
        per_feature = accumulator_bound(fan_in, input_qparams, self.weight, torch.zeros(0)) // max(fan_in, 1)
        self.chunk_features = int((FLOAT32_EXACT - 1) // max(per_feature, 1))
        self.exact_float32 = self.chunk_features >= fan_in
        if bound > INT32_MAX:
            raise ValueError(
                f"int32 accumulator may overflow: fan-in {fan_in} gives a bound of {bound} > {INT32_MAX}; "
                "keep this layer in float with the `skip` param"
            )

    @property
    def compute_dtype(self) -> torch.dtype:
        # Modules pickled before exact_float32 existed compute in float64.
        return torch.float32 if getattr(self, "exact_float32", False) else torch.float64

    def _requantize(self, acc: torch.Tensor, channel_axis: int) -> torch.Tensor:
        shape = [1] * acc.dim()
        shape[channel_axis] = -1
        acc = acc.to(torch.float64) + self.bias.to(torch.float64).reshape(shape)
        return requantize(acc, self.multiplier.reshape(shape), self.output_qparams, self.relu)


class QuantConv2d(_QuantWeighted):
    """Int8 2-d convolution with optional fused ReLU (groups, depthwise, dilation).

    Attributes: those of the weighted modules (``weight`` of shape
    (out, in / groups, kH, kW), ``weight_scale``, ``bias``, ``bias_scale``,
    ``multiplier``, ``input_qparams``, ``output_qparams``, ``relu``) plus
    ``stride``, ``padding``, ``dilation`` (tuples of two ints) and ``groups``
    (int). Padding is zero padding in real values, that is the input zero
    point in q values.

    Arithmetic, per output channel c:
        acc = sum((x - input_zero_point) * weight[c]) + bias[c]   (exact integers)
        v = clamp(float32(acc) * multiplier[c], low - output_zero_point,
                  qmax - output_zero_point)                     (float32)
        y = round_half_even(v) + output_zero_point
    where low is output_zero_point with relu and qmin without.

    ONNX: DequantizeLinear(x) and DequantizeLinear(weight, weight_scale, 0,
    axis=0) and DequantizeLinear(bias, bias_scale, 0, axis=0) -> Conv
    [-> Relu] -> QuantizeLinear(output_qparams); onnxruntime fuses it into
    QLinearConv.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool = False,
        per_channel: bool = True,
        weight_observer: str = "minmax",
    ) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"QuantConv2d supports numeric zero padding only, got padding={conv.padding!r} "
                f"padding_mode={conv.padding_mode!r}"
            )
        super().__init__(conv.weight, conv.bias, input_qparams, output_qparams, relu, per_channel, weight_observer)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = int(conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = centered(x, self.input_qparams)
        kernel = self.weight[0, 0].numel()
        channels_per_chunk = getattr(self, "chunk_features", 0) // kernel
        if getattr(self, "exact_float32", False):
            acc = self._conv(x.to(torch.float32), self.weight.to(torch.float32))
        elif self.groups == 1 and channels_per_chunk >= 1:
            acc = None
            for start in range(0, x.shape[1], channels_per_chunk):
                stop = start + channels_per_chunk
                part = self._conv(x[:, start:stop].to(torch.float32), self.weight[:, start:stop].to(torch.float32))
                acc = part.to(torch.float64) if acc is None else acc + part.to(torch.float64)
        else:
            acc = self._conv(x, self.weight.to(torch.float64))
        return self._requantize(acc, channel_axis=1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # NNPACK's Winograd and FFT convolutions are not exact on integers.
        with torch.backends.nnpack.flags(enabled=False):
            return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, relu={self.relu}"
        )


class QuantLinear(_QuantWeighted):
    """Int8 fully connected layer with optional fused ReLU.

    Attributes: those of the weighted modules, ``weight`` of shape
    (out_features, in_features). The input may have leading dimensions;
    features are on the last axis.

    Arithmetic, per output feature c:
        acc = sum((x - input_zero_point) * weight[c]) + bias[c]   (exact integers)
        v = clamp(float32(acc) * multiplier[c], low - output_zero_point,
                  qmax - output_zero_point)                     (float32)
        y = round_half_even(v) + output_zero_point
    where low is output_zero_point with relu and qmin without.

    ONNX: DequantizeLinear(x), DequantizeLinear(weight, axis=0),
    DequantizeLinear(bias, bias_scale, 0, axis=0) -> Gemm(transB=1)
    [-> Relu] -> QuantizeLinear(output_qparams); onnxruntime fuses it into
    QGemm.
    """

    def __init__(
        self,
        linear: nn.Linear,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool = False,
        per_channel: bool = True,
        weight_observer: str = "minmax",
    ) -> None:
        super().__init__(linear.weight, linear.bias, input_qparams, output_qparams, relu, per_channel, weight_observer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = centered(x, self.input_qparams)
        chunk = getattr(self, "chunk_features", 0)
        if getattr(self, "exact_float32", False) or chunk < 1:
            dtype = self.compute_dtype
            acc = x.to(dtype) @ self.weight.to(dtype).t()
        else:
            acc = None
            for start in range(0, x.shape[-1], chunk):
                part = x[..., start:start + chunk].to(torch.float32) @ self.weight[:, start:start + chunk].to(torch.float32).t()
                acc = part.to(torch.float64) if acc is None else acc + part.to(torch.float64)
        return self._requantize(acc, channel_axis=acc.dim() - 1)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, relu={self.relu}"
