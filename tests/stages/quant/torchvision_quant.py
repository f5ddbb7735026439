"""Build, calibrate and convert torchvision classifiers with random weights.

Random weights give degenerate activations unless BatchNorm statistics match
them, so :func:`reestimate_batchnorm` recomputes every running mean and
variance from random inputs before the model is traced.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import fx, nn

from stages.quant.calibration import calibrate
from stages.quant.convert import convert
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig
from stages.tracing.tracer import trace_model

QCONFIG_DEFAULTS: dict[str, Any] = {
    "activation_observer": "minmax",
    "percentile": 99.99,
    "weight_observer": "minmax",
    "activation_dtype": "uint8",
    "per_channel": True,
    "skip": [],
}


def reestimate_batchnorm(model: nn.Module, input_shape: list[int], batches: int = 4, seed: int = 0) -> None:
    """Set BatchNorm running statistics to the cumulative mean over random batches."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*input_shape, generator=generator))
    model.eval()


def torchvision_fp32(name: str, input_shape: list[int], seed: int = 0, **kwargs: Any) -> fx.GraphModule:
    """Trace torchvision model ``name`` with seeded random weights and re-estimated BatchNorm."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    # Some heads (vit_b_16) start at zero, which would make every output 0.
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    reestimate_batchnorm(model, input_shape)
    return trace_model(model.eval())


def quantize_model(
    fp32: fx.GraphModule,
    input_shape: list[int],
    calibration_batches: int = 2,
    seed: int = 1,
    **params: Any,
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Quantize ``fp32`` on random calibration batches; return the int8 model and its qconfig."""
    qconfig = build_qconfig(fp32, input_shape, {**QCONFIG_DEFAULTS, **params})
    observed, _ = insert_observers(fp32, qconfig)
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(*input_shape, generator=generator) for _ in range(calibration_batches)]
    calibrate(observed, batches)
    int8_model, _ = convert(observed)
    return int8_model, qconfig


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``actual`` against ``reference``, in dB."""
    noise = (reference.double() - actual.double()).pow(2).sum()
    signal = reference.double().pow(2).sum()
    return float(10 * torch.log10(signal / noise.clamp_min(1e-30)))
