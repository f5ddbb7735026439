"""Turn a :class:`Comparison` into the metrics and files of an evaluation artifact.

Percentages and SQNR values are rounded to 2 decimals, so the numbers in the
lock file change only when the results do.
"""

from __future__ import annotations

from typing import Any

from stages.evaluation.compare import Comparison, NodeComparison
from stages.evaluation.sqnr import finite_or_none

# Format of per_node.json.
PER_NODE_FORMAT = 1
WORST_NODE_COUNT = 5


def comparison_metrics(comparison: Comparison) -> dict[str, Any]:
    """Return the deterministic metrics (without ``passed``).

    ``top1_*`` and ``top1_drop`` only when the data set has labels. All
    rates are percentages of ``samples``.
    """
    metrics: dict[str, Any] = {"samples": comparison.samples}
    if comparison.labelled:
        metrics["top1_fp32"] = round(comparison.percent(comparison.correct_fp32), 2)
        metrics["top1_int8"] = round(comparison.percent(comparison.correct_int8), 2)
        metrics["top1_drop"] = round(top1_drop(comparison), 2)
    metrics["top1_agreement"] = round(comparison.percent(comparison.agree), 2)
    metrics["top5_containment"] = round(comparison.percent(comparison.contained), 2)
    metrics["sqnr_db"] = finite_or_none(comparison.logits.sqnr_db, 2)
    metrics["worst_nodes"] = [worst_row(pair) for pair in worst_nodes(comparison.nodes, WORST_NODE_COUNT)]
    return metrics


def worst_row(pair: NodeComparison) -> dict[str, Any]:
    """Return ``{"node", "sqnr_db"}``, plus ``"exact": True`` where the values are equal."""
    row: dict[str, Any] = {"node": pair.fp32_node, "sqnr_db": finite_or_none(pair.sums.sqnr_db, 2)}
    if pair.sums.noise == 0.0:
        row["exact"] = True
    return row


def top1_drop(comparison: Comparison) -> float:
    """Top-1 accuracy lost by int8, in percentage points (negative if int8 is better)."""
    return 100.0 * (comparison.correct_fp32 - comparison.correct_int8) / comparison.samples


def worst_nodes(nodes: list[NodeComparison], count: int) -> list[NodeComparison]:
    """Return the ``count`` nodes of lowest SQNR, worst first; exact matches last.

    Ties keep graph order.
    """
    return sorted(nodes, key=lambda pair: pair.sums.sqnr_db)[:count] if count else []


def per_node_document(comparison: Comparison) -> dict[str, Any]:
    """Return the content of per_node.json: every compared node, worst first."""
    rows = []
    for pair in worst_nodes(comparison.nodes, len(comparison.nodes)):
        summary = pair.sums.summary()
        rows.append({"node": pair.fp32_node, "int8_node": pair.int8_node, "exact": pair.sums.noise == 0.0, **summary})
    return {
        "format": PER_NODE_FORMAT,
        "samples": comparison.samples,
        "logits": comparison.logits.summary(),
        "nodes": rows,
        "note": "sqnr_db is null where it is infinite: exact values, or an all-zero fp32 value",
    }
