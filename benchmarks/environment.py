"""The machine and package versions every benchmark section prints, and timing helpers."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Any, Callable

from stages.profiling.cpu import describe_cpu, runtime_versions

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "numpy")


def environment() -> dict[str, Any]:
    """Return the CPU (with its int8 instructions), the core count, the load average and package versions."""
    versions = {name.removesuffix("_version"): version for name, version in runtime_versions(PACKAGES).items()}
    return {
        "cpu": describe_cpu(),
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "versions": versions,
    }


def environment_line(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    return f"CPU: {env['cpu']}, {env['cores']} cores, load average {env['load_average_1min']}; {versions}"


def time_call(function: Callable[[], Any]) -> tuple[float, Any]:
    """Return the seconds ``function()`` took and its result."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def median_command_seconds(command: list[str], runs: int, cwd: str | None = None) -> float:
    """Return the median wall time of ``runs`` runs of ``command``; raise when one fails."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        samples.append(time.perf_counter() - started)
        if completed.returncode != 0:
            detail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"benchmark command {' '.join(command)} failed with exit status {completed.returncode}: {detail}")
    return statistics.median(samples)
