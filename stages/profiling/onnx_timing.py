"""Latency of ONNX models in onnxruntime, whole-model and per node.

Sessions run on the CPU execution provider with all graph optimizations,
``threads`` intra-op threads and sequential execution. Inputs are seeded
random normal values: latency does not depend on them.
"""

from __future__ import annotations

import bisect
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from stages.onnx.parity import DISABLED_OPTIMIZERS
from stages.profiling.stats import Latency

# Suffix onnxruntime's profiler adds to each node's kernel event name.
KERNEL_SUFFIX = "_kernel_time"
INPUT_SEED = 0
# Rounds over which time_onnx_models interleaves the models it compares.
INTERLEAVE_ROUNDS = 10
# Pause before switching models. On a 2-core machine 50 ms removed the slowdown
# that the previous session's spinning threads caused. The value is measured, not documented.
SWITCH_PAUSE_SECONDS = 0.05

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
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS
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
    paths: Mapping[str, Path], batch_size: int, threads: int, warmup: int, repeats: int, rounds: int = INTERLEAVE_ROUNDS
) -> dict[str, Latency]:
    """Time ``repeats`` runs of each model, interleaved in ``rounds`` rounds, after ``warmup`` untimed runs each.

    Interleaving puts the models under the same machine conditions: a
    clock-speed change or another process's burst of work during the
    measurement lands on every model, not on whichever ran at that moment.
    Each session's intra-op threads spin for a while after a run and would
    compete with the next model's threads, so every switch first sleeps
    and then does one untimed run. On a 2-core EPYC, two sessions of the
    same optimized graph timed 1 to 2% apart depending on the order in which
    they were created. So with N models the repeats are split over N passes
    with fresh sessions, created in an order rotated by one each pass, and
    every model is created in every position once.
    An InputShapeError names the model (the key of ``paths``) it is about.
    """
    names = list(paths)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for offset in range(len(names)):
        count = repeats // len(names) + (1 if offset < repeats % len(names) else 0)
        if count == 0:
            continue
        order = names[offset:] + names[:offset]
        passed = _time_interleaved(paths, order, batch_size, threads, warmup, count, max(1, rounds // len(names)))
        for name in names:
            samples[name] += passed[name]
    return {name: Latency.from_seconds(samples[name]) for name in names}


def _time_interleaved(
    paths: Mapping[str, Path], names: list[str], batch_size: int, threads: int, warmup: int, repeats: int, rounds: int
) -> dict[str, list[float]]:
    """Return per model the seconds of ``repeats`` timed runs, with sessions created in ``names`` order."""
    sessions = {}
    for name in names:
        session = create_session(paths[name], threads)
        try:
            sessions[name] = (session, session_feeds(session, batch_size))
        except InputShapeError as exc:
            raise InputShapeError(f"'{name}': {exc}") from exc
    for session, feeds in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)

    samples: dict[str, list[float]] = {name: [] for name in sessions}
    rounds = max(1, min(rounds, repeats))
    for index in range(rounds):
        # Spread the repeats over the rounds. The first rounds take the remainder.
        count = repeats // rounds + (1 if index < repeats % rounds else 0)
        # Rotate the order, so no model always runs right after the same other one.
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            session, feeds = sessions[name]
            if len(sessions) > 1:
                time.sleep(SWITCH_PAUSE_SECONDS)
                session.run(None, feeds)
            for _ in range(count):
                started = time.perf_counter()
                session.run(None, feeds)
                samples[name].append(time.perf_counter() - started)
    return samples


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
