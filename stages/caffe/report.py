"""The report.md section of a Caffe export (imports neither torch nor caffe)."""

from __future__ import annotations

from typing import Any, Mapping

from stages.export import model_link, parity_sentence


def report_section(name: str, metrics: Mapping[str, Any]) -> str:
    """Return the export's files and its pycaffe parity result as Markdown."""
    lines = [
        f"## Export: {name}",
        "",
        f"fp32 Caffe model {model_link(metrics)} ({metrics.get('layers', '?')} layers). " + parity_sentence("pycaffe", metrics),
    ]
    if "calibrated_blobs" in metrics:
        lines.append(
            f"Calibration table: {metrics['calibrated_blobs']} activation blobs, "
            f"{metrics.get('calibrated_layers', 0)} weighted layers."
        )
    return "\n".join(lines) + "\n"
