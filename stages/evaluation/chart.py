"""Bar chart of per-node SQNR, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

from stages.evaluation.compare import NodeComparison
from stages.evaluation.report import LOW_SQNR_DB



def draw_sqnr_chart(nodes: list[NodeComparison], path: Path, title: str) -> None:
    """Write a PNG with one bar per node in graph order.

    Nodes of infinite SQNR (int8 equal to fp32, or an all-zero fp32 value)
    are left out and counted in the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = [pair for pair in nodes if math.isfinite(pair.sums.sqnr_db)]
    exact = len(nodes) - len(finite)

    width = min(30.0, max(6.0, 0.3 * len(finite) + 2.0))
    figure = Figure(figsize=(width, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    values = [pair.sums.sqnr_db for pair in finite]
    colors = ["tab:red" if value < LOW_SQNR_DB else "tab:blue" for value in values]
    axes.bar(range(len(values)), values, color=colors)
    axes.set_xticks(range(len(values)))
    axes.set_xticklabels([pair.fp32_node for pair in finite], rotation=90, fontsize=7)
    axes.axhline(LOW_SQNR_DB, color="tab:red", linewidth=0.8, linestyle="--")
    axes.set_ylabel("SQNR (dB), higher is better")

    suffix = f"\nnot shown: {exact} with infinite SQNR" if exact else ""
    axes.set_title(f"{title}{suffix}", fontsize=9)
    figure.tight_layout()
    # No Software/date metadata, so equal charts give equal bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
