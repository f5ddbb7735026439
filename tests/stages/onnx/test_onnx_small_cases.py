"""Small cases other exporters get wrong, and the ops the transformer models need, against torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.checker
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.onnx.emitter import export_graph_module
from stages.onnx.ops_pool import adaptive_pooling_matrix
from stages.tracing.tracer import trace_model


def run_onnx(model: onnx.ModelProto, example: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example.numpy()})


def export_and_compare(
    module: nn.Module,
    input_shape: tuple[int, ...],
    opset: int = 17,
    dynamic_batch: bool = False,
    rtol: float = 1e-4,
) -> onnx.ModelProto:
    """Trace, export, check and compare with torch (also at batch 3 when dynamic_batch)."""
    torch.manual_seed(0)
    graph_module = trace_model(nn.Sequential(module).eval())
    example = torch.randn(input_shape)
    model = export_graph_module(graph_module, example, opset=opset, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(model, full_check=True)

    examples = [example] + ([torch.randn(3, *input_shape[1:])] if dynamic_batch else [])
    for value in examples:
        with torch.no_grad():
            expected = graph_module(value)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for got, want in zip(run_onnx(model, value), expected):
            assert got.shape == tuple(want.shape)
            scale = max(float(want.abs().max()), 1e-6)
            assert float(np.abs(got - want.numpy()).max()) / scale <= rtol
    return model


class Interpolate(nn.Module):
    def __init__(self, **settings) -> None:
        super().__init__()
        self.settings = settings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.settings)


def op_attribute(model: onnx.ModelProto, op_type: str, name: str):
    node = next(node for node in model.graph.node if node.op_type == op_type)
    attribute = next(attribute for attribute in node.attribute if attribute.name == name)
    return onnx.helper.get_attribute_value(attribute)


@pytest.mark.parametrize(("size_in", "size_out"), [((5, 7), (7, 12)), ((7, 5), (3, 4)), ((10, 13), (13, 10)), ((3, 3), (8, 11))])
def test_nearest_to_size_not_a_multiple(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    # Integer-valued input: any wrong source index shows as an exact mismatch.
    model = export_and_compare(Interpolate(size=size_out, mode="nearest"), (1, 2, *size_in), rtol=0.0)

    assert op_attribute(model, "Resize", "coordinate_transformation_mode") == b"asymmetric"
    assert op_attribute(model, "Resize", "nearest_mode") == b"floor"


def test_nearest_scale_factor() -> None:
    export_and_compare(Interpolate(scale_factor=2, mode="nearest"), (1, 3, 5, 6), rtol=0.0)
    export_and_compare(nn.Upsample(scale_factor=3), (1, 3, 4, 4), rtol=0.0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("size_in", "size_out"), [((6, 6), (13, 9)), ((9, 13), (4, 5)), ((5, 5), (1, 7))])
def test_bilinear(align_corners: bool, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    module = Interpolate(size=size_out, mode="bilinear", align_corners=align_corners)
    model = export_and_compare(module, (1, 3, *size_in), rtol=1e-5)

    # Not pytorch_half_pixel: for an output of length 1 it reads coordinate 0, PyTorch the center.
    expected = b"align_corners" if align_corners else b"half_pixel"
    assert op_attribute(model, "Resize", "coordinate_transformation_mode") == expected


class ChannelShuffle(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.size()
        x = x.view(batch, 4, channels // 4, height, width)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(batch, -1, height, width)


def test_channel_shuffle() -> None:
    export_and_compare(nn.Sequential(nn.Conv2d(3, 8, 1), ChannelShuffle()), (2, 3, 5, 5), dynamic_batch=True)


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_is_depth_to_space_crd(functional: bool) -> None:
    module = _PixelShuffleCall() if functional else nn.PixelShuffle(2)
    model = export_and_compare(module, (1, 12, 3, 4), rtol=0.0)

    assert op_attribute(model, "DepthToSpace", "mode") == b"CRD"
    assert op_attribute(model, "DepthToSpace", "blocksize") == 2


class _PixelShuffleCall(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, 2)


def test_pixel_unshuffle() -> None:
    export_and_compare(nn.PixelUnshuffle(2), (1, 3, 4, 6), rtol=0.0)


def test_adaptive_pooling_matrix_matches_torch() -> None:
    values = torch.randn(1, 1, 1, 7, dtype=torch.float64)
    expected = F.adaptive_avg_pool1d(values[0], 3).numpy()
    actual = values[0].numpy() @ adaptive_pooling_matrix(7, 3).T.astype(np.float64)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


@pytest.mark.parametrize("size", [(6, 6), (1, 1), (2, 3)])
def test_adaptive_avg_pool_uneven_windows(size: tuple[int, int]) -> None:
    export_and_compare(nn.AdaptiveAvgPool2d(size), (2, 3, 5, 4))


class Attention(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.norm(x + y)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_multihead_attention_and_layer_norm(batch_first: bool, opset: int) -> None:
    model = export_and_compare(Attention(batch_first), (2, 5, 16), opset=opset, dynamic_batch=batch_first)

    op_types = {node.op_type for node in model.graph.node}
    assert ("LayerNormalization" in op_types) == (opset >= 17)


class AttentionWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention(x, x, x)


def test_multihead_attention_weights() -> None:
    export_and_compare(AttentionWeights(), (2, 3, 8))


class SplitIndexExpand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        tokens = self.token.expand(x.shape[0], -1, -1)
        sequence = torch.cat([tokens, a.flatten(2).transpose(1, 2)[:, :5]], dim=1)
        return sequence[:, 0] + b[:, 1:4, 0, ::2].mean()


def test_split_getitem_and_expand_with_dynamic_batch() -> None:
    export_and_compare(SplitIndexExpand(), (2, 8, 3, 4), dynamic_batch=True)


def test_stochastic_depth_is_identity_in_eval() -> None:
    from torchvision.ops import StochasticDepth

    model = export_and_compare(nn.Sequential(nn.Linear(4, 4), StochasticDepth(0.5, "row")), (2, 4))

    assert [node.op_type for node in model.graph.node] == ["Gemm"]


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = x[:, 1:4] * 2.0
        return self.attention(x, memory, memory, need_weights=False)[0]


@pytest.mark.parametrize("opset", [13, 18])
def test_multihead_attention_separate_key_value(opset: int) -> None:
    export_and_compare(CrossAttention(), (2, 5, 8), opset=opset)


@pytest.mark.parametrize("opset", [13, 18])
def test_multihead_attention_weights_opsets(opset: int) -> None:
    export_and_compare(AttentionWeights(), (2, 3, 8), opset=opset)


class ClassToken(nn.Module):
    """Module that prepends a learned token, expanded to the input's batch size as in ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


def test_expand_computed_batch_stays_dynamic() -> None:
    # An example batch of 1 makes the expanded size look like a literal 1.
    model = export_and_compare(ClassToken(), (1, 5, 4), dynamic_batch=True)

    assert [node.op_type for node in model.graph.node].count("Expand") == 1


class RollPad(nn.Module):
    """Model that pads, rolls two axes and folds the batch into windows, as Swin does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 1, 0, 2), value=0.5)
        x = torch.roll(x, shifts=(-2, 1), dims=(1, 2))
        return x.reshape(-1, 2, 2, 3).mean(dim=1)


def test_roll_pad_reshape_dynamic_batch() -> None:
    model = export_and_compare(RollPad(), (1, 4, 3, 3), dynamic_batch=True, rtol=0.0)

    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Pad") == 1
    assert ops.count("Concat") == 2
