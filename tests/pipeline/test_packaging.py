"""The built wheel: `pipe` runs from an installed copy, away from the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_files import TRACE_ONLY, write_pipeline

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_installed_wheel_runs_pipeline(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    wheels = tmp_path_factory.mktemp("wheels")
    installed = tmp_path_factory.mktemp("installed")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)]
    subprocess.run(build, check=True, capture_output=True, cwd=wheels, timeout=300)
    (wheel,) = wheels.glob("brocolli-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(installed), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    path = write_pipeline(workdir, TRACE_ONLY)
    # The installed copy comes first on the path, and the working folder is outside the checkout.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    probe = [sys.executable, "-c", "import pipeline, schemas, stages; print(pipeline.__file__, schemas.__file__, stages.__file__)"]
    files = subprocess.run(probe, check=True, capture_output=True, text=True, cwd=workdir, env=env).stdout.split()
    assert len(files) == 3
    assert all(file.startswith(str(installed)) for file in files)

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", path.name, "--json"],
        capture_output=True, text=True, cwd=workdir, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stages"][0]["status"] == "ran"
