"""Observer insertion: placement, fusion, shared modules, skip and value_names."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from quant_models import qconfig_for, tiny_resnet
from stages.quant.observe import insert_observers
from stages.quant.observers import Observer


def _observed_inputs(gm: fx.GraphModule) -> list[str]:
    """Names of the nodes that an observer reads, in graph order."""
    modules = dict(gm.named_modules())
    return [
        node.args[0].name
        for node in gm.graph.nodes
        if node.op == "call_module" and isinstance(modules[node.target], Observer)
    ]


class SharedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv_b(self.relu(self.conv_a(x))))


def test_shared_relu_gets_one_observer_per_call() -> None:
    gm = fx.symbolic_trace(SharedReLU().eval())
    observed, summary = insert_observers(gm, qconfig_for(gm))

    assert _observed_inputs(observed) == ["x", "relu", "relu_1"]
    assert summary.observers == 3
    assert summary.fused_relus == 2
    modules = dict(observed.named_modules())
    relu_observers = [modules[f"observer_{name}"] for name in ("relu", "relu_1")]
    assert relu_observers[0] is not relu_observers[1]
    assert [observer.value_name for observer in relu_observers] == ["relu", "relu_1"]


def test_resnet_observers_follow_fused_relus() -> None:
    gm = tiny_resnet()
    observed, summary = insert_observers(gm, qconfig_for(gm))
    observed_inputs = _observed_inputs(observed)

    # Folded convs followed by a ReLU are observed after the ReLU only.
    assert "conv1" not in observed_inputs
    assert "relu" in observed_inputs
    assert "layer1_0_relu_1" in observed_inputs
    # A conv whose output feeds an add is observed directly; the add is fused with the next ReLU.
    assert "layer1_0_conv2" in observed_inputs
    assert "add" not in observed_inputs
    # Pass-through flatten inherits the avgpool observer.
    assert "avgpool" in observed_inputs
    assert "flatten" not in observed_inputs
    assert summary.folded_batchnorms == 6
    assert summary.fused_relus == 5
    assert summary.observers == len(observed_inputs) == 11


def test_observed_model_keeps_fp32_output() -> None:
    gm = tiny_resnet()
    observed, _ = insert_observers(gm, qconfig_for(gm))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(observed(x), gm(x), atol=1e-5, rtol=1e-5)


def test_value_names_point_at_fp32_nodes() -> None:
    gm = tiny_resnet()
    observed, _ = insert_observers(gm, qconfig_for(gm))
    fp32_names = {node.name for node in gm.graph.nodes}

    assert observed.value_names["conv1"] == "bn1"
    assert observed.value_names["relu_observer"] == "relu"
    assert observed.value_names["layer1_0_conv2_observer"] == "layer1_0_bn2"
    assert set(observed.value_names.values()) <= fp32_names
    assert {node.name for node in observed.graph.nodes} == set(observed.value_names)


def test_skipped_conv_is_not_fused_or_counted() -> None:
    gm = tiny_resnet()
    qconfig = qconfig_for(gm, skip=["layer1.0.conv1"])
    observed, summary = insert_observers(gm, qconfig)

    assert qconfig["nodes"]["layer1_0_conv1"]["skipped"] is True
    assert observed.quant_plan["layer1_0_conv1"]["quantize"] is False
    assert observed.quant_plan["layer1_0_conv1"]["relu"] is None
    # The ReLU after the float conv becomes a quantized node of its own; the conv output feeding it is observed.
    assert "layer1_0_conv1" in _observed_inputs(observed)
    assert "layer1_0_relu" in _observed_inputs(observed)
    assert summary.fused_relus == 4


def test_skip_with_unknown_name_raises() -> None:
    gm = tiny_resnet()
    with pytest.raises(ValueError, match="match no fx node or called module"):
        qconfig_for(gm, skip=["layer9.conv"])


def test_qconfig_for_other_graph_raises() -> None:
    gm = tiny_resnet()
    other = fx.symbolic_trace(SharedReLU().eval())
    with pytest.raises(ValueError, match="do not match the fp32 graph"):
        insert_observers(gm, qconfig_for(other))
