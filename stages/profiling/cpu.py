"""Name the CPU and its int8 dot-product instructions, for latency reports.

onnxruntime's int8 kernels are fast on x86 only with VNNI (avx512_vnni or
avx_vnni) or AMX (amx_int8); without them int8 can be slower than fp32.
On Arm the equivalents are the dot-product (asimddp) and int8 matrix
multiply (i8mm) extensions.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags that speed up int8 matrix products, in report order.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# Keys naming the CPU model: x86 first, then the Arm ones.
MODEL_KEYS = ("model name", "Model", "Hardware", "CPU part")
FLAG_KEYS = ("flags", "Features")
# Distributions whose versions are recorded with every timing.
RUNTIME_PACKAGES = ("torch", "onnxruntime", "onnx", "numpy")


def describe_cpu(cpuinfo: str | None = None) -> str:
    """Return e.g. ``"AMD EPYC 7B13 64-Core Processor (avx512_vnni)"``.

    ``cpuinfo`` is the text of /proc/cpuinfo (read when None). Without int8
    instructions the parenthesis states that instead.
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""

    fields = _first_values(cpuinfo)
    model = next((fields[key] for key in MODEL_KEYS if fields.get(key)), "") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set()
    for key in FLAG_KEYS:
        flags.update(fields.get(key, "").split())

    features = [flag for flag in INT8_FLAGS if flag in flags]
    if not features:
        return f"{model} (no int8 dot-product instructions)"
    return f"{model} ({', '.join(features)})"


def _first_values(cpuinfo: str) -> dict[str, str]:
    """Map each key of /proc/cpuinfo to its first value, whitespace collapsed."""
    values: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, separator, value = line.partition(":")
        key = key.strip()
        if separator and key and key not in values:
            values[key] = " ".join(value.split())
    return values


def runtime_versions(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Return ``{"<package>_version": version}``, read from the installed metadata without importing."""
    versions = {}
    for package in packages:
        try:
            versions[f"{package}_version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[f"{package}_version"] = "not installed"
    return versions
