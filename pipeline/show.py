"""``pipe show``: the headline numbers, then each stage's metrics and timings.

Metrics come from the lock file. Timings (measurements) come from the cache
record of the run that computed each stage's current result, so a later run
that found the stage cached does not hide them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import lock as lock_module
from pipeline.errors import ConfigError
from pipeline.runner import cache_for

# Lock-file metrics listed under each stage.
HEADLINE = ("top1_fp32", "top1_int8", "top1_agreement", "sqnr_db", "passed", "path", "max_rel_diff",
            "within_one_step_pct", "int8_kernels", "size_fp32_bytes", "size_int8_bytes", "size_reduction")
# Measurements listed under each stage: medians and single values, not the p10/p90 spread.
SHOWN_MEASUREMENTS = ("cpu", "speedup", "latency_fp32_ms", "latency_int8_ms", "torch_fp32_ms", "torch_int8_ms",
                      "onnx_fp32_peak_mib", "onnx_int8_peak_mib", "torch_fp32_peak_mib", "torch_int8_peak_mib")


def show_data(path: Path, cache_dir: Path | None) -> dict[str, Any]:
    path = Path(path).resolve()
    lock_path = path.with_suffix(".lock")
    if not lock_path.exists():
        raise ConfigError(f"{lock_path.name}: no lock file yet; run `pipe run {path.name}` first")
    stages = lock_module.read(lock_path)
    cache = cache_for(path, cache_dir)
    last = cache.last_run(path) or {}
    timings = last.get("stages", {})
    rows = []
    for name, entry in stages.items():
        timing = timings.get(name, {})
        measurements = timing.get("measurements") or {}
        if not measurements and entry.get("key"):
            record = cache.read_record(entry["key"])
            measurements = record.measurements if record is not None else {}
        rows.append({
            "name": name,
            "kind": entry.get("kind"),
            "metrics": entry.get("metrics", {}),
            "seconds": timing.get("seconds"),
            "status": timing.get("status"),
            "measurements": measurements,
        })
    return {
        "pipeline": path.name,
        "last_run": last.get("time"),
        "last_run_overrides": last.get("overrides", []),
        "headline": headline(rows),
        "stages": rows,
    }


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the numbers a person looks at first, each with the stage it came from.

    Accuracy and agreement come from the first evaluate stage, sizes and
    latencies from the first profile stage, parity from every export.
    """
    result: dict[str, Any] = {}
    evaluation = next((row for row in rows if row["kind"] == "evaluate"), None)
    if evaluation is not None:
        metrics = evaluation["metrics"]
        result["evaluate"] = {
            key: metrics[key] for key in ("top1_fp32", "top1_int8", "top1_drop", "top1_agreement", "sqnr_db", "samples") if key in metrics
        }
    profile = next((row for row in rows if row["kind"] == "profile"), None)
    if profile is not None:
        metrics, measurements = profile["metrics"], profile["measurements"]
        result["profile"] = {
            **{key: metrics[key] for key in ("size_fp32_bytes", "size_int8_bytes", "size_reduction") if key in metrics},
            **{key: measurements[key] for key in SHOWN_MEASUREMENTS if key in measurements and not key.endswith("_peak_mib")},
        }
    exports = {row["name"]: row["metrics"].get("passed") for row in rows if row["kind"] == "export"}
    if exports:
        result["exports"] = exports
    return result


def headline_lines(data: dict[str, Any]) -> list[str]:
    """Render :func:`headline` as a few sentences; numbers that are missing are left out."""
    lines = []
    evaluation = data.get("evaluate", {})
    if "top1_fp32" in evaluation:
        lines.append(
            f"accuracy: fp32 {evaluation['top1_fp32']:.2f}%, int8 {evaluation['top1_int8']:.2f}% top-1 "
            f"(drop {evaluation.get('top1_drop', evaluation['top1_fp32'] - evaluation['top1_int8']):.2f} points)"
        )
    if "top1_agreement" in evaluation:
        sqnr = evaluation.get("sqnr_db")
        lines.append(
            f"int8 vs fp32: top-1 agreement {evaluation['top1_agreement']:.2f}%"
            + (f", logits SQNR {sqnr:.2f} dB" if sqnr is not None else "")
            + (f", {evaluation['samples']} samples" if "samples" in evaluation else "")
        )

    profile = data.get("profile", {})
    if "size_fp32_bytes" in profile and "size_int8_bytes" in profile:
        lines.append(
            f"ONNX size: fp32 {profile['size_fp32_bytes'] / 1024:.1f} KiB, int8 {profile['size_int8_bytes'] / 1024:.1f} KiB "
            f"({profile['size_fp32_bytes'] / profile['size_int8_bytes']:.2f}x smaller)"
        )
    if "latency_fp32_ms" in profile and "latency_int8_ms" in profile:
        lines.append(
            f"onnxruntime latency: fp32 {profile['latency_fp32_ms']:.3f} ms, int8 {profile['latency_int8_ms']:.3f} ms "
            f"(speed-up {profile['latency_fp32_ms'] / profile['latency_int8_ms']:.2f}x)"
        )
    if "torch_fp32_ms" in profile:
        lines.append(
            f"PyTorch latency: fp32 {profile['torch_fp32_ms']:.3f} ms"
            + (f", int8 reference arithmetic {profile['torch_int8_ms']:.3f} ms" if "torch_int8_ms" in profile else "")
        )
    if "cpu" in profile:
        lines.append(f"CPU: {profile['cpu']}")

    exports = data.get("exports", {})
    if exports:
        verdicts = [f"{name} {'passed' if passed else 'failed'}" for name, passed in exports.items()]
        lines.append("export parity: " + ", ".join(verdicts))
    return lines


def show_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['pipeline']} (last run: {data.get('last_run') or 'none recorded'})"]
    overrides = data.get("last_run_overrides") or []
    if overrides:
        settings = " ".join(f"--set {override}" for override in overrides)
        lines.append(f"  NOTE: the last run used {settings}: metrics come from the lock file, timings from that run")
    lines += [f"  {line}" for line in headline_lines(data.get("headline", {}))]
    lines.append("")
    for row in data["stages"]:
        seconds = f"{row['seconds']:.1f} s" if isinstance(row.get("seconds"), (int, float)) else "-"
        lines.append(f"{row['name']} ({row['kind']}), last run {row.get('status') or '-'} {seconds}")
        shown = {key: value for key, value in row["metrics"].items() if key in HEADLINE}
        shown.update({key: value for key, value in row["measurements"].items() if key in SHOWN_MEASUREMENTS})
        for key, value in shown.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"    {key}: {text}")
    return lines
