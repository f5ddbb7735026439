"""int8 QDQ export: onnxruntime against the PyTorch int8 model, and fused kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import pytest
import torch

from int8_models import ConvAddLinear, quantize_model
from stages.onnx.emitter import export_graph_module
from stages.onnx.exporter import output_quantization_steps
from stages.onnx.parity import (
    chunk_inputs,
    compare_outputs,
    count_int8_kernels,
    create_session,
    find_divergence,
    kernel_signature,
    optimized_graph,
    other_float_ops,
)
from stages.quant.modules import Dequantize

INPUT_SHAPE = [1, 3, 16, 16]


@pytest.fixture(scope="module", params=["uint8", "int8"])
def quantized(request: pytest.FixtureRequest) -> tuple[torch.fx.GraphModule, onnx.ModelProto, torch.Tensor]:
    _, int8, inputs = quantize_model(ConvAddLinear(), INPUT_SHAPE, activation_dtype=request.param)
    model = export_graph_module(int8, inputs[:1], opset=17)
    return int8, model, inputs


def test_int8_model_is_valid_onnx(quantized) -> None:
    _, model, _ = quantized

    onnx.checker.check_model(model, full_check=True)
    domains = {node.domain for node in model.graph.node}
    assert domains == {""}


def test_int8_outputs_within_one_step(quantized) -> None:
    int8, model, inputs = quantized
    steps = output_quantization_steps(int8)

    comparison = compare_outputs(create_session(model), int8, chunk_inputs(inputs.numpy(), 1), steps)

    assert comparison.samples == len(inputs)
    assert comparison.within_one_step_pct >= 99.9
    assert comparison.max_abs_diff <= steps[0] * 2


def test_int8_kernels_fused(tmp_path: Path) -> None:
    # uint8 activations only: onnxruntime 1.32 left int8-activation groups
    # unfused on x86, and a ReLU before an int8 QuantizeLinear with zero
    # point 0 is not redundant.
    _, int8, inputs = quantize_model(ConvAddLinear(), INPUT_SHAPE, activation_dtype="uint8")
    model = export_graph_module(int8, inputs[:1], opset=17)

    count, histogram = count_int8_kernels(model, tmp_path)

    assert histogram.get("QLinearConv", 0) == 2
    assert histogram.get("QGemm", 0) == 2
    assert histogram.get("QLinearAdd", 0) == 1
    assert "Conv" not in histogram
    assert "Gemm" not in histogram
    assert "Relu" not in histogram
    assert count >= 5
    assert list(tmp_path.iterdir()) == []


def test_weights_are_int8_per_channel(quantized) -> None:
    _, model, _ = quantized
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    weight_dequantizers = [node for node in model.graph.node if node.name.endswith("/weight_dq")]

    assert weight_dequantizers
    for node in weight_dequantizers:
        weight = initializers[node.input[0]]
        scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
        assert weight.data_type == onnx.TensorProto.INT8
        assert scale.shape == (weight.dims[0],)
        assert [attribute.i for attribute in node.attribute if attribute.name == "axis"] == [0]


def test_bias_int32_at_product_scale(quantized) -> None:
    int8, model, _ = quantized
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    conv = int8.get_submodule("conv2")

    bias = initializers["conv2.bias_quantized"]
    bias_scale = initializers["conv2.bias_scale"]

    assert bias.dtype == np.int32
    np.testing.assert_array_equal(bias, conv.bias.numpy())
    expected_scale = np.float32(conv.input_qparams.scale) * conv.weight_scale.numpy()
    np.testing.assert_allclose(bias_scale, expected_scale, rtol=1e-7)
    np.testing.assert_array_equal(initializers["conv2.bias_zero_point"], np.zeros_like(bias))


def test_output_step_from_dequantize(quantized) -> None:
    int8, _, _ = quantized
    output = next(node for node in int8.graph.nodes if node.op == "output").args[0]

    assert isinstance(int8.get_submodule(output.target), Dequantize)
    assert output_quantization_steps(int8) == [int8.qparams[output.args[0].name]["scale"]]


def test_divergence_on_perturbed_weight(quantized) -> None:
    int8, model, inputs = quantized
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for tensor in broken.graph.initializer:
        if tensor.name == "fc1.weight_quantized":
            values = onnx.numpy_helper.to_array(tensor)
            tensor.CopyFrom(onnx.numpy_helper.from_array((-values).astype(np.int8), tensor.name))

    divergence = find_divergence(broken, int8, inputs[:1].numpy(), max_rel_diff=1e-4, min_within_one_step_pct=99.9)

    assert divergence is not None
    assert divergence.fx_node == "fc1"
    assert divergence.op_type == "QuantizeLinear"


def test_int8_export_stage(tmp_path: Path) -> None:
    from pipeline.contract import StageContext
    from pipeline.schema import fill_defaults, load_schema, stage_schema_path
    from stages.artifacts import save_model
    from stages.export import Export

    _, int8, _ = quantize_model(ConvAddLinear(), INPUT_SHAPE)
    model_folder = tmp_path / "int8_model"
    model_folder.mkdir()
    save_model(int8, model_folder, meta={"input_shape": INPUT_SHAPE, "source": "test"})
    output = tmp_path / "export"
    output.mkdir()
    params = {"format": "onnx", "precision": "int8", "samples": 16}
    ctx = StageContext(
        stage_name="onnx_int8",
        kind="export",
        params=fill_defaults(load_schema(stage_schema_path("export")), params),
        config={},
        inputs={"model": model_folder},
        outputs={"export": output},
        root=tmp_path,
        output_dir=tmp_path / "out",
    )

    result = Export().run(ctx)

    assert result.metrics["precision"] == "int8"
    assert result.metrics["int8_kernels"] >= 5
    assert result.metrics["float_compute_nodes"] == 0
    assert result.metrics["within_one_step_pct"] >= 99.9
    assert result.metrics["passed"] is True
    assert result.message.startswith("accuracy test passed: within_one_step_pct=")
    assert sorted(path.name for path in output.iterdir()) == ["input_contract.json", "model.onnx"]


class TokenMlp(torch.nn.Module):
    """A Linear on (batch, tokens, features), as in transformer blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_linear_on_tokens_runs_as_qgemm(tmp_path: Path, dynamic_batch: bool) -> None:
    from stages.onnx.parity import float_compute_nodes

    _, int8, inputs = quantize_model(TokenMlp(), [2, 5, 8])
    model = export_graph_module(int8, inputs[:2], opset=17, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(model, full_check=True)

    count, histogram = count_int8_kernels(model, tmp_path)
    assert histogram.get("QGemm", 0) == 2
    assert float_compute_nodes(histogram) == 0
    batch_size = 3 if dynamic_batch else 2
    batches = [inputs[:batch_size].numpy()]
    comparison = compare_outputs(create_session(model), int8, batches, output_quantization_steps(int8))
    assert comparison.within_one_step_pct >= 99.9


class GatedActivations(torch.nn.Module):
    """Model with convs followed by SiLU, Hardswish and GELU, the activations x * gate(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.silu = torch.nn.SiLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.hardswish = torch.nn.Hardswish()
        self.conv3 = torch.nn.Conv2d(8, 8, 1)
        self.gelu = torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.silu(self.conv1(x))
        x = self.hardswish(self.conv2(x))
        return self.gelu(self.conv3(x))


def test_gated_activations_use_qlinearmul(tmp_path: Path) -> None:
    _, int8, inputs = quantize_model(GatedActivations(), INPUT_SHAPE)
    model = export_graph_module(int8, inputs[:1], opset=17)
    onnx.checker.check_model(model, full_check=True)

    _, histogram = count_int8_kernels(model, tmp_path)
    assert histogram.get("QLinearMul", 0) == 3
    assert histogram.get("QLinearSigmoid", 0) == 1
    # GELU's gate (1 + erf(x / sqrt(2))) / 2 is the Erf alone: its Div folds into
    # a Dequantize scale, and its Add and Mul into the gate's qparams.
    assert histogram.get("Erf", 0) == 1
    assert "Div" not in histogram
    assert "Add" not in histogram
    assert "Mul" not in histogram
    assert other_float_ops(histogram) == {"Erf": 1, "HardSigmoid": 1}

    steps = output_quantization_steps(int8)
    comparison = compare_outputs(create_session(model), int8, chunk_inputs(inputs.numpy(), 1), steps)
    assert comparison.within_one_step_pct >= 99.9


def test_kernel_signature_separates_graphs(tmp_path: Path) -> None:
    fp32, int8, inputs = quantize_model(ConvAddLinear(), INPUT_SHAPE)
    int8_signature = kernel_signature(optimized_graph(export_graph_module(int8, inputs[:1], opset=17), tmp_path))
    again = kernel_signature(optimized_graph(export_graph_module(int8, inputs[:1], opset=17), tmp_path))
    fp32_signature = kernel_signature(optimized_graph(export_graph_module(fp32, inputs[:1], opset=17), tmp_path))

    assert int8_signature == again
    assert int8_signature != fp32_signature
    assert ("com.microsoft", "QLinearConv") in {entry[:2] for entry in int8_signature}
    assert list(tmp_path.iterdir()) == []


class TransformerBlock(torch.nn.Module):
    """Model with a pre-norm self-attention block and an MLP, as in ViT."""

    def __init__(self, embed: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(embed)
        self.attention = torch.nn.MultiheadAttention(embed, heads, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(embed)
        self.fc1 = torch.nn.Linear(embed, 2 * embed)
        self.gelu = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(2 * embed, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        y, _ = self.attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.fc2(self.gelu(self.fc1(self.norm2(x))))


def test_attention_uses_int8_kernels(tmp_path: Path) -> None:
    _, int8, inputs = quantize_model(TransformerBlock(), [1, 10, 32])
    model = export_graph_module(int8, inputs[:1], opset=17)
    onnx.checker.check_model(model, full_check=True)

    _, histogram = count_int8_kernels(model, tmp_path)
    assert histogram.get("QLinearMatMul", 0) == 2
    assert histogram.get("QLinearSoftmax", 0) == 1
    assert histogram.get("QGemm", 0) == 4
    for float_op in ("MatMul", "Softmax", "Gemm", "FusedMatMul"):
        assert float_op not in histogram

    steps = output_quantization_steps(int8)
    comparison = compare_outputs(create_session(model), int8, chunk_inputs(inputs.numpy(), 1), steps)
    assert comparison.within_one_step_pct >= 99.9


class DenseLayer(torch.nn.Module):
    """Model with a pre-activation layer as in DenseNet: concat, BatchNorm, ReLU, then a conv without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(11)
        self.relu = torch.nn.ReLU()
        self.conv = torch.nn.Conv2d(11, 8, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x, self.stem(x)], dim=1)
        return self.conv(self.relu(self.norm(features)))


def test_batchnorm_relu_quantize_once(tmp_path: Path) -> None:
    model_fp32 = DenseLayer()
    with torch.no_grad():
        model_fp32.norm.running_mean.uniform_(-0.5, 0.5)
        model_fp32.norm.running_var.uniform_(0.5, 2.0)
    _, int8, inputs = quantize_model(model_fp32, INPUT_SHAPE)
    norm = int8.get_submodule("norm")
    assert type(norm).__name__ == "QuantBatchNorm2d"
    assert norm.relu is True
    assert "relu" not in {node.name for node in int8.graph.nodes}

    model = export_graph_module(int8, inputs[:1], opset=17)
    conv = next(node for node in model.graph.node if node.op_type == "Conv" and node.name.startswith("conv/"))
    assert len(conv.input) == 2
    graph = optimized_graph(model, tmp_path)
    assert [node.op_type for node in graph.node].count("QuantizeLinear") == 2
    assert [len(node.input) for node in graph.node if node.op_type == "QLinearConv"] == [9, 8]

    steps = output_quantization_steps(int8)
    comparison = compare_outputs(create_session(model), int8, chunk_inputs(inputs.numpy(), 1), steps)
    assert comparison.within_one_step_pct >= 99.9
