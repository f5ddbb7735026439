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
    session = create_session(path, threads)
    feeds = session_feeds(session, batch_size)
    for _ in range(warmup):
        session.run(None, feeds)

    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - started)
    return Latency.from_seconds(samples)


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
