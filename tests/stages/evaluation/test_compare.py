from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.fx
from torch import nn

from stages.data import Dataset
from stages.evaluation.compare import compare_models, node_pairs
from stages.evaluation.metrics import comparison_metrics, per_node_document
from stages.quant.arithmetic import QParams
from stages.quant.modules import Dequantize, Quantize

RELU_SCALE = 0.02


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_pair(fc_noise: float, seed: int = 0) -> tuple[Tiny, torch.fx.GraphModule, torch.fx.GraphModule]:
    """An fp32 GraphModule and a stand-in int8 one: ReLU output quantized, fc weights perturbed."""
    torch.manual_seed(seed)
    eager = Tiny()
    eager.bn.running_mean.uniform_(-0.2, 0.2)
    eager.bn.running_var.uniform_(0.5, 2.0)
    eager.eval()
    fp32 = torch.fx.symbolic_trace(eager)

    int8 = copy.deepcopy(fp32)
    with torch.no_grad():
        int8.fc.weight.add_(fc_noise * torch.randn_like(int8.fc.weight))
    qparams = QParams(RELU_SCALE, 0, "uint8")
    int8.add_submodule("relu_quant", Quantize(qparams))
    int8.add_submodule("relu_dequant", Dequantize(qparams))
    relu = next(node for node in int8.graph.nodes if node.name == "relu")
    with int8.graph.inserting_after(relu):
        quant = int8.graph.call_module("relu_quant", (relu,))
    with int8.graph.inserting_after(quant):
        dequant = int8.graph.call_module("relu_dequant", (quant,))
    relu.replace_all_uses_with(dequant)
    quant.args = (relu,)
    int8.recompile()

    # The fp32 ReLU value is computed by relu_quant; the int8 relu node maps to nothing.
    int8.value_names = {"x": "x", "conv": "conv", "bn": "bn", "relu_quant": "relu", "pool": "pool", "flatten": "flatten", "fc": "fc"}
    int8.qparams = {"relu_quant": qparams.to_dict()}
    return eager, fp32, int8


def make_dataset(count: int, labels: np.ndarray | None, batch_size: int = 16) -> Dataset:
    inputs = np.random.default_rng(1).standard_normal((count, 1, 5, 5)).astype(np.float32)
    return Dataset("check", inputs, labels, batch_size)


def test_node_pairs_follow_value_names() -> None:
    _, fp32, int8 = make_pair(0.0)
    pairs = [(pair.fp32_node, pair.int8_node) for pair in node_pairs(fp32, int8)]
    assert ("relu", "relu_quant") in pairs
    assert ("conv", "conv") in pairs
    assert [fp32_node for fp32_node, _ in pairs] == ["x", "conv", "bn", "relu", "pool", "flatten", "fc"]


def test_node_pairs_prefer_quantized_node() -> None:
    _, fp32, int8 = make_pair(0.0)
    # The int8 relu node computes the same value as relu_quant, but as float.
    int8.value_names["relu"] = "relu"
    pairs = dict((pair.fp32_node, pair.int8_node) for pair in node_pairs(fp32, int8))
    assert pairs["relu"] == "relu_quant"


def test_metrics_match_numpy() -> None:
    eager, fp32, int8 = make_pair(0.3)
    inputs = make_dataset(50, None).inputs
    with torch.no_grad():
        fp32_logits = fp32(torch.from_numpy(inputs)).numpy().astype(np.float64)
        int8_logits = int8(torch.from_numpy(inputs)).numpy().astype(np.float64)
    labels = np.random.default_rng(2).integers(0, 7, 50)
    labels[:30] = fp32_logits[:30].argmax(axis=1)
    dataset = make_dataset(50, labels)

    comparison = compare_models(fp32, int8, dataset)
    metrics = comparison_metrics(comparison)

    fp32_top1 = fp32_logits.argmax(axis=1)
    int8_top1 = int8_logits.argmax(axis=1)
    top5 = np.argsort(-fp32_logits, axis=1)[:, :5]
    assert metrics["samples"] == 50
    assert metrics["top1_fp32"] == round(100 * np.mean(fp32_top1 == labels), 2)
    assert metrics["top1_int8"] == round(100 * np.mean(int8_top1 == labels), 2)
    assert metrics["top1_drop"] == round(100 * (np.mean(fp32_top1 == labels) - np.mean(int8_top1 == labels)), 2)
    assert metrics["top1_agreement"] == round(100 * np.mean(fp32_top1 == int8_top1), 2)
    assert metrics["top5_containment"] == round(100 * np.mean([int8_top1[i] in top5[i] for i in range(50)]), 2)
    logits_sqnr = 10 * np.log10(np.sum(fp32_logits**2) / np.sum((fp32_logits - int8_logits) ** 2))
    assert metrics["sqnr_db"] == round(logits_sqnr, 2)
    # The perturbation must matter, or this test checks nothing.
    assert metrics["top1_agreement"] < 100


def test_relu_node_sqnr_matches_numpy_quantization() -> None:
    eager, fp32, int8 = make_pair(0.0)
    dataset = make_dataset(40, None, batch_size=7)
    with torch.no_grad():
        bn = eager.bn(eager.conv(torch.from_numpy(dataset.inputs))).numpy().astype(np.float64)
    relu = np.maximum(bn, 0.0)

    # uint8 affine quantization, zero point 0, round half to even.
    q = np.clip(np.rint(relu / np.float32(RELU_SCALE)), 0, 255)
    dequantized = q * np.float32(RELU_SCALE)
    expected = 10 * np.log10(np.sum(relu**2) / np.sum((relu - dequantized) ** 2))

    comparison = compare_models(fp32, int8, dataset)
    by_node = {pair.fp32_node: pair for pair in comparison.nodes}
    assert math.isclose(by_node["relu"].sums.sqnr_db, expected, rel_tol=1e-5)
    # Upstream of the quantized value both models compute the same numbers.
    assert by_node["bn"].sums.sqnr_db == math.inf
    # The recorded bn value is the one before the in-place ReLU overwrote it.
    assert math.isclose(by_node["bn"].sums.signal, np.sum(bn**2), rel_tol=1e-5)
    assert np.sum(bn**2) > np.sum(relu**2)


def test_worst_nodes_and_per_node_document() -> None:
    _, fp32, int8 = make_pair(0.5)
    comparison = compare_models(fp32, int8, make_dataset(30, None))
    metrics = comparison_metrics(comparison)
    worst = metrics["worst_nodes"]
    assert len(worst) == 5
    finite = [row["sqnr_db"] for row in worst if row["sqnr_db"] is not None]
    assert finite == sorted(finite)
    assert worst[0]["node"] in ("fc", "relu", "pool", "flatten")
    assert "top1_fp32" not in metrics

    document = per_node_document(comparison)
    assert document["samples"] == 30
    assert [row["node"] for row in document["nodes"]][:5] == [row["node"] for row in worst]
    assert document["nodes"][-1]["exact"] is True


def test_max_batches_limits_samples() -> None:
    _, fp32, int8 = make_pair(0.1)
    calls = []
    comparison = compare_models(fp32, int8, make_dataset(50, None, batch_size=10), max_batches=2, advance=calls.append)
    assert comparison.samples == 20
    assert calls == [1, 1]
