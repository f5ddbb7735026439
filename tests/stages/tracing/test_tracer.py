"""ModelTracer: which modules stay leaves, and what a trace failure says."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from stages.tracing.tracer import ModelTracer, TraceFailure, qualified_class_name, trace_model


class Gate(nn.Module):
    """A block with data-dependent control flow, which fx cannot trace through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # the traced failure points at this line
            return x * 2
        return x


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.ReLU(), Scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.bn(self.conv(x)))


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = nn.Sequential(nn.ReLU(), Gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x))


class FlagNet(nn.Module):
    def forward(self, x: torch.Tensor, double: bool = True) -> torch.Tensor:
        if double:
            return x * 2
        return x - 1


def call_module_classes(graph_module: torch.fx.GraphModule) -> dict[str, type]:
    return {
        node.target: type(graph_module.get_submodule(node.target))
        for node in graph_module.graph.nodes
        if node.op == "call_module"
    }


def test_torch_nn_modules_stay_leaves() -> None:
    graph_module = trace_model(Net().eval())

    classes = call_module_classes(graph_module)

    assert classes["conv"] is nn.Conv2d
    assert classes["bn"] is nn.BatchNorm2d
    # Sequential is traced through, so its ReLU is a leaf of its own.
    assert classes["block.0"] is nn.ReLU
    # The user's Scale is traced through into a mul with its parameter.
    assert "block.1" not in classes
    assert any(node.op == "get_attr" and node.target == "block.1.factor" for node in graph_module.graph.nodes)


def test_traced_module_matches_original() -> None:
    model = Net().eval()
    example = torch.randn(2, 3, 8, 8)

    graph_module = trace_model(model)

    torch.testing.assert_close(graph_module(example), model(example), rtol=0, atol=0)


def test_leaf_modules_keeps_user_class_whole() -> None:
    graph_module = trace_model(Net().eval(), leaf_modules=[qualified_class_name(Scale)])

    classes = call_module_classes(graph_module)

    assert classes["block.1"] is Scale


def test_is_leaf_module_by_qualified_name() -> None:
    tracer = ModelTracer(leaf_modules=[f"{__name__}.Gate"])

    assert tracer.is_leaf_module(Gate(), "block.1")
    assert not tracer.is_leaf_module(Scale(), "block.2")
    assert tracer.is_leaf_module(nn.Hardswish(), "act")
    assert not tracer.is_leaf_module(nn.Sequential(), "seq")
    assert not tracer.is_leaf_module(nn.ModuleList(), "list")


def test_failure_names_module_line_and_fix() -> None:
    gate_source, gate_first_line = inspect.getsourcelines(Gate.forward)
    if_line = gate_first_line + next(i for i, line in enumerate(gate_source) if "if x.sum()" in line)

    with pytest.raises(TraceFailure) as failure:
        trace_model(GatedNet().eval())

    message = str(failure.value)
    assert "\n" not in message
    assert "'block.1' (Gate)" in message
    assert f"{__file__}:{if_line}" in message
    assert f"'{__name__}.Gate'" in message
    assert "leaf_modules" in message
    assert "concrete_args" in message
    assert failure.value.module == "block.1"


def test_leaf_modules_fixes_failing_trace() -> None:
    model = GatedNet().eval()
    example = torch.randn(1, 3, 8, 8)

    graph_module = trace_model(model, leaf_modules=[f"{__name__}.Gate"])

    torch.testing.assert_close(graph_module(example), model(example))


def test_failure_in_root_forward_names_root() -> None:
    with pytest.raises(TraceFailure) as failure:
        trace_model(FlagNet().eval())

    # A proxy in `if double:` fails in the root module, not in a submodule.
    assert "the root module (FlagNet)" in str(failure.value)


def test_concrete_args_fix_control_flow() -> None:
    model = FlagNet().eval()
    example = torch.randn(4)

    graph_module = trace_model(model, concrete_args={"double": False})

    torch.testing.assert_close(graph_module(example, False), example - 1)
    assert not any(node.op == "call_function" and "mul" in str(node.target) for node in graph_module.graph.nodes)
