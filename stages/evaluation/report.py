"""The evaluate stage's section of report.md."""

from __future__ import annotations

from typing import Any, Mapping

# The chart draws bars below this SQNR in the warning color. int8 activations
# quantized per tensor typically sit around 30-40 dB; below 20 dB a layer
# usually costs accuracy. This is a rule of thumb, not a gate.
LOW_SQNR_DB = 20.0


def evaluation_section(name: str, record: Mapping[str, Any]) -> str:
    """Render accuracy, agreement, SQNR, the chart and the worst nodes as Markdown."""
    metrics = record.get("metrics", {})
    lines = [f"## Accuracy: {name}", ""]

    if "top1_fp32" in metrics:
        lines += [
            "| model | top-1 |",
            "|---|---|",
            f"| fp32 | {metrics['top1_fp32']:.2f}% |",
            f"| int8 | {metrics['top1_int8']:.2f}% |",
            "",
            f"Top-1 drop: {metrics['top1_drop']:.2f} points on {metrics['samples']} samples.",
            "",
        ]
    else:
        lines += [f"The data set has no labels: int8 is compared with fp32 on {metrics.get('samples', 0)} samples.", ""]

    lines.append(
        f"Top-1 agreement with fp32: {metrics.get('top1_agreement', 0):.2f}%. "
        f"int8 top-1 within fp32 top-5: {metrics.get('top5_containment', 0):.2f}%. "
        f"Logits SQNR: {_db(metrics.get('sqnr_db'))}."
    )
    lines.append("")

    charts = [published for published in record.get("published", []) if published.endswith("_sqnr.png")]
    for chart in charts:
        lines += [f"![Per-node SQNR of {name}]({chart})", ""]
    if charts:
        lines += [
            f"The dashed line marks {LOW_SQNR_DB:.0f} dB, a rule of thumb and not a gate: int8 activations "
            f"usually sit at 30 to 40 dB, and a node below {LOW_SQNR_DB:.0f} dB often costs accuracy.",
            "",
        ]

    worst = metrics.get("worst_nodes", [])
    if worst:
        lines += ["Nodes with the lowest SQNR (int8 against fp32 activations):", "", "| node | SQNR |", "|---|---|"]
        lines += [f"| `{row['node']}` | {'exact' if row.get('exact') else _db(row['sqnr_db'])} |" for row in worst]
        lines.append("")
    return "\n".join(lines)


def _db(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f} dB"
