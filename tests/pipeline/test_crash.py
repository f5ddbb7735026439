"""SIGKILL and Ctrl-C at several points of a run leave the cache and lock consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cache import Cache
from pipeline_files import BIG_MODEL, SLOW_MODEL, TRACE_ONLY, write_pipeline

PIPE = [sys.executable, "-m", "pipeline.cli"]
REPO = Path(__file__).resolve().parents[2]


def start(path: Path, marker: Path, extra_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPE_TEST_STARTED": str(marker), **extra_env}
    return subprocess.Popen([*PIPE, "run", path.name, "--json", *args], cwd=path.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        assert time.time() < deadline, "the stage did not start"
        time.sleep(0.02)


def assert_consistent(folder: Path) -> None:
    """Every lock entry has its record and complete artifacts; no half-stored entry exists."""
    cache = Cache(folder / ".pipe")
    for entry in (folder / ".pipe" / "artifacts").glob("*/*"):
        assert (entry / "manifest.json").exists(), f"artifact {entry.name} has no manifest"
        assert cache.check_artifact(entry.name), f"artifact {entry.name} does not match its manifest"
    lock_path = folder / "p.lock"
    if lock_path.exists():
        lock = yaml.safe_load(lock_path.read_text())
        for name, stage in lock["stages"].items():
            record = cache.read_record(stage["key"])
            assert record is not None, f"lock names stage {name} without a cache record"
            assert record.outputs == stage["outputs"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.3, 1.8, 2.5, 3.5])
def test_sigkill_at_points_then_resume(workdir: Path, delay: float) -> None:
    (workdir / "tiny_model.py").write_text(BIG_MODEL)
    path = write_pipeline(workdir, TRACE_ONLY.replace("input_shape: [1, 1, 8, 8]", "input_shape: [1, 64]"))
    marker = workdir / "started"
    process = start(path, marker, {})
    wait_for(marker)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()

    assert_consistent(workdir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([*PIPE, "run", path.name, "--json"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)["stages"][0]["status"]
    assert status in ("ran", "cached")
    assert_consistent(workdir)
    assert list((workdir / ".pipe" / "tmp").iterdir()) == []


def test_ctrl_c_exits_130_and_says_resume(workdir: Path) -> None:
    (workdir / "tiny_model.py").write_text(SLOW_MODEL)
    path = write_pipeline(workdir, TRACE_ONLY)
    marker = workdir / "started"
    process = start(path, marker, {"PIPE_TEST_SLEEP": "60"})
    wait_for(marker)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)

    assert process.returncode == 130
    data = json.loads(out)
    assert data["stages"][0]["status"] == "interrupted"
    assert "resume with: pipe run p.yaml" in data["error"]
    assert not (workdir / "p.lock").exists()
    assert_consistent(workdir)
