"""Elementwise int8 ops: add, ReLU, the activations (plain and gated), BatchNorm and mul."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stages.quant.arithmetic import QParams, dequantize, qlinear_add, qlinear_mul, quantize, to_float32

from stages.quant.modules.common import repr_qparams


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
        return f"relu={self.relu}, {repr_qparams('output', self.output_qparams)}"


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
        return repr_qparams("output", self.output_qparams)


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
        return repr_qparams("output", self.output_qparams)


class QuantReLU6(_QuantElementwise):
    """min(max(x, 0), 6) of a quantized tensor (no preceding op absorbed it).

    Attributes: input_qparams, output_qparams. Arithmetic: see the base
    class, op = clamp(x, 0, 6).

    ONNX: DequantizeLinear(x) -> Clip(min=0, max=6) -> QuantizeLinear(output_qparams).
    """

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


def gate_qparams(dtype: str) -> QParams:
    """Return the fixed qparams of a gate value in [0, 1]: 256 levels, 0 and 1 exact."""
    return QParams(to_float32(1.0 / 255.0), 0 if dtype == "uint8" else -128, dtype)


class _QuantGated(nn.Module):
    """Base of the int8 ops x * gate(x) whose gate lies in [0, 1] (SiLU, Hardswish, GELU).

    Attributes:
        input_qparams, output_qparams (QParams).
        gate_qparams (QParams): fixed, from :func:`gate_qparams` for the input dtype.

    Arithmetic, two int8 steps as onnxruntime runs them:
        x = float32(q - input_zero_point) * input_scale
        g = quantize(gate(x), gate_qparams)                          (float32)
        y = qlinear_mul(q, g)   (QLinearMul's kernel, see stages.quant.arithmetic)

    ONNX: DequantizeLinear(q) -> gate -> QuantizeLinear(gate_qparams) ->
    DequantizeLinear, then Mul with DequantizeLinear(q) -> QuantizeLinear(output_qparams).
    onnxruntime runs the product as QLinearMul, which the float path x * sigmoid(x)
    between one Dequantize and one Quantize would not allow.

    NOTE: onnxruntime computes the gate from a 256-entry table that its own
    sigmoid approximation fills, so a gate value at a rounding boundary can
    land one step apart from torch's.
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.gate_qparams = gate_qparams(input_qparams.dtype)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        gate = quantize(self.gate(dequantize(q, self.input_qparams)), self.gate_qparams)
        return qlinear_mul(q, self.input_qparams, gate, self.gate_qparams, self.output_qparams)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return repr_qparams("output", self.output_qparams)


class QuantHardswish(_QuantGated):
    """Hardswish of a quantized tensor: x * hardsigmoid(x), hardsigmoid(x) = relu6(x + 3) / 6.

    Attributes and arithmetic: see the base class, gate = hardsigmoid.

    ONNX: the base class's pattern with HardSigmoid(alpha=1/6, beta=0.5) as the gate.
    """

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


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


class QuantSiLU(_QuantGated):
    """SiLU (swish) of a quantized tensor: x * sigmoid(x).

    Attributes and arithmetic: see the base class, gate = sigmoid.

    ONNX: the base class's pattern with Sigmoid as the gate; onnxruntime runs
    the gate as QLinearSigmoid.
    """

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


# Levels per unit of the GELU gate's core (erf or tanh, in [-1, 1]). With 127,
# core + 1 is a whole number of levels. So the gate (1 + core) / 2 reads the
# core's integers with half its scale.
GELU_CORE_LEVELS = 127


class QuantGELU(nn.Module):
    """GELU of a quantized tensor: x * Phi(x), with Phi(x) = (1 + core(x)) / 2 the standard normal CDF.

    The core is erf(x / sqrt(2)), or tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))
    with ``approximate="tanh"``. It lies in [-1, 1], so it is quantized at
    the fixed scale 1/127 with its zero at level 127 (uint8) or 0 (int8).
    The same integers, read with scale 1/254 and the zero point 127 levels
    lower, are the gate (1 + core) / 2. So the gate costs no Add and no Mul,
    and the 1/sqrt(2) of erf's argument folds into the input's scale.

    Attributes:
        input_qparams, output_qparams (QParams).
        approximate (str): "none" (erf) or "tanh".
        scaled_input_qparams (QParams): the input's qparams with the scale
            float32(input_scale / sqrt(2)): Dequantize with it gives x / sqrt(2).
        core_qparams (QParams): scale float32(1/127), zero point 127 (uint8) or 0 (int8).
        gate_qparams (QParams): scale core_scale / 2, zero point core_zero_point - 127.

    Arithmetic:
        erf:  c = erf(float32(q - input_zero_point) * scaled_input_scale)
        tanh: x = dequantize(q); c = tanh(((x * 0.044715) * x * x + x) * sqrt(2 / pi))
        g = quantize(c, core_qparams)                                   (float32)
        y = qlinear_mul(q, g read with gate_qparams)  (QLinearMul's kernel)

    ONNX: DequantizeLinear(q, scaled_input_qparams) -> Erf (or the tanh form on
    DequantizeLinear(q)) -> QuantizeLinear(core_qparams) ->
    DequantizeLinear(gate_qparams), then Mul with DequantizeLinear(q) ->
    QuantizeLinear(output_qparams); onnxruntime runs the product as QLinearMul.

    NOTE: onnxruntime's Erf and Tanh kernels are their own approximations,
    so a core value at a rounding boundary can land one step apart from torch's.
    """

    def __init__(self, input_qparams: QParams, output_qparams: QParams, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"invalid GELU approximate {approximate!r}: expected 'none' or 'tanh'")
        dtype = input_qparams.dtype
        self.input_qparams = input_qparams
        self.output_qparams = output_qparams
        self.approximate = approximate
        self.scaled_input_qparams = QParams(to_float32(input_qparams.scale / math.sqrt(2.0)), input_qparams.zero_point, dtype)
        core_zero_point = GELU_CORE_LEVELS if dtype == "uint8" else 0
        self.core_qparams = QParams(to_float32(1.0 / GELU_CORE_LEVELS), core_zero_point, dtype)
        self.gate_qparams = QParams(self.core_qparams.scale / 2.0, core_zero_point - GELU_CORE_LEVELS, dtype)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            x = dequantize(q, self.input_qparams)
            core = torch.tanh(((x * 0.044715) * x * x + x) * math.sqrt(2.0 / math.pi))
        else:
            core = torch.erf(dequantize(q, self.scaled_input_qparams))
        gate = quantize(core, self.core_qparams)
        return qlinear_mul(q, self.input_qparams, gate, self.gate_qparams, self.output_qparams)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, {repr_qparams('output', self.output_qparams)}"


class QuantBatchNorm2d(_QuantElementwise):
    """Eval-mode BatchNorm2d of a quantized tensor that no conv absorbed, with an optional fused ReLU.

    Attributes: input_qparams, output_qparams, bn (the float nn.BatchNorm2d,
    eval mode), relu (bool: a following ReLU is applied before quantizing).
    Arithmetic: see the base class, op = bn, then max(0, .) when relu.

    ONNX: DequantizeLinear(x) -> BatchNormalization(bn.weight, bn.bias,
    bn.running_mean, bn.running_var, epsilon=bn.eps) [-> Relu] ->
    QuantizeLinear(output_qparams).
    """

    def __init__(self, bn: nn.BatchNorm2d, input_qparams: QParams, output_qparams: QParams, relu: bool = False) -> None:
        super().__init__(input_qparams, output_qparams)
        self.bn = bn.eval()
        self.relu = relu

    def float_op(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        return torch.relu(y) if self.relu else y


class QuantMul(nn.Module):
    """Elementwise product of two quantized tensors (broadcasting).

    Attributes:
        a_qparams, b_qparams (QParams): of the two inputs, in call order.
        output_qparams (QParams).

    Arithmetic: QLinearMul's kernel, (a - a_zero_point) * (b - b_zero_point)
    in integers, then float32 scaling by a_scale * b_scale / output_scale
    (see :func:`stages.quant.arithmetic.qlinear_mul`).

    ONNX: DequantizeLinear(a), DequantizeLinear(b) -> Mul ->
    QuantizeLinear(output_qparams); onnxruntime fuses it into QLinearMul.
    """

    def __init__(self, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams) -> None:
        super().__init__()
        self.a_qparams = a_qparams
        self.b_qparams = b_qparams
        self.output_qparams = output_qparams

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return qlinear_mul(a, self.a_qparams, b, self.b_qparams, self.output_qparams)

    def extra_repr(self) -> str:
        return repr_qparams("output", self.output_qparams)
