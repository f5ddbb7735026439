"""Each op family on small modules: the emitted layers run in pycaffe and match torch blob by blob."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from caffe_helpers import export_and_run, requires_caffe
from stages.caffe.ops_pool import caffe_pooled_size
from stages.quant.fold import fold_batchnorm
from stages.caffe.emitter import build_net

pytestmark = [pytest.mark.caffe, requires_caffe]

TOLERANCE = 1e-5


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_matches(run, tolerance: float = TOLERANCE) -> None:
    """Check that every blob storing an fx value matches it, and that the outputs match."""
    divergence = run.first_divergence(tolerance)
    assert divergence is None or divergence.max_rel_diff <= tolerance, divergence.describe()
    assert run.max_rel_diff() <= tolerance


def layers(run, layer_type: str) -> list:
    return [layer for layer in run.graph.net.layer if layer.type == layer_type]


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(4, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding="valid", groups=8)
        self.same = nn.Conv2d(8, 6, (3, 5), padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.same(self.depthwise(self.grouped(self.plain(x))))


def test_convolution_groups_dilation_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    run = export_and_run(Convs(), randn(2, 4, 11, 13), tmp_path)

    assert_matches(run)
    params = {layer.name: layer.convolution_param for layer in layers(run, "Convolution")}
    assert params["grouped"].group == 4
    assert list(params["grouped"].dilation) == [2, 2]
    assert params["grouped"].bias_term is False
    assert list(params["same"].pad) == [1, 2]
    assert run.outputs[0].shape == (2, 6, 5, 6)


def test_deconvolution(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2), nn.ConvTranspose2d(6, 3, 3))
    run = export_and_run(module, randn(2, 4, 5, 7), tmp_path)

    assert_matches(run)
    assert len(layers(run, "Deconvolution")) == 2
    assert run.outputs[0].shape == (2, 3, 12, 16)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        with torch.no_grad():
            for norm in (self.bn, self.bn2):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.relu(self.bn(self.conv(x))))


def test_batchnorm_as_batchnorm_and_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    run = export_and_run(ConvBN(), randn(2, 3, 6, 6), tmp_path)

    assert_matches(run)
    assert [layer.type for layer in run.graph.net.layer] == ["Input", "Convolution", "BatchNorm", "Scale", "ReLU", "BatchNorm", "Scale"]
    assert layers(run, "BatchNorm")[1].batch_norm_param.eps == pytest.approx(1e-3)


def test_folded_batchnorm_blob_takes_batchnorm_name(tmp_path: Path) -> None:
    from stages.tracing.tracer import trace_model

    torch.manual_seed(0)
    folded, absorbed = fold_batchnorm(trace_model(ConvBN().eval()))
    graph = build_net(folded, randn(2, 3, 6, 6), blob_names=absorbed)

    assert absorbed == {"conv": "bn"}
    conv = next(layer for layer in graph.net.layer if layer.type == "Convolution")
    assert (conv.name, list(conv.top)) == ("conv", ["bn"])
    # The second BatchNorm follows a ReLU, so it stays BatchNorm + Scale.
    assert [layer.type for layer in graph.net.layer].count("BatchNorm") == 1


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.acts = nn.ModuleList(
            [
                nn.ReLU(), nn.ReLU6(), nn.PReLU(4), nn.PReLU(), nn.LeakyReLU(0.2), nn.ELU(0.7),
                nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.Hardtanh(0.0, 6.0),
            ]
        )
        with torch.no_grad():
            self.acts[2].weight.copy_(torch.tensor([0.1, -0.3, 0.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [act(x) for act in self.acts]
        values += [F.relu(x), F.silu(x), torch.sigmoid(x), F.hardswish(x), F.leaky_relu(x, 0.05)]
        return torch.cat(values, dim=1)


def test_activations(tmp_path: Path) -> None:
    # Values up to +-8 cross every kink: 0, +-3 of the hard functions and 6 of ReLU6.
    run = export_and_run(Activations(), 4 * randn(2, 4, 5, 5), tmp_path)

    assert_matches(run)
    types = run.layer_types()
    for layer_type in ("ReLU", "ReLU6", "PReLU", "ELU", "Sigmoid", "TanH", "HardSwish", "HardSigmoid", "Eltwise"):
        assert layer_type in types
    prelus = layers(run, "PReLU")
    assert [layer.prelu_param.channel_shared for layer in prelus] == [False, True]
    # SiLU has no Caffe layer: Sigmoid, then the product with the input.
    silu = next(layer for layer in run.graph.net.layer if layer.name == "acts_10")
    assert silu.type == "Eltwise"
    assert silu.eltwise_param.operation == run.graph.pb.EltwiseParameter.PROD


def test_softmax_linear_flatten(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(48, 10), nn.Softmax(dim=1))
    run = export_and_run(module, randn(3, 3, 4, 4), tmp_path)

    assert_matches(run)
    assert run.layer_types() == ["Input", "Flatten", "InnerProduct", "Softmax"]


class PoolRounding(nn.Module):
    """resnet18's stem pooling, a ceil_mode pooling and a padded average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.MaxPool2d(3, 2, 1)
        self.ceil = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.stem(x), self.ceil(x), self.avg(x)


def test_pooling_keeps_pytorch_output_size(tmp_path: Path) -> None:
    # A stock Caffe rounds up: 16 -> ceil((16 + 2 - 3) / 2) + 1 = 9, where PyTorch gives 8.
    assert caffe_pooled_size(16, 3, 2, 1, ceil_mode=True) == 9

    run = export_and_run(PoolRounding(), randn(2, 3, 16, 16), tmp_path)

    assert_matches(run)
    assert [output.shape for output in run.outputs] == [(2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8)]
    assert [layer.pooling_param.ceil_mode for layer in layers(run, "Pooling")] == [False, True, False]


def test_pooling_with_odd_sizes(tmp_path: Path) -> None:
    run = export_and_run(PoolRounding(), randn(1, 2, 15, 12), tmp_path)

    assert_matches(run)
    assert [output.shape[2:] for output in run.outputs] == [(8, 6), (7, 6), (8, 6)]


class AdaptivePools(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.adaptive_avg_pool2d(x, 1),
            F.adaptive_avg_pool2d(x, (4, 2)),
            F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(x, 1), 3),
            x.mean([2, 3]),
            x.mean((-1, -2), keepdim=True),
        )


def test_adaptive_average_pooling(tmp_path: Path) -> None:
    run = export_and_run(AdaptivePools(), randn(2, 3, 8, 6), tmp_path)

    assert_matches(run)
    assert [output.shape for output in run.outputs] == [(2, 3, 1, 1), (2, 3, 4, 2), (2, 3, 3, 3), (2, 3), (2, 3, 1, 1)]
    # 1 x 1 to 3 x 3 replicates each value: nearest Upsample with scale 3.
    assert [layer.upsample_param.scale for layer in layers(run, "Upsample")] == [3]


class Arithmetic(nn.Module):
    def forward(self, x: torch.Tensor, ) -> torch.Tensor:
        y = torch.sigmoid(x)
        values = [x + y, x - y, x * y, torch.max(x, y), x + 1.5, 2.0 - x, x * 0.5, x / 4, 3 * y]
        return torch.cat(values, dim=1)


def test_eltwise_and_power(tmp_path: Path) -> None:
    run = export_and_run(Arithmetic(), randn(2, 3, 4, 4), tmp_path)

    assert_matches(run)
    operations = [layer.eltwise_param.operation for layer in layers(run, "Eltwise")]
    eltwise = run.graph.pb.EltwiseParameter
    assert operations == [eltwise.SUM, eltwise.SUM, eltwise.PROD, eltwise.MAX]
    assert list(layers(run, "Eltwise")[1].eltwise_param.coeff) == [1.0, -1.0]
    assert len(layers(run, "Power")) == 5


class SqueezeExcitation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * scale


def test_squeeze_and_excitation_scales_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    run = export_and_run(SqueezeExcitation(), randn(3, 8, 5, 5), tmp_path)

    assert_matches(run)
    scale = layers(run, "Scale")[0]
    assert len(scale.bottom) == 2
    assert scale.scale_param.axis == 0
    assert run.blobs["mul/flatten"].shape == (3, 8)


class ChannelShuffle(nn.Module):
    """The channel split and shuffle of shufflenet_v2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        x = torch.cat((left, torch.relu(right)), dim=1)
        batch, channels, height, width = x.size()
        x = x.view(batch, 2, channels // 2, height, width)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(batch, -1, height, width)


def test_channel_shuffle(tmp_path: Path) -> None:
    run = export_and_run(ChannelShuffle(), randn(2, 8, 3, 3), tmp_path)

    assert_matches(run)
    assert run.layer_types() == ["Input", "Slice", "ReLU", "Concat", "Reshape", "Permute", "Reshape"]
    assert list(layers(run, "Permute")[0].permute_param.order) == [0, 2, 1, 3, 4]
    # The chunk's parts take the names of the getitem nodes that pick them.
    assert list(layers(run, "Slice")[0].top) == ["getitem", "getitem_1"]


class Slicing(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first, second, third = torch.split(x, [2, 3, 1], dim=1)
        return x[:, 1:4], x[..., 2:], x[:, :, :3], second * 2, torch.cat((third, first), 1)


def test_slicing_and_split(tmp_path: Path) -> None:
    run = export_and_run(Slicing(), randn(2, 6, 5, 4), tmp_path)

    assert_matches(run)
    assert [output.shape for output in run.outputs] == [(2, 3, 5, 4), (2, 6, 5, 2), (2, 6, 3, 4), (2, 3, 5, 4), (2, 3, 5, 4)]
    assert "Silence" in run.layer_types()


class Reshapes(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nhwc = x.permute(0, 2, 3, 1)
        return nhwc, x.reshape(2, 3, -1), x.view(2, -1).unsqueeze(1), torch.flatten(x, 2)


def test_reshape_permute_flatten(tmp_path: Path) -> None:
    run = export_and_run(Reshapes(), randn(2, 3, 4, 5), tmp_path)

    assert_matches(run)
    assert [output.shape for output in run.outputs] == [(2, 4, 5, 3), (2, 3, 20), (2, 1, 60), (2, 3, 20)]


class Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            self.nearest(x),
            F.interpolate(x, scale_factor=3, mode="nearest"),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
            F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True),
            self.shuffle(x),
        )


def test_upsampling_and_pixel_shuffle(tmp_path: Path) -> None:
    run = export_and_run(Upsampling(), randn(2, 4, 4, 5), tmp_path)

    assert_matches(run)
    assert [output.shape for output in run.outputs] == [(2, 4, 8, 10), (2, 4, 12, 15), (2, 4, 8, 10), (2, 4, 7, 9), (2, 1, 8, 10)]
    assert run.layer_types().count("BilinearInterpolate") == 2
    assert "PixelShuffle" in run.layer_types()


def test_dropout_and_identity_vanish(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Identity(), nn.ReLU())
    run = export_and_run(module, randn(4, 6), tmp_path)

    assert_matches(run)
    assert run.layer_types() == ["Input", "InnerProduct", "ReLU"]
    assert list(layers(run, "ReLU")[0].bottom) == ["_0"]
