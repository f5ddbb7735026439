"""Latency of ONNX models in onnxruntime, whole-model and per node.

Sessions run on the CPU execution provider with all graph optimizations,
``threads`` intra-op threads and sequential execution. Inputs are seeded
random normal values: latency does not depend on them.
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from stages.onnx.session import DISABLED_OPTIMIZERS, PROVIDERS, session_options
from stages.profiling.stats import Latency
from stages.profiling.workers import worker_env

# Suffix onnxruntime's profiler adds to each node's kernel event name.
KERNEL_SUFFIX = "_kernel_time"
INPUT_SEED = 0
# Fresh processes per model over which time_onnx_models spreads the timed runs.
PROCESS_ROUNDS = 5
WORKER_TIMEOUT_S = 600

NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class InputShapeError(ValueError):
    """The model's inputs cannot take the requested batch size or type."""


@dataclass(frozen=True)
class NodeTime:
    """Median time per run of one node (or of same-named unnamed nodes), in ms."""

    node: str
    op: str
    ms: float
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "ms": self.ms, "count": self.count}


def create_session(path: Path, threads: int, profile_prefix: Path | None = None) -> onnxruntime.InferenceSession:
    options = session_options(threads)
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return onnxruntime.InferenceSession(
        str(path), options, providers=PROVIDERS, disabled_optimizers=DISABLED_OPTIMIZERS
    )


def session_feeds(session: onnxruntime.InferenceSession, batch_size: int) -> dict[str, np.ndarray]:
    """Return seeded random inputs with the batch dimension set to ``batch_size``.

    Raises InputShapeError when the model has a fixed batch of another size,
    another symbolic dimension, or a non-numeric input.
    """
    rng = np.random.default_rng(INPUT_SEED)
    feeds = {}
    for value in session.get_inputs():
        dtype = NUMPY_TYPES.get(value.type)
        if dtype is None:
            raise InputShapeError(f"input '{value.name}' has type {value.type}; expected a numeric tensor")
        shape = []
        for axis, size in enumerate(value.shape):
            if axis == 0 and not isinstance(size, int):
                shape.append(batch_size)
            elif axis == 0 and size != batch_size:
                raise InputShapeError(
                    f"input '{value.name}' has a fixed batch size of {size}, not {batch_size}; "
                    f"set batch_size: {size} or export with dynamic_batch: true"
                )
            elif not isinstance(size, int):
                raise InputShapeError(f"input '{value.name}' has a symbolic dimension '{size}' on axis {axis}")
            else:
                shape.append(size)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def time_onnx(path: Path, batch_size: int, threads: int, warmup: int, repeats: int) -> Latency:
    """Time ``repeats`` runs of the model after ``warmup`` untimed ones."""
    return time_onnx_models({path.name: path}, batch_size, threads, warmup, repeats)[path.name]


def time_onnx_models(
    paths: Mapping[str, Path], batch_size: int, threads: int, warmup: int, repeats: int, rounds: int = PROCESS_ROUNDS
) -> dict[str, Latency]:
    """Time ``repeats`` runs of each model, spread over ``rounds`` fresh processes per model.

    Sessions that shared one process timed up to 13% apart on two graphs
    that run the same kernels, so no model shares a process with another.
    A model's latency still moves from one process to the next (by up to
    30% on a 2-core VM), which the rounds average out in part (see
    :func:`time_onnx_rounds`). An InputShapeError names the model (the key
    of ``paths``) it is about.
    """
    per_round = time_onnx_rounds(paths, batch_size, threads, warmup, repeats, rounds)
    return {name: Latency.from_seconds([value for chunk in chunks for value in chunk]) for name, chunks in per_round.items()}


def time_onnx_rounds(
    paths: Mapping[str, Path], batch_size: int, threads: int, warmup: int, repeats: int, rounds: int
) -> dict[str, list[list[float]]]:
    """Return, per model, the seconds of the timed runs of each round, one list per round.

    Each round times every model in its own fresh process: one session,
    ``warmup`` untimed runs, then the round's share of ``repeats``. The
    rounds interleave the models in an order rotated each round, so a
    clock-speed change or another program's burst of work lands on every
    model, and a comparison can pair the models' times round by round.
    """
    names = list(paths)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    if not names:
        return {}
    rounds = max(1, min(rounds, repeats))
    for index in range(rounds):
        # Spread the repeats over the rounds. The first rounds take the remainder.
        count = repeats // rounds + (1 if index < repeats % rounds else 0)
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            try:
                samples[name].append(_time_in_fresh_process(paths[name], batch_size, threads, warmup, count))
            except InputShapeError as exc:
                raise InputShapeError(f"'{name}': {exc}") from exc
    return samples


def _time_in_fresh_process(path: Path, batch_size: int, threads: int, warmup: int, repeats: int) -> list[float]:
    """Return the seconds of ``repeats`` timed runs of one session in a new Python process."""
    env = worker_env()
    request = {"path": str(path), "batch_size": batch_size, "threads": threads, "warmup": warmup, "repeats": repeats}
    command = [sys.executable, "-m", "stages.profiling.onnx_timing", json.dumps(request)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing {path.name} in onnxruntime failed: {last_line}")
    output = json.loads(lines[-1])
    if "error" in output:
        raise InputShapeError(output["error"])
    return [float(value) for value in output["seconds"]]


def _time_here(path: Path, batch_size: int, threads: int, warmup: int, repeats: int) -> list[float]:
    session = create_session(path, threads)
    feeds = session_feeds(session, batch_size)
    for _ in range(warmup):
        session.run(None, feeds)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - started)
    return seconds


def profile_onnx_nodes(path: Path, batch_size: int, threads: int, warmup: int, repeats: int) -> list[NodeTime]:
    """Return the median kernel time per run of each node, slowest first.

    Uses onnxruntime's profiler in a separate session (profiling slows runs
    down, so these times add up to more than the plain latency). Node names
    are those of the optimized graph; nodes that onnxruntime adds without a
    name (layout Transposes) are grouped by name and op.
    """
    with tempfile.TemporaryDirectory(prefix="pipe-ort-profile-") as folder:
        session = create_session(path, threads, Path(folder) / "profile")
        feeds = session_feeds(session, batch_size)
        for _ in range(warmup + repeats):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    return node_times(events, warmup)


def node_times(events: list[dict[str, Any]], warmup: int) -> list[NodeTime]:
    """Return each node's median kernel time per run over the runs after ``warmup``, slowest first.

    A node's time in one run is the sum of its kernel events inside that
    run's ``model_run`` event. The median over runs ignores the odd run that
    another process slowed down.
    """
    runs = sorted(
        (event["ts"], event["ts"] + event["dur"])
        for event in events
        if event.get("cat") == "Session" and event.get("name") == "model_run"
    )[warmup:]
    if not runs:
        return []
    starts = [start for start, _ in runs]

    per_run: dict[tuple[str, str], np.ndarray] = {}
    indices: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if run < 0 or event["ts"] > runs[run][1]:
            continue
        args = event.get("args", {})
        key = (event["name"][: -len(KERNEL_SUFFIX)], str(args.get("op_name", "?")))
        if key not in per_run:
            per_run[key] = np.zeros(len(runs))
        per_run[key][run] += float(event["dur"])
        indices[key].add(str(args.get("node_index", event["name"])))

    rows = [
        NodeTime(node, op, round(float(np.median(times)) / 1000.0, 4), len(indices[(node, op)]))
        for (node, op), times in per_run.items()
    ]
    return sorted(rows, key=lambda row: (-row.ms, row.node))


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: time one model and print ``{"seconds": [...]}`` or ``{"error": ...}`` as one JSON line."""
    request = json.loads((argv or sys.argv[1:])[0])
    try:
        output: dict[str, Any] = {
            "seconds": _time_here(Path(request["path"]), request["batch_size"], request["threads"], request["warmup"], request["repeats"])
        }
    except InputShapeError as exc:
        output = {"error": str(exc)}
    sys.stdout.write(json.dumps(output) + "\n")


if __name__ == "__main__":
    main()
