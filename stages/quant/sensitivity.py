"""Per-layer sensitivity analysis: find the layers that int8 hurts most and keep them float.

Each candidate layer is quantized alone (every other node float), calibrated
and compared with the fp32 model on the same data. The layers are ranked by
that score, worst first. Then the whole model is quantized as the qconfig
sets, and the worst layers are skipped one at a time until the budget is
met or ``max_skipped`` layers are skipped. Every measurement recalibrates,
because skipping a layer changes which values are observed.

Metrics:
    sqnr  signal-to-quantization-noise ratio of the model outputs, in dB;
          the budget is the least acceptable SQNR of the whole model.
    top1  share of samples (percent) whose int8 argmax equals the fp32
          argmax; the budget is the largest acceptable drop below 100.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from stages.quant.calibration import calibrate
from stages.quant.convert import convert
from stages.quant.observe import insert_observers
from stages.quant.patterns import COMPUTE_PATTERNS, FUSABLE_WITH_RELU, FUSED_ACTIVATIONS

log = logging.getLogger(__name__)

METRICS = ("sqnr", "top1")


@dataclass
class LayerScore:
    """The score of the model with only ``node`` quantized."""

    node: str
    target: str
    op_type: str
    score: float


@dataclass
class SensitivityResult:
    """Ranking, skipped layers and the whole-model score before and after."""

    metric: str
    budget: float
    ranking: list[LayerScore]
    skipped: list[LayerScore]
    initial_score: float
    final_score: float
    budget_met: bool
    steps: list[dict[str, Any]] = field(default_factory=list)


def candidate_layers(qconfig: dict[str, Any], fp32: fx.GraphModule) -> list[str]:
    """Quantized compute nodes of the qconfig, in graph order.

    A BatchNorm that follows a conv and a ReLU or ReLU6 that follows a conv,
    linear or add are left out: they fuse into that node and follow its
    decision (see :func:`companions`).
    """
    nodes = qconfig["nodes"]
    followers = {name for layer in nodes for name in companions(qconfig, fp32, layer)}
    return [
        name
        for name, entry in nodes.items()
        if entry["quantize"] and entry["pattern"] in COMPUTE_PATTERNS and name not in followers
    ]


def companions(qconfig: dict[str, Any], fp32: fx.GraphModule, layer: str) -> list[str]:
    """Nodes that fuse into ``layer``: a BatchNorm after a conv, then a ReLU or ReLU6 after it."""
    nodes = qconfig["nodes"]
    graph_nodes = {node.name: node for node in fp32.graph.nodes}
    if nodes[layer]["pattern"] not in FUSABLE_WITH_RELU:
        return []
    result: list[str] = []
    current = graph_nodes[layer]
    for wanted in ({"batchnorm"}, FUSED_ACTIVATIONS):
        users = list(current.users)
        if len(users) != 1 or nodes[users[0].name]["pattern"] not in wanted:
            continue
        if "batchnorm" in wanted and nodes[layer]["pattern"] != "conv":
            continue
        result.append(users[0].name)
        current = users[0]
    return result


def score(metric: str, references: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """Score int8 outputs against fp32 references: SQNR in dB or top-1 agreement in percent."""
    reference = torch.cat([value.reshape(value.shape[0], -1).double() for value in references])
    actual = torch.cat([value.reshape(value.shape[0], -1).double() for value in outputs])
    if metric == "sqnr":
        noise = float((reference - actual).pow(2).sum())
        signal = float(reference.pow(2).sum())
        if noise == 0.0:
            return math.inf
        if signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(signal / noise)
    if metric == "top1":
        return 100.0 * float((reference.argmax(dim=1) == actual.argmax(dim=1)).double().mean())
    raise ValueError(f"unknown sensitivity metric {metric!r}: expected one of {list(METRICS)}")


def meets_budget(metric: str, value: float, budget: float) -> bool:
    """Check a whole-model score against the budget (min SQNR, or max top-1 drop)."""
    if metric == "sqnr":
        return value >= budget
    return 100.0 - value <= budget


def only_layer(qconfig: dict[str, Any], fp32: fx.GraphModule, layer: str) -> dict[str, Any]:
    """Return a copy of ``qconfig`` in which ``layer`` (with a BatchNorm it folds) is the only quantized compute node.

    Shape and pass-through nodes keep their settings, so integer values
    still flow through flatten or maxpool next to the layer.
    """
    variant = copy.deepcopy(qconfig)
    nodes = variant["nodes"]
    keep = {layer, *companions(qconfig, fp32, layer)}
    for name, entry in nodes.items():
        if entry["pattern"] in COMPUTE_PATTERNS and name not in keep:
            entry["quantize"] = False
    return variant


def with_skipped(
    qconfig: dict[str, Any], fp32: fx.GraphModule, layers: Sequence[str], reasons: dict[str, str]
) -> dict[str, Any]:
    """Return a copy of ``qconfig`` with ``layers`` and their companions added to ``skip`` and kept float."""
    variant = copy.deepcopy(qconfig)
    names = [name for layer in layers for name in (layer, *companions(qconfig, fp32, layer))]
    for name in names:
        entry = variant["nodes"][name]
        entry["quantize"] = False
        entry["skipped"] = True
        entry.pop("activation", None)
        entry.pop("weight", None)
        if name in reasons:
            entry["skip_reason"] = reasons[name]
        if name not in variant["skip"]:
            variant["skip"].append(name)
    return variant


def evaluate_qconfig(
    fp32: fx.GraphModule,
    qconfig: dict[str, Any],
    batches: Sequence[torch.Tensor],
    references: Sequence[torch.Tensor],
    metric: str,
) -> float:
    """Quantize ``fp32`` with ``qconfig``, calibrate on ``batches`` and score it on the same batches."""
    observed, _ = insert_observers(fp32, qconfig)
    calibrate(observed, batches)
    int8_model, _ = convert(observed)
    with torch.no_grad():
        outputs = [_first_output(int8_model(batch)) for batch in batches]
    return score(metric, references, outputs)


def analyze(
    fp32: fx.GraphModule,
    qconfig: dict[str, Any],
    batches: Sequence[torch.Tensor],
    metric: str,
    budget: float,
    max_skipped: int,
    tick: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], SensitivityResult]:
    """Rank the candidate layers and skip the worst until the budget is met.

    Returns the new qconfig (``qconfig`` itself is not changed) and the
    result. Raises ValueError when there are no batches or no candidates.
    """
    if not batches:
        raise ValueError("sensitivity analysis got no batches; check the data set")
    candidates = candidate_layers(qconfig, fp32)
    if not candidates:
        raise ValueError("the qconfig quantizes no compute node, so there is no layer to rank")
    fp32.eval()
    with torch.no_grad():
        references = [_first_output(fp32(batch)) for batch in batches]

    ranking: list[LayerScore] = []
    for layer in candidates:
        value = evaluate_qconfig(fp32, only_layer(qconfig, fp32, layer), batches, references, metric)
        entry = qconfig["nodes"][layer]
        ranking.append(LayerScore(layer, str(entry["target"]), entry["op_type"], value))
        if tick is not None:
            tick(1)
    ranking.sort(key=lambda item: item.score)

    current = evaluate_qconfig(fp32, qconfig, batches, references, metric)
    result = SensitivityResult(metric, budget, ranking, [], current, current, meets_budget(metric, current, budget))
    result.steps.append({"skipped": 0, "score": current})
    unit = "dB SQNR" if metric == "sqnr" else "% top-1 agreement"
    reasons: dict[str, str] = {}
    new_qconfig = qconfig
    for layer in ranking[:max_skipped]:
        if result.budget_met:
            break
        result.skipped.append(layer)
        reasons[layer.node] = f"quantized alone: {layer.score:.2f} {unit}"
        new_qconfig = with_skipped(qconfig, fp32, [item.node for item in result.skipped], reasons)
        current = evaluate_qconfig(fp32, new_qconfig, batches, references, metric)
        result.steps.append({"skipped": len(result.skipped), "node": layer.node, "score": current})
        result.final_score = current
        result.budget_met = meets_budget(metric, current, budget)
        log.info("skipped %s (%s): whole model now %.2f %s", layer.node, reasons[layer.node], current, unit)

    new_qconfig = copy.deepcopy(new_qconfig)
    new_qconfig["sensitivity"] = {
        "metric": metric,
        "budget": budget,
        "initial_score": result.initial_score,
        "final_score": result.final_score,
        "budget_met": result.budget_met,
        "skipped": [item.node for item in result.skipped],
    }
    return new_qconfig, result


def _first_output(value: Any) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        return value[0]
    return value
