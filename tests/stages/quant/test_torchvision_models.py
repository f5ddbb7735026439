"""Seventeen torchvision classifiers trace, quantize and run, with int8 close to fp32.

Random weights, BatchNorm statistics re-estimated on random inputs, two
calibration batches of two images; small inputs where the architecture
allows. The SQNR bounds sit a few dB below the values measured on these
inputs (deep random networks amplify quantization noise, so the bounds of
resnet50 or efficientnet_b0 are low).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from stages.quant.modules import QuantConv2d, QuantLinear
from torchvision_quant import quantize_model, sqnr_db, torchvision_fp32

# name: (input shape, get_model kwargs, minimum int8-vs-fp32 SQNR in dB)
MODELS: dict[str, tuple[list[int], dict[str, Any], float]] = {
    "resnet18": ([2, 3, 64, 64], {}, 15.0),
    "resnet50": ([2, 3, 64, 64], {}, 3.0),
    "mobilenet_v2": ([2, 3, 64, 64], {}, 5.0),
    "mobilenet_v3_small": ([2, 3, 64, 64], {}, 9.0),
    "efficientnet_b0": ([2, 3, 64, 64], {}, 3.0),
    "shufflenet_v2_x1_0": ([2, 3, 64, 64], {}, 5.0),
    "squeezenet1_0": ([2, 3, 64, 64], {}, 25.0),
    "densenet121": ([2, 3, 32, 32], {}, 8.0),
    "googlenet": ([2, 3, 64, 64], {"aux_logits": False, "init_weights": False}, 6.0),
    "inception_v3": ([2, 3, 75, 75], {"aux_logits": False, "init_weights": False}, 5.0),
    "regnet_y_400mf": ([2, 3, 64, 64], {}, 5.0),
    "mnasnet0_5": ([2, 3, 64, 64], {}, 5.0),
    "alexnet": ([2, 3, 64, 64], {}, 30.0),
    "vgg11": ([2, 3, 32, 32], {}, 22.0),
    "convnext_tiny": ([2, 3, 64, 64], {}, 20.0),
    "vit_b_16": ([2, 3, 32, 32], {"image_size": 32}, 7.0),
    "swin_t": ([2, 3, 64, 64], {}, 17.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_quantizes(name: str) -> None:
    shape, kwargs, min_sqnr = MODELS[name]
    fp32 = torchvision_fp32(name, shape, **kwargs)
    int8, _ = quantize_model(fp32, shape, calibration_batches=2)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))

    with torch.no_grad():
        expected = fp32(x)
        actual = int8(x)

    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    assert sqnr_db(expected, actual) > min_sqnr

    modules = dict(int8.named_modules())
    called = [modules[node.target] for node in int8.graph.nodes if node.op == "call_module"]
    float_convs = [module for module in called if type(module) in (nn.Conv2d, nn.Linear)]
    assert float_convs == []
    assert any(isinstance(module, QuantConv2d) for module in called)
    if any(isinstance(module, nn.Linear) for module in fp32.modules()):
        assert any(isinstance(module, QuantLinear) for module in called)
