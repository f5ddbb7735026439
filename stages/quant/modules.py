"""Int8 modules of the converted GraphModule.

Quantized tensors between these modules are plain integer tensors
(``torch.uint8`` for asymmetric activations, ``torch.int8`` for symmetric
ones) holding q values: real = scale * (q - zero_point). Every scale and zero
point is a static attribute, held in a :class:`QParams` record with
``scale`` (float, exactly representable as float32), ``zero_point`` (int)
and ``dtype`` (``"uint8"`` or ``"int8"``).

Each class maps to one ONNX QDQ pattern, given in its docstring with the
arithmetic written out, so an exporter and a reader can check that
onnxruntime computes the same numbers. Integer dot products are exact: they
run in float64, which is exact below 2**53, and construction checks that
they fit the int32 accumulator. Where every partial sum stays below 2**24
they run in float32, which is then exact too. Requantization repeats
onnxruntime 1.32's CPU kernels step by step in float32 (see stages.quant.arithmetic).
So the integer outputs equal those of QLinearConv, QGemm, QLinearAdd and
QLinearGlobalAveragePool bit for bit, which
tests/stages/quant/test_ort_parity.py checks.

NOTE: with int8 (symmetric) activations and a fused ReLU, onnxruntime keeps
the Relu node, so it runs the float QDQ path (a float32 Conv on dequantized
values) whose float rounding these modules do not repeat; outputs then
agree to within one step, not bit for bit.

flatten, reshape, view and similar shape operations have no module: the fx
node runs on the integer tensor directly and its qparams are those of its
input (see ``qparams`` on the converted GraphModule).
"""

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
    global_average_multiplier,
    qlinear_add,
    quantize,
    quantize_bias,
    quantize_weight,
    requantize,
    requantize_multiplier,
    to_float32,
    weight_scales,
)

__all__ = [
    "Quantize",
    "Dequantize",
    "QuantConv2d",
    "QuantLinear",
    "QuantAdd",
    "QuantReLU",
    "QuantMaxPool2d",
    "QuantAvgPool2d",
    "QuantAdaptiveAvgPool2d",
    "QuantReLU6",
    "QuantHardswish",
    "QuantHardsigmoid",
    "QuantSigmoid",
    "QuantSiLU",
    "QuantGELU",
    "QuantBatchNorm2d",
    "QuantMul",
    "QuantMatMul",
    "QuantCat",
    "QuantMean",
    "INT8_MODULES",
]


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
        return _repr_qparams("qparams", self.qparams)


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
        return _repr_qparams("qparams", self.qparams)


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


class QuantAdd(nn.Module):
    """Elementwise sum of two quantized tensors (broadcasting), optional fused ReLU.

    Attributes:
        a_qparams, b_qparams (QParams): of the two inputs, in call order.
        output_qparams (QParams).
        relu (bool).

    Arithmetic of onnxruntime's QLinearAdd (MLAS AVX2 kernel, the default
    on x86-64), all in float32, with fma a fused multiply-add:
        ratio_a = a_scale / output_scale, ratio_b = b_scale / output_scale
        offset = output_zero_point - (ratio_a * a_zero_point + ratio_b * b_zero_point)
        y = clamp(round_half_even(fma(a, ratio_a, fma(b, ratio_b, offset))), qmin, qmax)
    The raw q values a and b enter, so the zero points live in ``offset``.
    A fused ReLU whose output zero point is qmin is this clamp (onnxruntime
    drops such a Relu). Otherwise onnxruntime keeps the Relu and runs the
    float path, which this module then repeats:
        real = float32(a - a_zero_point) * a_scale + float32(b - b_zero_point) * b_scale
        y = clamp(round_half_even(max(real, 0) / output_scale) + output_zero_point, qmin, qmax)

    ONNX: DequantizeLinear(a), DequantizeLinear(b) -> Add [-> Relu] ->
    QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearAdd.
    """

    def __init__(self, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams, relu: bool = False) -> None:
        super().__init__()
        self.a_qparams = a_qparams
        self.b_qparams = b_qparams
        self.output_qparams = output_qparams
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.relu and self.output_qparams.zero_point != self.output_qparams.qmin:
            real = dequantize(a, self.a_qparams) + dequantize(b, self.b_qparams)
            return quantize(torch.clamp_min(real, 0.0), self.output_qparams)
        return qlinear_add(a, self.a_qparams, b, self.b_qparams, self.output_qparams)

    def extra_repr(self) -> str:
        return f"relu={self.relu}, {_repr_qparams('output', self.output_qparams)}"


class QuantReLU(nn.Module):
    """ReLU of a quantized tensor that no preceding op could absorb.

    Attributes:
        input_qparams, output_qparams (QParams).

    Arithmetic (float32, as onnxruntime's DequantizeLinear, Relu and
    QuantizeLinear kernels compute it):
        real = max(float32(x - input_zero_point) * input_scale, 0)
        y = clamp(round_half_even(real / output_scale) + output_zero_point, qmin, qmax)
    With equal input and output qparams this is max(x, zero_point).

    ONNX: DequantizeLinear(x) -> Relu -> QuantizeLinear(output_qparams).
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = torch.clamp_min(dequantize(x, self.input_qparams), 0.0)
        return quantize(real, self.output_qparams)

    def extra_repr(self) -> str:
        return _repr_qparams("output", self.output_qparams)


class QuantMaxPool2d(nn.Module):
    """2-d max pooling of a quantized tensor; qparams pass through.

    Attributes:
        kernel_size, stride, padding, dilation (tuples of two ints), ceil_mode (bool).
        qparams (QParams): of the input and the output (equal).

    Arithmetic: the maximum of the q values in each window (padding is never
    selected). Exact, because max commutes with the monotonic dequantization.

    ONNX: DequantizeLinear(x) -> MaxPool -> QuantizeLinear(qparams), or
    MaxPool on the integer tensor (opset 12 or later).
    """

    def __init__(self, pool: nn.MaxPool2d, qparams: QParams) -> None:
        super().__init__()
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = _pair(pool.padding)
        self.dilation = _pair(pool.dilation)
        self.ceil_mode = bool(pool.ceil_mode)
        self.qparams = qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # q values up to 255 are exact in float32; max_pool2d has no integer kernel on CPU.
        y = F.max_pool2d(x.to(torch.float32), self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class QuantAvgPool2d(nn.Module):
    """2-d average pooling of a quantized tensor.

    Attributes:
        kernel_size, stride, padding (tuples of two ints), ceil_mode (bool),
        count_include_pad (bool).
        input_qparams, output_qparams (QParams).

    Arithmetic (float32, the float QDQ path):
        real = avg_pool2d(float32(x - input_zero_point) * input_scale)   (padding is real zero)
        y = clamp(round_half_even(real / output_scale) + output_zero_point, qmin, qmax)

    ONNX: DequantizeLinear(x) -> AveragePool -> QuantizeLinear(output_qparams).

    NOTE: the float32 sum runs in PyTorch's order, so an output that lands
    on a rounding tie can differ from onnxruntime's by one step.
    """

    def __init__(self, pool: nn.AvgPool2d, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        if pool.divisor_override is not None:
            raise ValueError(f"QuantAvgPool2d does not support divisor_override={pool.divisor_override}")
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = _pair(pool.padding)
        self.ceil_mode = bool(pool.ceil_mode)
        self.count_include_pad = bool(pool.count_include_pad)
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(
            dequantize(x, self.input_qparams),
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
        )
        return quantize(mean, self.output_qparams)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class QuantAdaptiveAvgPool2d(nn.Module):
    """Adaptive 2-d average pooling of a quantized tensor.

    Attributes:
        output_size (tuple of two ints).
        input_qparams, output_qparams (QParams).

    Arithmetic with output size (1, 1), as onnxruntime's
    QLinearGlobalAveragePool computes it for n = H * W inputs per channel:
        acc = sum(x) - n * input_zero_point                    (exact integers)
        multiplier = float32(input_scale / float32(output_scale * n))
        y = round_half_even(clamp(float32(acc) * multiplier, qmin - zp, qmax - zp)) + zp
    Other output sizes take the float path: quantize(adaptive_avg_pool2d(
    dequantize(x))) in float32.

    ONNX: DequantizeLinear(x) -> GlobalAveragePool (output_size (1, 1)), or
    AveragePool when the input size is a multiple of the output size ->
    QuantizeLinear(output_qparams). onnxruntime fuses the global form into
    QLinearGlobalAveragePool.
    """

    def __init__(self, output_size: tuple[int, int], input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_size == (1, 1):
            count = x.shape[-1] * x.shape[-2]
            acc = centered(x, self.input_qparams).sum(dim=(-2, -1), keepdim=True)
            multiplier = global_average_multiplier(self.input_qparams.scale, self.output_qparams.scale, count)
            return requantize(acc, multiplier, self.output_qparams)
        mean = F.adaptive_avg_pool2d(dequantize(x, self.input_qparams), self.output_size)
        return quantize(mean, self.output_qparams)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class _QuantElementwise(nn.Module):
    """Base of the elementwise int8 ops computed as dequantize -> float op -> quantize.

    Attributes:
        input_qparams, output_qparams (QParams).

    Arithmetic (float32): y = quantize(op(float32(x - input_zero_point) *
    input_scale), output_qparams), which is what the QDQ pattern
    DequantizeLinear -> op -> QuantizeLinear computes. onnxruntime may turn
    the pattern into a lookup table over the 256 input values, whose entries
    are the same expression.
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(self.float_op(dequantize(x, self.input_qparams)), self.output_qparams)

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return _repr_qparams("output", self.output_qparams)


class QuantReLU6(_QuantElementwise):
    """min(max(x, 0), 6) of a quantized tensor (no preceding op absorbed it).

    Attributes: input_qparams, output_qparams. Arithmetic: see the base
    class, op = clamp(x, 0, 6).

    ONNX: DequantizeLinear(x) -> Clip(min=0, max=6) -> QuantizeLinear(output_qparams).
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


class QuantHardswish(_QuantElementwise):
    """Hardswish of a quantized tensor: x * relu6(x + 3) / 6.

    Attributes: input_qparams, output_qparams. Arithmetic: see the base class.

    ONNX: DequantizeLinear(x) -> HardSwish -> QuantizeLinear(output_qparams).
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)


class QuantHardsigmoid(_QuantElementwise):
    """Hardsigmoid of a quantized tensor: relu6(x + 3) / 6.

    Attributes: input_qparams, output_qparams. Arithmetic: see the base class.

    ONNX: DequantizeLinear(x) -> HardSigmoid(alpha=1/6, beta=0.5) ->
    QuantizeLinear(output_qparams).
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


class QuantSigmoid(_QuantElementwise):
    """Logistic sigmoid of a quantized tensor.

    Attributes: input_qparams, output_qparams. Arithmetic: see the base class.

    ONNX: DequantizeLinear(x) -> Sigmoid -> QuantizeLinear(output_qparams);
    onnxruntime fuses it into QLinearSigmoid.
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class QuantSiLU(_QuantElementwise):
    """SiLU (swish) of a quantized tensor: x * sigmoid(x).

    Attributes: input_qparams, output_qparams. Arithmetic: see the base class.

    ONNX: DequantizeLinear(x) -> Sigmoid, Mul(x, sigmoid) ->
    QuantizeLinear(output_qparams).
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class QuantGELU(_QuantElementwise):
    """GELU of a quantized tensor.

    Attributes: input_qparams, output_qparams, approximate (str: "none" for
    the erf form, "tanh" for the tanh approximation). Arithmetic: see the
    base class.

    ONNX: DequantizeLinear(x) -> Gelu(approximate) (opset 20), or for older
    opsets 0.5 * x * (1 + Erf(x / sqrt(2))) -> QuantizeLinear(output_qparams).
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams, approximate: str = "none") -> None:
        super().__init__(input_qparams, output_qparams)
        self.approximate = approximate

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


class QuantBatchNorm2d(_QuantElementwise):
    """Eval-mode BatchNorm2d of a quantized tensor that no conv absorbed.

    Attributes: input_qparams, output_qparams, bn (the float nn.BatchNorm2d,
    eval mode). Arithmetic: see the base class, op = bn.

    ONNX: DequantizeLinear(x) -> BatchNormalization(bn.weight, bn.bias,
    bn.running_mean, bn.running_var, epsilon=bn.eps) -> QuantizeLinear(output_qparams).
    """

    def __init__(self, bn: nn.BatchNorm2d, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__(input_qparams, output_qparams)
        self.bn = bn.eval()

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class QuantMul(nn.Module):
    """Elementwise product of two quantized tensors (broadcasting).

    Attributes:
        a_qparams, b_qparams (QParams): of the two inputs, in call order.
        output_qparams (QParams).

    Arithmetic (float32): y = quantize(dequantize(a) * dequantize(b), output_qparams).

    ONNX: DequantizeLinear(a), DequantizeLinear(b) -> Mul ->
    QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearMul.

    NOTE: QLinearMul's kernel rounds differently from the float path, so
    outputs on a rounding tie can differ from onnxruntime's by one step.
    """

    def __init__(self, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.a_qparams = a_qparams
        self.b_qparams = b_qparams
        self.output_qparams = output_qparams

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return quantize(dequantize(a, self.a_qparams) * dequantize(b, self.b_qparams), self.output_qparams)

    def extra_repr(self) -> str:
        return _repr_qparams("output", self.output_qparams)


class QuantMatMul(nn.Module):
    """Matrix product of two quantized activations (torch.matmul semantics).

    Attributes:
        a_qparams, b_qparams (QParams): of the two inputs, in call order.
        output_qparams (QParams).
        multiplier (float32 tensor, buffer): float32(float32(a_scale *
            b_scale) / output_scale).

    Arithmetic:
        acc = matmul(a - a_zero_point, b - b_zero_point)          (exact integers)
        y = round_half_even(clamp(float32(acc) * multiplier, qmin - zp, qmax - zp)) + zp

    ONNX: DequantizeLinear(a), DequantizeLinear(b) -> MatMul ->
    QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearMatMul.
    """

    def __init__(self, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.a_qparams = a_qparams
        self.b_qparams = b_qparams
        self.output_qparams = output_qparams
        scale = torch.tensor([b_qparams.scale], dtype=torch.float32)
        self.register_buffer("multiplier", requantize_multiplier(a_qparams.scale, scale, output_qparams.scale)[0])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        acc = torch.matmul(centered(a, self.a_qparams), centered(b, self.b_qparams))
        return requantize(acc, self.multiplier, self.output_qparams)

    def extra_repr(self) -> str:
        return _repr_qparams("output", self.output_qparams)


class QuantCat(nn.Module):
    """Concatenation of quantized tensors, each requantized to the output qparams.

    Attributes:
        input_qparams (list of QParams): one per input, in order.
        output_qparams (QParams).
        dim (int): the concatenation axis.

    Arithmetic: an input whose qparams equal the output's is copied; any
    other becomes quantize(dequantize(x_i), output_qparams) in float32. Then
    the integer tensors are concatenated along ``dim``.

    ONNX: DequantizeLinear(x_i) for each input -> Concat(axis=dim) ->
    QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearConcat.
    """

    def __init__(self, input_qparams: list[QParams], output_qparams: QParams, dim: int) -> None:
        super().__init__()
        self.input_qparams = list(input_qparams)
        self.output_qparams = output_qparams
        self.dim = int(dim)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = []
        for value, qparams in zip(inputs, self.input_qparams):
            if qparams == self.output_qparams:
                parts.append(value)
            else:
                parts.append(quantize(dequantize(value, qparams), self.output_qparams))
        return torch.cat(parts, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, inputs={len(self.input_qparams)}, {_repr_qparams('output', self.output_qparams)}"


class QuantMean(nn.Module):
    """Mean of a quantized tensor over fixed dims.

    Attributes:
        dims (tuple of ints), keepdim (bool).
        input_qparams, output_qparams (QParams).

    Arithmetic (float32): y = quantize(mean(dequantize(x), dims, keepdim), output_qparams).

    ONNX: DequantizeLinear(x) -> ReduceMean(axes=dims, keepdims) ->
    QuantizeLinear(output_qparams).

    NOTE: the float32 sum runs in PyTorch's order, so an output on a
    rounding tie can differ from onnxruntime's by one step.
    """

    def __init__(self, dims: tuple[int, ...], keepdim: bool, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.dims = tuple(int(dim) for dim in dims)
        self.keepdim = bool(keepdim)
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = dequantize(x, self.input_qparams).mean(dim=self.dims, keepdim=self.keepdim)
        return quantize(mean, self.output_qparams)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}, {_repr_qparams('output', self.output_qparams)}"


INT8_MODULES: tuple[type[nn.Module], ...] = (
    Quantize,
    Dequantize,
    QuantConv2d,
    QuantLinear,
    QuantAdd,
    QuantReLU,
    QuantMaxPool2d,
    QuantAvgPool2d,
    QuantAdaptiveAvgPool2d,
    QuantReLU6,
    QuantHardswish,
    QuantHardsigmoid,
    QuantSigmoid,
    QuantSiLU,
    QuantGELU,
    QuantBatchNorm2d,
    QuantMul,
    QuantMatMul,
    QuantCat,
    QuantMean,
)


def _pair(value: int | tuple[int, ...] | list[int] | None) -> tuple[int, int]:
    if value is None:
        raise ValueError("expected an int or a pair of ints, got None")
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    return (int(value[0]), int(value[1]))


def _repr_qparams(label: str, qparams: QParams) -> str:
    return f"{label}=(scale={to_float32(qparams.scale):.6g}, zero_point={qparams.zero_point}, {qparams.dtype})"
