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
So the integer outputs equal those of QLinearConv, QGemm, QLinearAdd,
QLinearMul, QLinearSoftmax and QLinearGlobalAveragePool bit for bit, which
tests/stages/quant/test_ort_parity.py checks.

The classes live in one submodule per family (weighted, pointwise,
pooling, tensor_ops) and are re-exported here.

NOTE: with int8 (symmetric) activations and a fused ReLU, onnxruntime keeps
the Relu node, so it runs the float QDQ path (a float32 Conv on dequantized
values). These modules do not repeat that float rounding, so outputs then
agree to within one step, not bit for bit.

flatten, reshape, view and similar shape operations have no module: the fx
node runs on the integer tensor directly and its qparams are those of its
input (see ``qparams`` on the converted GraphModule).
"""

from __future__ import annotations

from torch import nn

from stages.quant.modules.pointwise import (
    QuantAdd,
    QuantBatchNorm2d,
    QuantGELU,
    QuantHardsigmoid,
    QuantHardswish,
    QuantMul,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSiLU,
    gate_qparams,
)
from stages.quant.modules.pooling import QuantAdaptiveAvgPool2d, QuantAvgPool2d, QuantMaxPool2d, QuantMean
from stages.quant.modules.tensor_ops import QuantCat, QuantMaskedSoftmax, QuantMatMul, QuantSoftmax, softmax_qparams
from stages.quant.modules.weighted import Dequantize, QuantConv2d, QuantLinear, Quantize

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
    "QuantSoftmax",
    "QuantMaskedSoftmax",
    "QuantBatchNorm2d",
    "QuantMul",
    "QuantMatMul",
    "QuantCat",
    "QuantMean",
    "INT8_MODULES",
    "gate_qparams",
    "softmax_qparams",
]

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
    QuantSoftmax,
    QuantMaskedSoftmax,
    QuantBatchNorm2d,
    QuantMul,
    QuantMatMul,
    QuantCat,
    QuantMean,
)
