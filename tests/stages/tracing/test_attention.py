"""Inlining of nn.MultiheadAttention self-attention, checked against the module itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.tracing.tracer import qualified_class_name, trace_model

EMBED = 16
HEADS = 4


class Encoder(nn.Module):
    """Model with self-attention and a residual. ``call`` contains the keyword arguments of the attention call."""

    def __init__(self, batch_first: bool = True, bias: bool = True, **call: object) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, bias=bias, batch_first=batch_first)
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.attention(x, x, x, **self.call)
        return x + output


class CrossAttention(nn.Module):
    """Model whose query differs from its key and value."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x * 2.0, x * 2.0, need_weights=False)[0]


class ReturnsWeights(nn.Module):
    """Model that reads the attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, weights = self.attention(x, x, x)
        return output.sum(-1) + weights.sum(-1)


class SharedAttention(nn.Module):
    """Model that calls one attention module twice, the second time with a mask."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
        self.mask = torch.zeros(5, 5) if masked else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(x, x, x, need_weights=False)[0]
        return self.attention(y, y, y, need_weights=False, attn_mask=self.mask)[0]


def _attention_nodes(graph_module: torch.fx.GraphModule) -> list[str]:
    modules = dict(graph_module.named_modules())
    return [
        node.name
        for node in graph_module.graph.nodes
        if node.op == "call_module" and isinstance(modules[node.target], nn.MultiheadAttention)
    ]


def _input(batch_first: bool) -> torch.Tensor:
    shape = (2, 5, EMBED) if batch_first else (5, 2, EMBED)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_inlined_attention_matches_module(batch_first: bool, bias: bool) -> None:
    torch.manual_seed(0)
    model = Encoder(batch_first=batch_first, bias=bias, need_weights=False).eval()
    x = _input(batch_first)

    traced = trace_model(model)

    assert _attention_nodes(traced) == []
    names = [node.name for node in traced.graph.nodes]
    assert "attention_in_proj" in names
    assert "attention_softmax" in names
    assert "attention_out_proj" in names
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


def test_unused_weights_are_inlined() -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    traced = trace_model(model)

    assert _attention_nodes(traced) == []
    with torch.no_grad():
        torch.testing.assert_close(traced(_input(True)), model(_input(True)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "model",
    [Encoder(attn_mask=torch.zeros(5, 5)), Encoder(is_causal=True, attn_mask=torch.zeros(5, 5)), CrossAttention(), ReturnsWeights()],
    ids=["attn_mask", "is_causal", "cross_attention", "weights_used"],
)
def test_unsupported_attention_stays_leaf(model: nn.Module) -> None:
    traced = trace_model(model.eval())

    assert _attention_nodes(traced) == ["attention"]
    with torch.no_grad():
        torch.testing.assert_close(traced(_input(True)), model(_input(True)))


def test_leaf_modules_keep_attention() -> None:
    traced = trace_model(Encoder().eval(), leaf_modules=[qualified_class_name(nn.MultiheadAttention)])

    assert _attention_nodes(traced) == ["attention"]


@pytest.mark.parametrize("masked", [False, True])
def test_shared_attention_inlined_only_whole(masked: bool) -> None:
    torch.manual_seed(0)
    model = SharedAttention(masked).eval()

    traced = trace_model(model)

    assert _attention_nodes(traced) == (["attention", "attention_1"] if masked else [])
    with torch.no_grad():
        torch.testing.assert_close(traced(_input(True)), model(_input(True)), rtol=1e-5, atol=1e-6)
