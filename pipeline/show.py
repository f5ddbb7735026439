"""``pipe show``: the lock file's metrics and the last run's timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import lock as lock_module
from pipeline.errors import ConfigError
from pipeline.runner import cache_for

HEADLINE = ("top1_fp32", "top1_int8", "top1_agreement", "sqnr_db", "passed", "path", "max_rel_diff",
            "within_one_step_pct", "int8_kernels", "size_fp32_bytes", "size_int8_bytes")


def show_data(path: Path, cache_dir: Path | None) -> dict[str, Any]:
    path = Path(path).resolve()
    lock_path = path.with_suffix(".lock")
    if not lock_path.exists():
        raise ConfigError(f"{lock_path.name}: no lock file yet; run `pipe run {path.name}` first")
    stages = lock_module.read(lock_path)
    last = cache_for(path, cache_dir).last_run(path) or {}
    timings = last.get("stages", {})
    rows = []
    for name, entry in stages.items():
        timing = timings.get(name, {})
        rows.append({
            "name": name,
            "kind": entry.get("kind"),
            "metrics": entry.get("metrics", {}),
            "seconds": timing.get("seconds"),
            "status": timing.get("status"),
            "measurements": timing.get("measurements", {}),
        })
    return {"pipeline": path.name, "last_run": last.get("time"), "stages": rows}


def show_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['pipeline']} (last run: {data.get('last_run') or 'none recorded'})"]
    for row in data["stages"]:
        seconds = f"{row['seconds']:.1f} s" if isinstance(row.get("seconds"), (int, float)) else "-"
        lines.append(f"{row['name']} ({row['kind']}), last run {row.get('status') or '-'} {seconds}")
        headline = {key: value for key, value in row["metrics"].items() if key in HEADLINE}
        for key, value in {**headline, **{k: v for k, v in row["measurements"].items() if k.endswith("_ms") or k in ("cpu", "speedup")}}.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"    {key}: {shown}")
    return lines
