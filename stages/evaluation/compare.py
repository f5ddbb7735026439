"""Run the fp32 and int8 GraphModules over a data set and compare them.

Classification metrics come from the logits; per-node metrics come from the
values of the nodes that the int8 module's ``value_names`` maps to fp32 nodes
(int8 node name -> fp32 node name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx

from stages.data import Dataset
from stages.evaluation.capture import NodeRecorder, first_tensor
from stages.evaluation.sqnr import ErrorSums

log = logging.getLogger(__name__)

# top-k of the fp32 logits that the int8 top-1 should fall into.
CONTAINMENT_K = 5


@dataclass
class NodeComparison:
    """Error sums of one fp32 node against the int8 node that computes its value."""

    fp32_node: str
    int8_node: str
    sums: ErrorSums = field(default_factory=ErrorSums)


@dataclass
class Comparison:
    """Counts and sums of an fp32/int8 comparison over a data set."""

    samples: int = 0
    labelled: bool = False
    correct_fp32: int = 0
    correct_int8: int = 0
    agree: int = 0
    contained: int = 0
    logits: ErrorSums = field(default_factory=ErrorSums)
    nodes: list[NodeComparison] = field(default_factory=list)

    def percent(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def node_pairs(fp32_model: torch.fx.GraphModule, int8_model: torch.fx.GraphModule) -> list[NodeComparison]:
    """Match int8 nodes to fp32 nodes through ``int8_model.value_names``.

    Each fp32 node is compared once, with one int8 node that computes its
    value: the first quantized one (named in ``qparams``) in graph order, or
    else the first one. So the fp32 input is compared with its Quantize node,
    not with the int8 model's float input. The list follows the fp32 graph's
    order.
    """
    value_names = getattr(int8_model, "value_names", None)
    if not isinstance(value_names, dict):
        raise ValueError("the int8 model has no value_names dict (int8 node name -> fp32 node name)")
    quantized = set(getattr(int8_model, "qparams", {}) or {})

    fp32_order = {node.name: index for index, node in enumerate(fp32_model.graph.nodes) if node.op != "output"}
    matched: dict[str, str] = {}
    for node in int8_model.graph.nodes:
        fp32_name = value_names.get(node.name)
        if fp32_name not in fp32_order:
            continue
        if fp32_name not in matched or (node.name in quantized and matched[fp32_name] not in quantized):
            matched[fp32_name] = node.name

    ordered = sorted(matched, key=fp32_order.__getitem__)
    return [NodeComparison(fp32_name, matched[fp32_name]) for fp32_name in ordered]


def compare_models(
    fp32_model: torch.fx.GraphModule,
    int8_model: torch.fx.GraphModule,
    dataset: Dataset,
    max_batches: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> Comparison:
    """Run both models batch by batch and accumulate the comparison.

    ``advance(1)`` is called after each batch (a progress bar).
    """
    comparison = Comparison(labelled=dataset.labels is not None, nodes=node_pairs(fp32_model, int8_model))
    fp32_wanted = {pair.fp32_node for pair in comparison.nodes}
    int8_wanted = {pair.int8_node for pair in comparison.nodes}
    qparams = getattr(int8_model, "qparams", {}) or {}
    skipped: set[str] = set()

    with torch.no_grad():
        for inputs, labels in dataset.batches(max_batches):
            fp32_recorder = NodeRecorder(fp32_model, fp32_wanted)
            fp32_logits = first_tensor(fp32_recorder.run(inputs), "fp32 model").float()
            int8_recorder = NodeRecorder(int8_model, int8_wanted, qparams)
            int8_logits = first_tensor(int8_recorder.run(inputs), "int8 model").float()

            _add_logits(comparison, fp32_logits, int8_logits, labels)
            for pair in comparison.nodes:
                reference = fp32_recorder.values.get(pair.fp32_node)
                test = int8_recorder.values.get(pair.int8_node)
                if reference is None or test is None or reference.shape != test.shape:
                    skipped.add(pair.fp32_node)
                    continue
                pair.sums.add(reference, test)

            skipped |= int8_recorder.skipped
            if advance is not None:
                advance(1)

    if skipped:
        log.debug("nodes without a comparable value in some batch: %s", ", ".join(sorted(skipped)))
    comparison.nodes = [pair for pair in comparison.nodes if pair.sums.count > 0]
    return comparison


def _add_logits(comparison: Comparison, fp32_logits: torch.Tensor, int8_logits: torch.Tensor, labels: torch.Tensor | None) -> None:
    if fp32_logits.ndim != 2 or fp32_logits.shape != int8_logits.shape:
        raise ValueError(
            f"expected logits of shape N x classes from both models; got fp32 {tuple(fp32_logits.shape)} "
            f"and int8 {tuple(int8_logits.shape)}"
        )

    fp32_top1 = fp32_logits.argmax(dim=1)
    int8_top1 = int8_logits.argmax(dim=1)
    top_k = fp32_logits.topk(min(CONTAINMENT_K, fp32_logits.shape[1]), dim=1).indices

    comparison.samples += fp32_logits.shape[0]
    comparison.agree += int((fp32_top1 == int8_top1).sum())
    comparison.contained += int((top_k == int8_top1[:, None]).any(dim=1).sum())
    comparison.logits.add(fp32_logits, int8_logits)
    if labels is not None:
        comparison.correct_fp32 += int((fp32_top1 == labels).sum())
        comparison.correct_int8 += int((int8_top1 == labels).sum())
