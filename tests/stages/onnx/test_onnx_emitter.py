"""fx-to-ONNX emitter: each op family against torch, run in onnxruntime."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx.checker
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.onnx.emitter import EmitError, export_graph_module
from stages.tracing.tracer import trace_model


def run_onnx(model: onnx.ModelProto, example: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]


def export_and_compare(module: nn.Module, input_shape: tuple[int, ...], opset: int = 17) -> onnx.ModelProto:
    """Trace, export, check and compare with torch; return the ONNX model.

    The module is wrapped in a Sequential because fx traces through the root
    module, so a bare Conv2d would become F.conv2d.
    """
    torch.manual_seed(0)
    module = nn.Sequential(module).eval()
    with torch.no_grad():
        for buffer_name, buffer in module.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    graph_module = trace_model(module)
    example = torch.randn(input_shape)

    model = export_graph_module(graph_module, example, opset=opset)
    onnx.checker.check_model(model, full_check=True)

    expected = graph_module(example).detach().numpy()
    actual = run_onnx(model, example)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    return model


class Lambda(nn.Module):
    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y += x
        z = torch.cat([y * 0.5, x - 1.0, 2.0 * x / 3.0], dim=1)
        return torch.add(z, torch.mul(z, z))


class ShapeOps(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        y = x.permute(0, 2, 3, 1).contiguous()
        y = y.transpose(1, 2)
        y = y.reshape(batch, -1, 4)
        y = y.view(batch, -1)
        return torch.flatten(y.view(batch, 2, -1), 1) + x.flatten(1).mean(dim=1, keepdim=True)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.Hardswish(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.identity = nn.Identity()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(self.identity(self.dropout(torch.flatten(x, 1))))


CONV_CASES = {
    "plain": nn.Conv2d(3, 6, 3),
    "stride_padding": nn.Conv2d(3, 6, 5, stride=2, padding=2),
    "groups": nn.Conv2d(4, 8, 3, padding=1, groups=2),
    "depthwise": nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
    "dilation": nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    "same_even_kernel": nn.Conv2d(4, 6, 4, padding="same"),
    "valid": nn.Conv2d(4, 6, (1, 3), padding="valid"),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_matches_torch(name: str) -> None:
    module = CONV_CASES[name]
    export_and_compare(module, (2, module.in_channels, 11, 9))


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_torch(affine: bool) -> None:
    model = export_and_compare(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=affine)), (2, 3, 5, 5))

    assert [node.op_type for node in model.graph.node] == ["Conv", "BatchNormalization"]


ACTIVATIONS = {
    "relu": nn.ReLU(),
    "relu6": nn.ReLU6(),
    "hardswish": nn.Hardswish(),
    "hardsigmoid": nn.Hardsigmoid(),
    "silu": nn.SiLU(),
    "sigmoid": nn.Sigmoid(),
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "tanh": nn.Tanh(),
    "leaky_relu": nn.LeakyReLU(0.2),
    "hardtanh": nn.Hardtanh(-0.5, 1.5),
    "softmax": nn.Softmax(dim=1),
    "f_relu": Lambda(F.relu),
    "f_relu6": Lambda(F.relu6),
    "f_hardswish": Lambda(F.hardswish),
    "f_silu": Lambda(F.silu),
    "f_gelu": Lambda(F.gelu),
    "torch_sigmoid": Lambda(torch.sigmoid),
    "method_tanh": Lambda(lambda x: x.tanh()),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_activation_matches_torch(name: str, opset: int) -> None:
    export_and_compare(ACTIVATIONS[name], (2, 3, 4, 4), opset=opset)


def test_gelu_uses_native_op_from_opset_20() -> None:
    assert [node.op_type for node in export_and_compare(nn.GELU(), (1, 4), opset=20).graph.node] == ["Gelu"]
    assert "Erf" in [node.op_type for node in export_and_compare(nn.GELU(), (1, 4), opset=19).graph.node]


POOLS = {
    "max": nn.MaxPool2d(3, stride=2, padding=1),
    "max_ceil": nn.MaxPool2d(2, ceil_mode=True),
    "max_dilation": nn.MaxPool2d(2, dilation=2),
    "avg": nn.AvgPool2d(3, stride=2, padding=1),
    "avg_exclude_pad": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "adaptive_global": nn.AdaptiveAvgPool2d((1, 1)),
    "adaptive_window": nn.AdaptiveAvgPool2d((3, 2)),
    "adaptive_max_global": nn.AdaptiveMaxPool2d(1),
    "f_max": Lambda(lambda x: F.max_pool2d(x, 2)),
    "f_avg": Lambda(lambda x: F.avg_pool2d(x, kernel_size=3, stride=1)),
    "f_adaptive": Lambda(lambda x: F.adaptive_avg_pool2d(x, (1, 1))),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_matches_torch(name: str) -> None:
    export_and_compare(POOLS[name], (2, 3, 9, 8))


def test_global_average_pool_for_output_one() -> None:
    model = export_and_compare(nn.AdaptiveAvgPool2d(1), (1, 2, 7, 7))

    assert [node.op_type for node in model.graph.node] == ["GlobalAveragePool"]


def test_elementwise_and_cat_match_torch() -> None:
    export_and_compare(Residual(), (2, 4, 6, 6))


@pytest.mark.parametrize("opset", [13, 18])
def test_shape_ops_match_torch(opset: int) -> None:
    export_and_compare(ShapeOps(), (2, 4, 3, 2), opset=opset)


@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 6)])
def test_linear_matches_torch(shape: tuple[int, ...]) -> None:
    model = export_and_compare(nn.Linear(6, 4), shape)

    expected = ["Gemm"] if len(shape) == 2 else ["MatMul", "Add"]
    assert [node.op_type for node in model.graph.node] == expected


def test_classifier_drops_dropout_and_identity() -> None:
    model = export_and_compare(Classifier(), (2, 3, 32, 32))

    op_types = [node.op_type for node in model.graph.node]
    assert "Dropout" not in op_types
    assert "Identity" not in op_types
    assert op_types.count("Conv") == 2


def test_node_and_tensor_names_follow_fx() -> None:
    model = export_and_compare(Classifier(), (1, 3, 16, 16))

    names = [node.name for node in model.graph.node]
    assert names[:3] == ["_0_features_0", "_0_features_1", "_0_features_2"]
    assert model.graph.node[0].output[0] == "_0_features_0"
    assert model.graph.output[0].name == "_0_fc"
    assert model.graph.input[0].name == "input_1"


def test_output_that_is_an_input_gets_identity() -> None:
    model = export_and_compare(nn.Identity(), (2, 3))

    assert [node.op_type for node in model.graph.node] == ["Identity"]


def test_dynamic_batch_runs_other_batch_sizes() -> None:
    graph_module = trace_model(ShapeOps().eval())
    model = export_graph_module(graph_module, torch.randn(2, 4, 3, 2), dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)

    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 5):
        example = torch.randn(batch, 4, 3, 2)
        np.testing.assert_allclose(run_onnx(model, example), graph_module(example).numpy(), rtol=1e-5, atol=1e-6)


def test_fixed_batch_rejects_other_batch_sizes() -> None:
    graph_module = trace_model(nn.Sequential(nn.Conv2d(1, 1, 1)).eval())
    model = export_graph_module(graph_module, torch.randn(2, 1, 3, 3))

    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with pytest.raises(Exception, match="dimension"):
        run_onnx(model, torch.randn(3, 1, 3, 3))


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opset_is_recorded(opset: int) -> None:
    model = export_and_compare(Classifier(), (1, 3, 16, 16), opset=opset)

    assert [(entry.domain, entry.version) for entry in model.opset_import] == [("", opset)]


def test_opset_out_of_range_rejected() -> None:
    graph_module = trace_model(nn.Sequential(nn.ReLU()))

    with pytest.raises(EmitError, match="opset 12"):
        export_graph_module(graph_module, torch.randn(1, 2), opset=12)


def test_unsupported_node_is_named() -> None:
    graph_module = trace_model(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Unfold(2)))

    with pytest.raises(EmitError, match=r"node '_1' \(call_module torch.nn.modules.fold.Unfold\)"):
        export_graph_module(graph_module, torch.randn(1, 1, 2, 2))
