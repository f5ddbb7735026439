"""Inlining of torchvision's Swin shifted-window attention, checked against torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import swin_transformer

from stages.tracing.tracer import trace_model
from stages.tracing.window_attention import masked_softmax


def _swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


def _calls(graph_module: torch.fx.GraphModule, target: object) -> int:
    return sum(1 for node in graph_module.graph.nodes if node.op == "call_function" and node.target is target)


@pytest.mark.slow
@pytest.mark.parametrize("size", [56, 96])
def test_inlined_windows_match_torchvision(size: int) -> None:
    model = _swin()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))

    traced = trace_model(model, input_shape=[1, 3, size, size])

    assert _calls(traced, swin_transformer.shifted_window_attention) == 0
    assert _calls(traced, masked_softmax) > 0
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


def test_calls_stay_without_input_shape() -> None:
    traced = trace_model(_swin())

    assert _calls(traced, swin_transformer.shifted_window_attention) == 12


def test_masked_softmax_separates_regions() -> None:
    scores = torch.zeros(2, 1, 2, 2)
    mask = torch.tensor([[[[0.0, -100.0], [-100.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])

    probabilities = masked_softmax(scores, mask, windows=2)

    torch.testing.assert_close(probabilities[0, 0], torch.eye(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(probabilities[1, 0], torch.full((2, 2), 0.5))
