"""Int8 pooling and mean: max, average, adaptive average pooling and mean over dims."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.quant.arithmetic import QParams, centered, dequantize, global_average_multiplier, quantize, requantize

from stages.quant.modules.common import pair, repr_qparams


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
        self.kernel_size = pair(pool.kernel_size)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = pair(pool.padding)
        self.dilation = pair(pool.dilation)
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
        self.kernel_size = pair(pool.kernel_size)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = pair(pool.padding)
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
        self.output_size = pair(output_size)
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
        return f"dims={self.dims}, keepdim={self.keepdim}, {repr_qparams('output', self.output_qparams)}"
