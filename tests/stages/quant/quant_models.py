"""Small models for the graph tests: torchvision BasicBlocks and a shared ReLU."""

from __future__ import annotations

import torch
from torch import fx, nn
from torchvision.models.resnet import BasicBlock

from stages.quant.qconfig import build_qconfig

INPUT_SHAPE = [1, 1, 8, 8]


class TinyResNet(nn.Module):
    """conv-bn-relu stem, two BasicBlocks (one downsampling), adaptive avg pool, flatten, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2, downsample=downsample))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)


def tiny_resnet() -> fx.GraphModule:
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_batchnorm(model)
    return fx.symbolic_trace(model.eval())


def qconfig_for(gm: fx.GraphModule, **params) -> dict:
    defaults = {
        "activation_observer": "minmax",
        "percentile": 99.99,
        "weight_observer": "minmax",
        "activation_dtype": "uint8",
        "per_channel": True,
        "skip": [],
    }
    return build_qconfig(gm, INPUT_SHAPE, {**defaults, **params})
