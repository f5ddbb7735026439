"""Plain-text tables of the benchmark results, one per section."""

from __future__ import annotations

from typing import Any


def render_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Return a Markdown table with columns padded to their widest cell."""
    widths = [max(len(str(row[column])) for row in [headers, *rows]) for column in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *(line(row) for row in rows)]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def decibels(value: float | None) -> str:
    return "exact" if value is None else f"{value:.2f} dB"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def verdict(row: dict[str, Any]) -> str:
    """Return ``met``/``missed`` against the row's target, or ``-`` without one."""
    if row.get("met") is None:
        return "-"
    return f"{'met' if row['met'] else 'missed'} (<= {row['target']}x)"


def accuracy_lines(name: str, data: dict[str, Any]) -> list[str]:
    accuracy = data["accuracy"]
    ours = accuracy["ours, int8 ONNX in onnxruntime"]
    labelled = "top1" in ours
    headers = ["model", "top-1", "agreement with fp32", "logit SQNR", "vs ours (ONNX)"]
    rows = []
    for model, scores in accuracy.items():
        if labelled and "top1" in scores:
            difference = f"{scores['top1'] - ours['top1']:+.2f} points top-1"
        else:
            difference = f"{scores['agreement'] - ours['agreement']:+.2f} points agreement"
        rows.append([model, percent(scores.get("top1")), percent(scores.get("agreement")), decibels(scores.get("sqnr_db")), difference])
    title = (
        f"accuracy, {name}: {data['samples']} held-out samples, calibrated on {data['calibration_samples']} samples; "
        f"quantization seconds: " + ", ".join(f"{tool} {seconds:.1f} s" for tool, seconds in data["quantize_seconds"].items())
    )
    return [title, "", *render_table(headers, rows)]


def speed_lines(name: str, data: dict[str, Any]) -> list[str]:
    speed = data["speed_ms"]
    onnx_reference = speed["onnxruntime fp32 (our export)"]["median"]
    torch_reference = speed["PyTorch fp32"]["median"]
    headers = ["runtime and model", "median", "p10", "p90", "speed-up over fp32 (same runtime)"]
    rows = []
    for model, latency in speed.items():
        reference = onnx_reference if model.startswith("onnxruntime") else torch_reference
        rows.append([model, f"{latency['median']:.3f} ms", f"{latency['p10']:.3f} ms", f"{latency['p90']:.3f} ms", ratio(reference / latency["median"])])
    return [f"speed, {name}: batch 1, 2 threads", "", *render_table(headers, rows)]


def overhead_lines(data: dict[str, Any]) -> list[str]:
    headers = ["command", "median", "ratio to import torch", "target"]
    rows = [[command, f"{row['seconds']:.3f} s", ratio(row["ratio"]), verdict(row)] for command, row in data["commands"].items()]
    return [f"pipeline overhead: median of {data['runs']} runs", "", *render_table(headers, rows)]


def calibration_lines(data: dict[str, Any]) -> list[str]:
    headers = ["observer", "calibrate", "fp32 forward", "ratio", "target"]
    rows = [
        [observer, f"{row['calibrate_s']:.3f} s", f"{row['fp32_forward_s']:.3f} s", ratio(row["ratio"]), verdict(row)]
        for observer, row in data["observers"].items()
    ]
    batches = f"{data['batches']} batch" if data["batches"] == 1 else f"{data['batches']} batches"
    title = f"calibration cost, mobilenet_v2: {batches} of {data['batch_size']} ({data['samples']} samples)"
    return [title, "", *render_table(headers, rows)]


def export_lines(name: str, data: dict[str, Any]) -> list[str]:
    headers = ["exporter", "seconds", "ratio to torch.onnx.export"]
    rows = [[exporter, f"{row['seconds']:.3f} s", ratio(row["ratio"])] for exporter, row in data.items()]
    return [f"export time, {name}: fp32 model, opset 17", "", *render_table(headers, rows)]
