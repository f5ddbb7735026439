"""The report.md section of a Caffe export (imports neither torch nor caffe)."""

from __future__ import annotations

from typing import Any, Mapping

from stages.export import model_link


def report_section(name: str, metrics: Mapping[str, Any]) -> str:
    """Return the export's files and its pycaffe parity result as Markdown."""
    verdict = "passed" if metrics.get("passed") else "failed"
    lines = [
        f"## Export: {name}",
        "",
        f"fp32 Caffe model {model_link(metrics)} ({metrics.get('layers', '?')} layers). "
        f"Parity with PyTorch in pycaffe {verdict} on {metrics.get('samples', 0)} samples: "
        f"max abs diff {metrics.get('max_abs_diff', float('nan')):.3g}, "
        f"max rel diff {metrics.get('max_rel_diff', float('nan')):.3g}.",
    ]
    if "calibrated_blobs" in metrics:
        lines.append(
            f"Calibration table: {metrics['calibrated_blobs']} activation blobs, "
            f"{metrics.get('calibrated_layers', 0)} weighted layers."
        )
    return "\n".join(lines) + "\n"
