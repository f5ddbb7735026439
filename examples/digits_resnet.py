"""A small ResNet for scikit-learn's 8 x 8 digits, the project's example model.

It uses the building blocks of torchvision's ResNet: a BasicBlock calls one
ReLU module twice and has a 1x1 conv + BatchNorm downsample where the stride
or width changes. For 1 x 8 x 8 inputs it has a 16-channel stem, one block
per stage of 16, 32 and 64 channels (8x8, 4x4, 2x2), global average pooling
and a linear head. ``train_digits_resnet.py`` writes the trained weights to
``digits_resnet.pt``.
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_CHANNELS = (16, 32, 64)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity or a downsample, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # One module called twice, as in torchvision's BasicBlock: the traced
        # graph then has two call sites of the same ReLU.
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out = out + identity
        out = self.relu(out)
        return out


class DigitsResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = conv3x3(1, STAGE_CHANNELS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_CHANNELS[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(STAGE_CHANNELS[0], STAGE_CHANNELS[0])
        self.layer2 = BasicBlock(STAGE_CHANNELS[0], STAGE_CHANNELS[1], stride=2)
        self.layer3 = BasicBlock(STAGE_CHANNELS[1], STAGE_CHANNELS[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(STAGE_CHANNELS[2], num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def build_model(num_classes: int = 10) -> DigitsResNet:
    """Return an untrained DigitsResNet; load ``digits_resnet.pt`` for trained weights."""
    return DigitsResNet(num_classes)
