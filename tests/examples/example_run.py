"""Copy an example into a temporary folder and run `pipe` there, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_example(folder: Path, names: tuple[str, ...]) -> None:
    """Copy the named files of ``examples/`` into ``folder``."""
    for name in names:
        shutil.copy(REPO / "examples" / name, folder / name)


def pipe_run_json(folder: Path, pipeline_file: str, *args: str, timeout: float) -> tuple[int, dict]:
    """Run ``pipe run PIPELINE_FILE --json`` in ``folder``; return the exit code and the JSON output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", pipeline_file, "--json", *args],
        cwd=folder, capture_output=True, text=True, env=env, timeout=timeout,
    )
    return result.returncode, json.loads(result.stdout)
