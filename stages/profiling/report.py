"""The profile stage's section of report.md."""

from __future__ import annotations

from typing import Any, Mapping


def profile_section(name: str, record: Mapping[str, Any]) -> str:
    """Render sizes, MACs, the latency table, the speed-up, the CPU and the slowest nodes."""
    metrics = record.get("metrics", {})
    measurements = record.get("measurements", {})
    lines = [f"## Size and speed: {name}", ""]

    lines.append(f"Parameters: {metrics.get('params_fp32', 0):,}. MACs per sample: {metrics.get('macs', 0):,}.")
    if "size_fp32_bytes" in metrics or "size_int8_bytes" in metrics:
        sizes = [f"{precision} {metrics[key] / 1024:.1f} KiB" for precision, key in (("fp32", "size_fp32_bytes"), ("int8", "size_int8_bytes")) if key in metrics]
        ratio = ""
        if "size_fp32_bytes" in metrics and "size_int8_bytes" in metrics:
            ratio = f" ({metrics['size_fp32_bytes'] / metrics['size_int8_bytes']:.2f}x smaller)"
        lines.append(f"ONNX file size: {', '.join(sizes)}{ratio}.")
    lines.append("")

    if not measurements:
        return "\n".join(lines)

    lines += [
        f"Latency per batch of {measurements.get('batch_size', 1)}, {measurements.get('threads', '?')} threads, "
        f"on {measurements.get('cpu', 'an unknown CPU')}:",
        "",
        "| runtime | model | median | p10 | p90 |",
        "|---|---|---|---|---|",
    ]
    rows = (
        ("onnxruntime", "fp32", "latency_fp32"),
        ("onnxruntime", "int8", "latency_int8"),
        ("PyTorch", "fp32", "torch_fp32"),
        ("PyTorch (reference arithmetic)", "int8", "torch_int8"),
    )
    for runtime, model, prefix in rows:
        if f"{prefix}_ms" in measurements:
            lines.append(
                f"| {runtime} | {model} | {measurements[f'{prefix}_ms']:.3f} ms | "
                f"{measurements[f'{prefix}_p10_ms']:.3f} ms | {measurements[f'{prefix}_p90_ms']:.3f} ms |"
            )
    lines.append("")
    if "speedup" in measurements:
        lines += [f"onnxruntime int8 speed-up over fp32: {measurements['speedup']:.2f}x.", ""]

    for precision in ("int8", "fp32"):
        nodes = measurements.get(f"slowest_nodes_{precision}") or []
        if not nodes:
            continue
        lines += [
            f"Slowest onnxruntime nodes, {precision} (median profiler time per run):",
            "",
            "| node | op | time |",
            "|---|---|---|",
        ]
        for row in nodes:
            grouped = f" ({row['count']} nodes)" if row.get("count", 1) > 1 else ""
            lines.append(f"| `{row['node']}`{grouped} | {row['op']} | {row['ms']:.4f} ms |")
        lines.append("")
    return "\n".join(lines)
