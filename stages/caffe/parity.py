"""Run an exported Caffe model in a pycaffe subprocess and compare it with PyTorch.

:func:`probe_caffe` checks that ``import caffe`` works in a fresh
interpreter. :func:`run_caffe` runs the model through
``python -m stages.caffe.runner`` and returns blobs by name. A failed Caffe
CHECK aborts that process, and the crash becomes :class:`CaffeCrash` with
the last line Caffe wrote to stderr. :func:`compare_outputs` measures the
final outputs over many inputs, and :func:`find_divergence` compares every
blob with the fx node whose value it holds and returns the first, in layer
order, that differs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx

from stages.caffe.proto import INSTALL_HINT, CaffeMissing
from stages.caffe.runner import EXIT_NO_CAFFE

# Seconds one Caffe subprocess may take (loading VGG's half-gigabyte caffemodel included).
RUN_TIMEOUT_S = 600
PROBE_TIMEOUT_S = 120
# glog's fatal lines look like "F20261204 20:51:02.123 123 net.cpp:84] Check failed: ..."
# (older glog writes the date without the year).
_GLOG_FATAL = re.compile(r"^F(\d{4}){1,2} ")


class CaffeCrash(Exception):
    """The Caffe subprocess failed; the message is the last line of its stderr."""


@dataclass
class OutputComparison:
    """Differences between Caffe and PyTorch over all compared inputs."""

    samples: int
    max_abs_diff: float
    max_rel_diff: float
    # Index of the batch with the largest relative difference.
    worst_batch: int


@dataclass
class Divergence:
    """The first blob whose value differs from the matching fx node's."""

    blob: str
    layer: str
    layer_type: str
    fx_node: str
    max_abs_diff: float
    max_rel_diff: float
    detail: str = ""

    def describe(self) -> str:
        return (
            f"first diverging blob '{self.blob}' (layer '{self.layer}', {self.layer_type}, fx node '{self.fx_node}'): "
            f"max_abs_diff={self.max_abs_diff:.4g}, max_rel_diff={self.max_rel_diff:.4g}{self.detail}"
        )


def subprocess_env() -> dict[str, str]:
    # GLOG_minloglevel=2 keeps Caffe's INFO and WARNING lines out of stderr.
    return {**os.environ, "GLOG_minloglevel": "2"}


@functools.cache
def probe_caffe(python: str = sys.executable) -> None:
    """Raise CaffeMissing with one line when ``import caffe`` fails in a fresh interpreter."""
    result = subprocess.run(
        [python, "-c", "import caffe"],
        cwd=tempfile.gettempdir(),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise CaffeMissing(f"Caffe is not available ({last_error_line(result.stderr, result.returncode)}); {INSTALL_HINT}")


def last_error_line(stderr: str, returncode: int) -> str:
    """Return Caffe's fatal glog line if there is one, else the last line of stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if _GLOG_FATAL.match(line)]
    if fatal:
        return fatal[-1]
    return lines[-1] if lines else f"exit status {returncode}"


def run_caffe(
    prototxt: Path,
    caffemodel: Path,
    inputs: np.ndarray,
    outputs: Sequence[str] = (),
    all_blobs: bool = False,
) -> dict[str, np.ndarray]:
    """Run the model in a pycaffe subprocess; return the requested blobs (or all) by name."""
    with tempfile.TemporaryDirectory(prefix="caffe-run-") as folder:
        work = Path(folder)
        np.save(work / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.float32))
        request = {
            "prototxt": str(prototxt),
            "caffemodel": str(caffemodel),
            "inputs": str(work / "inputs.npy"),
            "outputs": list(outputs),
            "all_blobs": all_blobs,
            "result": str(work / "result.npz"),
        }
        (work / "request.json").write_text(json.dumps(request))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "stages.caffe.runner", str(work / "request.json")],
                cwd=work,
                env=subprocess_env(),
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise CaffeCrash(f"pycaffe did not finish within {RUN_TIMEOUT_S} s") from exc
        if result.returncode == EXIT_NO_CAFFE:
            raise CaffeMissing(f"Caffe is not available ({last_error_line(result.stderr, result.returncode)}); {INSTALL_HINT}")
        if result.returncode != 0:
            raise CaffeCrash(last_error_line(result.stderr, result.returncode))

        names = json.loads((work / "result.json").read_text())
        with np.load(work / "result.npz") as data:
            return {name: data[f"arr_{index}"] for index, name in enumerate(names)}


def chunk_inputs(inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Fill the inputs up to whole batches, repeating the first inputs."""
    remainder = len(inputs) % batch_size
    if remainder == 0:
        return inputs
    repeats = -(-batch_size // len(inputs))
    filler = np.concatenate([inputs] * repeats)[: batch_size - remainder]
    return np.concatenate([inputs, filler])


def run_torch(graph_module: torch.nn.Module, inputs: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Return the model's outputs over all batches, each stacked along axis 0."""
    per_output: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            result = graph_module(torch.from_numpy(inputs[start : start + batch_size]))
            results = result if isinstance(result, (list, tuple)) else [result]
            if not per_output:
                per_output = [[] for _ in results]
            for position, value in enumerate(results):
                per_output[position].append(value.detach().cpu().numpy())
    return [np.concatenate(values) for values in per_output]


def relative(max_abs_diff: float, max_reference: float) -> float:
    if max_reference > 0:
        return max_abs_diff / max_reference
    return 0.0 if max_abs_diff == 0 else float("inf")


def compare_outputs(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], batch_size: int) -> OutputComparison:
    """max_abs_diff and max_rel_diff = max|a - b| / max|b| over all outputs and batches."""
    samples = len(expected[0])
    max_abs = 0.0
    max_reference = 0.0
    worst_batch = 0
    worst_rel = -1.0
    for index, start in enumerate(range(0, samples, batch_size)):
        batch_abs = 0.0
        batch_reference = 0.0
        for got, want in zip(actual, expected):
            got_batch = got[start : start + batch_size].astype(np.float64)
            want_batch = want[start : start + batch_size].astype(np.float64)
            if got_batch.shape != want_batch.shape:
                return OutputComparison(samples, float("inf"), float("inf"), index)
            batch_abs = max(batch_abs, float(np.abs(got_batch - want_batch).max(initial=0.0)))
            batch_reference = max(batch_reference, float(np.abs(want_batch).max(initial=0.0)))
        max_abs = max(max_abs, batch_abs)
        max_reference = max(max_reference, batch_reference)
        if relative(batch_abs, batch_reference) > worst_rel:
            worst_rel = relative(batch_abs, batch_reference)
            worst_batch = index
    return OutputComparison(samples, max_abs, relative(max_abs, max_reference), worst_batch)


def record_fx_values(graph_module: torch.fx.GraphModule, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Return every fx node's tensor value on one batch."""
    values: dict[str, np.ndarray] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                # A copy: an in-place op later in the graph (ReLU(inplace=True)) would change it.
                values[n.name] = result.detach().cpu().numpy().copy()
            return result

    with torch.no_grad():
        _Recorder(graph_module).run(torch.from_numpy(batch))
    return values


def find_divergence(
    blobs: dict[str, np.ndarray],
    fx_values: dict[str, np.ndarray],
    fx_blobs: dict[str, str],
    producers: dict[str, tuple[str, str]],
    layer_order: Sequence[str],
    max_rel_diff: float,
) -> Divergence | None:
    """Return the first blob, in layer order, that differs from its fx node by more than ``max_rel_diff``.

    ``fx_blobs`` maps fx node names to the blob holding their value. Without
    a blob over the limit, the blob with the largest relative difference is
    returned (None when no blob matches an fx node).
    """
    by_blob: dict[str, str] = {}
    for fx_name, blob in fx_blobs.items():
        if fx_name in fx_values and blob in blobs:
            by_blob.setdefault(blob, fx_name)
    position = {layer: index for index, layer in enumerate(layer_order)}
    ordered = sorted(by_blob, key=lambda blob: position.get(producers.get(blob, ("", ""))[0], -1))

    largest: Divergence | None = None
    for blob in ordered:
        fx_name = by_blob[blob]
        got, want = blobs[blob], fx_values[fx_name]
        layer, layer_type = producers.get(blob, ("?", "?"))
        if got.shape != want.shape:
            return Divergence(blob, layer, layer_type, fx_name, float("inf"), float("inf"), f", shape {list(got.shape)} in Caffe, {list(want.shape)} in PyTorch")
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
        rel = relative(diff, float(np.abs(want).max(initial=0.0)))
        divergence = Divergence(blob, layer, layer_type, fx_name, diff, rel)
        if rel > max_rel_diff:
            return divergence
        if largest is None or rel > largest.max_rel_diff:
            largest = divergence
    return largest
