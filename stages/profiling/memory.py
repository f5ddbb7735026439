"""Peak memory of running a model, measured in a fresh subprocess.

What it measures: the growth of the process's peak resident set (``VmHWM``
in /proc/self/status) from just before the model is loaded until after
``runs`` inferences. The baseline is taken after the runtime (torch or
onnxruntime) is imported, and the peak is reset through
/proc/self/clear_refs at that point. So the number covers the loaded
weights (for onnxruntime also its optimized and pre-packed copies), the
activations and the allocators' arenas. It leaves out the runtime's own
code and import-time allocations. A fresh process per model keeps one
model's freed pages from hiding the next one's growth.

NOTE: [Linux only] /proc/self/status and /proc/self/clear_refs exist on
Linux only; elsewhere :func:`peak_memory` returns None.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.profiling.workers import worker_env

log = logging.getLogger(__name__)

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# Writing "5" to clear_refs resets VmHWM to the current resident set.
RESET_PEAK = "5"
PROBE_TIMEOUT_S = 600
RUNTIMES = ("torch", "onnxruntime")
# Probes run at the same time; each is one process that mostly waits on imports.
PARALLEL_PROBES = 2
METHOD = (
    "growth of the peak resident set (VmHWM) from just before loading the model through its runs, "
    "in a fresh process per model, runtime import excluded"
)


@dataclass(frozen=True)
class PeakMemory:
    """Resident-set growth in bytes while loading and running one model."""

    peak_bytes: int
    baseline_bytes: int

    def as_measurements(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}_peak_mib": round(self.peak_bytes / 2**20, 2)}


def status_kib(field: str) -> int:
    """Return one ``kB`` field of /proc/self/status, such as ``VmHWM``."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{STATUS}: no field {field}")


def reset_peak() -> None:
    CLEAR_REFS.write_text(RESET_PEAK)


def peak_memory(runtime: str, model_path: Path, input_shape: list[int], threads: int, runs: int, root: Path) -> PeakMemory | None:
    """Return the resident-set growth of loading ``model_path`` and running it ``runs`` times.

    ``runtime`` is ``torch`` (a pickled GraphModule) or ``onnxruntime``.
    ``root`` goes on the subprocess's ``sys.path`` for models whose modules
    come from a user's file. Returns None when /proc is unavailable or the
    probe fails (logged as a warning).
    """
    if not STATUS.exists() or not CLEAR_REFS.exists():
        return None

    env = worker_env(root)
    command = [
        sys.executable, "-m", "stages.profiling.memory", runtime, str(model_path),
        "--shape", ",".join(str(size) for size in input_shape), "--threads", str(threads), "--runs", str(runs),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("profile: memory probe of %s in %s failed: %s", model_path.name, runtime, last_line)
        return None
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return PeakMemory(int(data["peak_bytes"]), int(data["baseline_bytes"]))


def measure_peaks(
    targets: dict[str, tuple[str, Path]], input_shape: list[int], threads: int, runs: int, root: Path
) -> dict[str, PeakMemory]:
    """Run :func:`peak_memory` for each ``name -> (runtime, model path)``; failed probes are left out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(PARALLEL_PROBES) as pool:
        futures = {
            name: pool.submit(peak_memory, runtime, path, input_shape, threads, runs, root)
            for name, (runtime, path) in targets.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    return {name: peak for name, peak in results.items() if peak is not None}


def _probe_torch(model_path: Path, shape: list[int], threads: int, runs: int) -> tuple[int, int]:
    import torch

    torch.set_num_threads(threads)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    baseline = _reset_and_read_baseline()
    model = torch.load(model_path, weights_only=False)
    model.eval()
    with torch.inference_mode():
        for _ in range(runs):
            model(example)
    return baseline, status_kib("VmHWM")


def _probe_onnxruntime(model_path: Path, shape: list[int], threads: int, runs: int) -> tuple[int, int]:
    from stages.profiling.onnx_timing import create_session, session_feeds

    baseline = _reset_and_read_baseline()
    session = create_session(model_path, threads)
    feeds = session_feeds(session, shape[0])
    for _ in range(runs):
        session.run(None, feeds)
    return baseline, status_kib("VmHWM")


def _reset_and_read_baseline() -> int:
    import gc

    gc.collect()
    reset_peak()
    return status_kib("VmRSS")


def main(argv: list[str] | None = None) -> None:
    """Probe entry point: print ``{"peak_bytes", "baseline_bytes"}`` as one JSON line."""
    parser = argparse.ArgumentParser(description="Measure the resident-set growth of loading and running one model.")
    parser.add_argument("runtime", choices=RUNTIMES)
    parser.add_argument("model", type=Path)
    parser.add_argument("--shape", required=True, help="input shape, comma separated, batch first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    shape = [int(size) for size in args.shape.split(",")]
    probe = _probe_torch if args.runtime == "torch" else _probe_onnxruntime
    baseline_kib, peak_kib = probe(args.model, shape, args.threads, args.runs)
    json.dump({"peak_bytes": (peak_kib - baseline_kib) * 1024, "baseline_bytes": baseline_kib * 1024}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
