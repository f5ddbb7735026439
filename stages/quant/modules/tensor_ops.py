"""Int8 ops over whole tensor axes: softmax, masked softmax, matrix product and concatenation."""

from __future__ import annotations

import math

import torch
from torch import nn

from stages.quant.arithmetic import (
    QParams,
    centered,
    dequantize,
    qlinear_add,
    qparams_from_range,
    quantize,
    requantize,
    requantize_multiplier,
)

from stages.quant.modules.common import repr_qparams


def softmax_qparams() -> QParams:
    """Return the fixed uint8 output qparams of softmax: scale 1/256, zero point 0.

    onnxruntime's QLinearSoftmax multiplies by floor(1 / scale), which is
    254 for a float32 1/255, so the power of two 1/256 is the scale it
    computes exactly.
    """
    return QParams(1.0 / 256.0, 0, "uint8")


class QuantSoftmax(nn.Module):
    """Softmax of a uint8 tensor over ``dim``, as onnxruntime's QLinearSoftmax computes it.

    Attributes: input_qparams, output_qparams (from :func:`softmax_qparams`), dim (int).

    Arithmetic, per row of length D along ``dim``:
        shift = max(0, ln(FLT_MAX / D) - 5) / input_scale                     (float64)
        table[i] = float32(exp((i - 255 + shift) * input_scale)), i = 0..255  (float64 exp)
        e_j = table[255 - max(q) + q_j]
        sum = e_0 + e_1 + ... + e_{D-1}                                       (float32, in order)
        y_j = min(round_half_even(float32(e_j * floor(1 / output_scale)) / sum) + zero_point, 255)

    ONNX: DequantizeLinear(x) -> Softmax(axis=dim) -> QuantizeLinear(output_qparams);
    onnxruntime fuses it into QLinearSoftmax, whose CPU kernel this repeats.
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams, dim: int) -> None:
        super().__init__()
        if input_qparams.dtype != "uint8" or output_qparams.dtype != "uint8":
            raise ValueError("softmax is quantized for uint8 activations only")
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.dim = dim

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        rows = q.movedim(self.dim, -1).to(torch.int64)
        table = _softmax_exp_table(self.input_qparams.scale, rows.shape[-1])
        exps = table[rows - rows.amax(dim=-1, keepdim=True) + 255]
        # cumsum adds in order, as the kernel's float32 loop does.
        total = torch.cumsum(exps, dim=-1)[..., -1:]
        multiplier = torch.floor(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(self.output_qparams.scale, dtype=torch.float32))
        y = torch.round(exps * multiplier / total) + self.output_qparams.zero_point
        return y.clamp(max=255).to(torch.uint8).movedim(-1, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, " + repr_qparams("output", self.output_qparams)


# How far below the lowest unmasked score a masked score lands, in score units.
# A masked entry then weighs at most exp(-12) = 6e-6 of the row's largest
# entry, which rounds to 0 at softmax's output step of 1/256.
MASK_MARGIN = 12.0


class QuantMaskedSoftmax(nn.Module):
    """Softmax over the last dim of uint8 scores plus an additive mask, per window.

    The float op is ``softmax(scores.view(-1, windows, H, L, L) + mask)``
    with ``mask`` (windows, 1, L, L) set to 0 where a pair attends and to a
    large negative value (Swin's -100) where it does not. Quantizing the sum
    over its observed range would spend most of the 256 levels on the mask.
    So the sum gets the input's range extended down by :data:`MASK_MARGIN`.
    A masked score then saturates at the lowest level, at least
    ``MASK_MARGIN`` below every unmasked score, and its probability rounds to 0.

    Attributes:
        input_qparams (QParams): of the scores.
        mask_qparams (QParams): uint8 over [min(mask), 0]; 0 maps to the
            zero point 255 and so stays exactly 0.
        masked_qparams (QParams): uint8 over [input min - MASK_MARGIN, input max].
        output_qparams (QParams): from :func:`softmax_qparams`.
        windows (int).
        mask (uint8 tensor, buffer): the quantized mask, (1, windows, 1, L, L).

    Arithmetic: masked = QuantAdd(scores per window, mask) at masked_qparams
    (QLinearAdd's kernel), then QuantSoftmax of masked over the last dim.

    ONNX: Reshape(x) -> DequantizeLinear, DequantizeLinear(mask) -> Add ->
    QuantizeLinear(masked_qparams) -> Reshape -> DequantizeLinear -> Softmax
    -> QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearAdd
    and QLinearSoftmax.
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams, mask: torch.Tensor, windows: int) -> None:
        super().__init__()
        if input_qparams.dtype != "uint8":
            raise ValueError("masked softmax is quantized for uint8 activations only")
        if mask.dim() != 4 or mask.shape[0] != windows or mask.shape[1] != 1:
            raise ValueError(f"invalid mask shape {tuple(mask.shape)}: expected (windows={windows}, 1, L, L)")
        if float(mask.max()) != 0.0 or float(mask.min()) >= -MASK_MARGIN:
            raise ValueError(f"invalid mask values: expected 0 where pairs attend and at most -{MASK_MARGIN:g} elsewhere")
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.windows = int(windows)
        self.mask_qparams = qparams_from_range(float(mask.min()), 0.0, "uint8")
        low = input_qparams.scale * (input_qparams.qmin - input_qparams.zero_point)
        high = input_qparams.scale * (input_qparams.qmax - input_qparams.zero_point)
        self.masked_qparams = qparams_from_range(low - MASK_MARGIN, high, "uint8")
        self.register_buffer("mask", quantize(mask.to(torch.float32), self.mask_qparams).unsqueeze(0))
        self.softmax = QuantSoftmax(self.masked_qparams, output_qparams, dim=-1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        heads, length = q.shape[1], q.shape[2]
        per_window = q.reshape(-1, self.windows, heads, length, length)
        masked = qlinear_add(per_window, self.input_qparams, self.mask, self.mask_qparams, self.masked_qparams)
        return self.softmax(masked.reshape(-1, heads, length, length))

    def extra_repr(self) -> str:
        return f"windows={self.windows}, {repr_qparams('masked', self.masked_qparams)}, {repr_qparams('output', self.output_qparams)}"


def _softmax_exp_table(input_scale: float, length: int) -> torch.Tensor:
    """Return QLinearSoftmax's 256 float32 exponentials for rows of ``length`` elements."""
    float32_max = float(torch.finfo(torch.float32).max)
    shift = max(0.0, math.log(float32_max / length) - 5.0) / input_scale
    steps = torch.arange(256, dtype=torch.float64) - 255.0 + shift
    return torch.exp(steps * input_scale).to(torch.float32)


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
        return repr_qparams("output", self.output_qparams)


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
        return f"dim={self.dim}, inputs={len(self.input_qparams)}, {repr_qparams('output', self.output_qparams)}"
