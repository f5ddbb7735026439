"""Small models and their int8 GraphModules, built with the quantization library."""

from __future__ import annotations

import torch
from torch import fx, nn

from pipeline.schema import fill_defaults, load_schema, stage_schema_path
from stages.quant.calibration import calibrate
from stages.quant.convert import convert
from stages.quant.observe import insert_observers
from stages.quant.qconfig import build_qconfig
from stages.tracing.tracer import trace_model


class ConvAddLinear(nn.Module):
    """Conv-BN-ReLU, a grouped conv, a residual add, pooling and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(self.conv1(x)))
        b = self.conv2(a)
        x = self.pool(self.relu2(a + b))
        x = torch.flatten(self.avg(x), 1)
        return self.fc2(self.relu3(self.fc1(x)))


def quantize_model(
    module: nn.Module,
    input_shape: list[int],
    activation_dtype: str = "uint8",
    batches: int = 4,
) -> tuple[fx.GraphModule, fx.GraphModule, torch.Tensor]:
    """Trace, calibrate on seeded random batches and convert.

    Returns the fp32 GraphModule, the int8 GraphModule and the calibration inputs.
    """
    torch.manual_seed(0)
    fp32 = trace_model(module.eval())
    params = fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {"activation_dtype": activation_dtype})
    qconfig = build_qconfig(fp32, input_shape, params)
    observed, _ = insert_observers(fp32, qconfig)
    inputs = torch.randn(batches * 8, *input_shape[1:])
    calibrate(observed, inputs.split(8))
    int8, _ = convert(observed)
    return fp32, int8.eval(), inputs


def quantize_graph(
    fp32: fx.GraphModule,
    input_shape: list[int],
    batches: int = 1,
    batch_size: int = 2,
    activation_dtype: str = "uint8",
) -> fx.GraphModule:
    """Calibrate a traced model on seeded random batches and convert it to int8."""
    params = fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {"activation_dtype": activation_dtype})
    qconfig = build_qconfig(fp32, input_shape, params)
    observed, _ = insert_observers(fp32, qconfig)
    generator = torch.Generator().manual_seed(1)
    calibrate(observed, [torch.randn(batch_size, *input_shape[1:], generator=generator) for _ in range(batches)])
    int8, _ = convert(observed)
    return int8.eval()
