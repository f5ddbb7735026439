"""BatchNorm folding against torch's eval-mode BatchNorm."""

from __future__ import annotations

import torch
from torch import fx, nn

from quant_models import randomize_batchnorm, tiny_resnet
from stages.quant.fold import fold_batchnorm, fold_conv_bn


def test_fold_conv_bn_matches_torch() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
    bn = nn.BatchNorm2d(8)
    model = nn.Sequential(conv, bn)
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(4, 3, 9, 9)

    folded = fold_conv_bn(conv, bn)
    assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_on_resnet_keeps_output() -> None:
    gm = tiny_resnet()
    folded, pairs = fold_batchnorm(gm)
    x = torch.randn(8, 1, 8, 8)

    with torch.no_grad():
        assert torch.allclose(folded(x), gm(x), atol=1e-5, rtol=1e-5)
    assert pairs["conv1"] == "bn1"
    assert pairs["layer1_1_downsample_0"] == "layer1_1_downsample_1"
    assert len(pairs) == 6
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    # The fp32 GraphModule is left as it was.
    assert any(isinstance(module, nn.BatchNorm2d) for module in gm.modules())


def test_batchnorm_after_shared_conv_output_stays() -> None:
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    gm = fx.symbolic_trace(TwoUsers().eval())
    folded, pairs = fold_batchnorm(gm)
    assert pairs == {}
    x = torch.randn(1, 2, 5, 5)
    assert torch.allclose(folded(x), gm(x))
