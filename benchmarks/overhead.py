"""Start-up cost of a fully cached `pipe run` and of `pipe status` against ``import torch``.

A fully cached run and `pipe status` must not import torch, so both
should take a fraction of the time Python takes to import it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.environment import median_command_seconds

TARGET_RATIO = 0.25


def pipeline_overhead(pipeline_file: Path, runs: int) -> dict[str, Any]:
    """Return the median seconds of each command and its ratio to ``python -c "import torch"``.

    The command list starts with an untimed ``pipe run`` that brings the
    cache up to date.
    """
    pipe = str(Path(sys.executable).with_name("pipe"))
    # One untimed run first: a stage whose source changed since the last
    # run reruns there, so the timed runs are fully cached.
    median_command_seconds([pipe, "run", str(pipeline_file)], 1)
    baseline = median_command_seconds([sys.executable, "-c", "import torch"], runs)
    rows: dict[str, Any] = {"python -c 'import torch'": {"seconds": round(baseline, 3), "ratio": 1.0}}
    for label, command in (
        ("pipe run (fully cached)", [pipe, "run", str(pipeline_file)]),
        ("pipe status", [pipe, "status", str(pipeline_file)]),
    ):
        seconds = median_command_seconds(command, runs)
        ratio = seconds / baseline
        rows[label] = {"seconds": round(seconds, 3), "ratio": round(ratio, 3), "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO}
    return {"runs": runs, "commands": rows}
