"""The profile stage's section of report.md."""

from __future__ import annotations

import re
from typing import Any, Mapping

# (runtime, model, latency prefix, memory prefix) of the rows of the latency table.
LATENCY_ROWS = (
    ("onnxruntime", "fp32", "latency_fp32", "onnx_fp32"),
    ("onnxruntime", "int8", "latency_int8", "onnx_int8"),
    ("PyTorch", "fp32", "torch_fp32", "torch_fp32"),
    ("PyTorch (reference arithmetic)", "int8", "torch_int8", "torch_int8"),
)
# Below this onnxruntime latency per run, session overhead dominates and a speed-up ratio means little.
TINY_LATENCY_MS = 0.1
# Above this share of the machine's CPU time used by other processes while timing, latencies are flagged.
BUSY_PERCENT = 20.0
# Suffixes that onnxruntime's graph optimizers append to the names of the nodes they create.
ORT_NAME_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")


def profile_section(name: str, record: Mapping[str, Any]) -> str:
    """Render sizes, MACs, the latency and memory table, the speed-up, the CPU and the slowest nodes."""
    metrics = record.get("metrics", {})
    measurements = record.get("measurements", {})
    lines = [f"## Size and speed: {name}", ""]
    lines += _size_table(metrics)
    if measurements:
        lines += _latency_table(measurements)
        lines += _slowest_nodes(measurements)
    return "\n".join(lines)


def _size_table(metrics: Mapping[str, Any]) -> list[str]:
    lines = [
        "| | fp32 | int8 | fp32 / int8 |",
        "|---|---|---|---|",
    ]
    rows = (
        ("parameters", "params_{}", _count),
        ("MACs per sample", "macs_{}", _count),
        ("PyTorch artifact (model.pt)", "torch_size_{}_bytes", _kib),
        ("ONNX file", "size_{}_bytes", _kib),
    )
    for label, pattern, show in rows:
        fp32, int8 = metrics.get(pattern.format("fp32")), metrics.get(pattern.format("int8"))
        if fp32 is None and int8 is None:
            continue
        ratio = f"{fp32 / int8:.2f}x" if fp32 and int8 else "-"
        lines.append(f"| {label} | {show(fp32)} | {show(int8)} | {ratio} |")
    lines.append("")
    if "size_reduction" in metrics:
        lines += [f"The int8 ONNX file is {metrics['size_reduction']:.2f}x smaller than the fp32 one.", ""]
    return lines


def _latency_table(measurements: Mapping[str, Any]) -> list[str]:
    versions = ", ".join(
        f"{package} {measurements[f'{package}_version']}"
        for package in ("torch", "onnxruntime")
        if f"{package}_version" in measurements
    )
    lines = [
        f"Latency per batch of {measurements.get('batch_size', 1)} over {measurements.get('repeats', '?')} runs after warm-up, "
        f"{measurements.get('threads', '?')} threads, on {measurements.get('cpu', 'an unknown CPU')}"
        + (f" ({versions})" if versions else "")
        + ":",
        "",
        "| runtime | model | median | p10 | p90 | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for runtime, model, prefix, memory_prefix in LATENCY_ROWS:
        if f"{prefix}_ms" not in measurements:
            continue
        peak = measurements.get(f"{memory_prefix}_peak_mib")
        lines.append(
            f"| {runtime} | {model} | {measurements[f'{prefix}_ms']:.3f} ms | "
            f"{measurements[f'{prefix}_p10_ms']:.3f} ms | {measurements[f'{prefix}_p90_ms']:.3f} ms | "
            f"{'-' if peak is None else f'{peak:.1f} MiB'} |"
        )
    lines.append("")
    if "speedup" in measurements:
        line = f"onnxruntime int8 speed-up over fp32: {measurements['speedup']:.2f}x."
        if max(measurements["latency_fp32_ms"], measurements["latency_int8_ms"]) < TINY_LATENCY_MS:
            line += f" Both onnxruntime latencies are under {TINY_LATENCY_MS} ms, where per-run overhead dominates, so this ratio says little."
        lines += [line, ""]
    note = busy_note(measurements)
    if note:
        lines += [f"NOTE: {note}.", ""]
    if "memory_method" in measurements:
        lines += [f"Peak memory: {measurements['memory_method']}.", ""]
    return lines


def _slowest_nodes(measurements: Mapping[str, Any]) -> list[str]:
    lines = []
    if measurements.get("slowest_nodes_int8") or measurements.get("slowest_nodes_fp32"):
        lines += [
            "Nodes are named after the ONNX node that onnxruntime's optimized kernel came from; "
            "a fused kernel (a Conv with the BatchNormalization and Relu after it) takes the name of one node it absorbed.",
            "",
        ]
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
            lines.append(f"| `{onnx_node_name(row['node'])}`{grouped} | {row['op']} | {row['ms']:.4f} ms |")
        lines.append("")
    return lines


def busy_note(measurements: Mapping[str, Any]) -> str | None:
    """Return a warning when other processes used much of the CPU while the models were timed, else None."""
    others = measurements.get("others_cpu_percent")
    if others is None or others <= BUSY_PERCENT:
        return None
    return (
        f"other processes used {others:.0f}% of the machine's CPU time while the models were timed, "
        "so these latencies are inflated, PyTorch's multi-threaded ones most; rerun on an idle machine"
    )


def onnx_node_name(optimized_name: str) -> str:
    """Return an onnxruntime optimized-graph node name without the suffixes its optimizers append."""
    return ORT_NAME_SUFFIX.sub("", optimized_name) or optimized_name


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"
