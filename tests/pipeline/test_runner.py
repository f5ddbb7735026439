"""Runs of real pipelines in real processes: caching, locks, commands."""

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

from pipeline_files import PARALLEL, SLOW_MODEL, TRACE_ONLY, write_pipeline

PIPE = [sys.executable, "-m", "pipeline.cli"]
REPO = Path(__file__).resolve().parents[2]


def pipe(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([*PIPE, *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=300)


def run_json(path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = pipe("run", path.name, "--json", *args, cwd=path.parent, env=env)
    return result.returncode, json.loads(result.stdout)


def statuses(data: dict) -> dict[str, str]:
    return {stage["name"]: stage["status"] for stage in data["stages"]}


def test_second_run_cached_without_torch(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    code, first = run_json(path)
    assert code == 0, first
    assert statuses(first) == {"trace": "ran"}

    probe = (
        "import sys, pipeline\n"
        f"result = pipeline.run({str(path)!r})\n"
        "assert result['stages'][0]['status'] == 'cached', result\n"
        "print('torch' in sys.modules, 'networkx' in sys.modules, 'jsonschema' in sys.modules)\n"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert imported.stdout.split() == ["False", "False", "False"]


def test_lock_records_key_and_digests(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    code, data = run_json(path)
    assert code == 0
    lock = yaml.safe_load((workdir / "p.lock").read_text())
    assert lock["format"] == 1
    entry = lock["stages"]["trace"]
    assert entry["kind"] == "trace"
    assert len(entry["key"]) == 64
    digest = entry["outputs"]["fp32_model"]
    manifest = json.loads((workdir / ".pipe" / "artifacts" / digest[:2] / digest / "manifest.json").read_text())
    assert manifest["digest"] == digest
    assert entry["metrics"] == data["metrics"]["trace"]


def test_trace_reproduces_lock_digest(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    run_json(path)
    lock_before = (workdir / "p.lock").read_text()
    code, data = run_json(path, "--force-all")
    assert code == 0
    assert data["stages"][0]["reproduced"] is True
    assert (workdir / "p.lock").read_text() == lock_before


def test_set_override_changes_key_not_lock(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    run_json(path)
    lock_before = (workdir / "p.lock").read_text()
    code, data = run_json(path, "--set", "trace.leaf_modules=[torch.nn.Conv2d]")
    assert code == 0
    assert statuses(data) == {"trace": "ran"}
    assert "lock file not updated" in data["notes"][0]
    assert (workdir / "p.lock").read_text() == lock_before
    _, again = run_json(path)
    assert statuses(again) == {"trace": "cached"}


def test_user_model_edit_reruns_trace(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    run_json(path)
    model_file = workdir / "tiny_model.py"
    model_file.write_text(model_file.read_text().replace("nn.Linear(width, 3)", "nn.Linear(width, 5)"))
    status = pipe("status", path.name, "--json", cwd=workdir)
    rows = json.loads(status.stdout)["stages"]
    assert rows[0]["status"] == "stale"
    assert "file tiny_model.py changed" in rows[0]["reason"]
    _, data = run_json(path)
    assert statuses(data) == {"trace": "ran"}


def test_truncated_artifact_is_a_miss(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    _, first = run_json(path)
    lock = yaml.safe_load((workdir / "p.lock").read_text())
    digest = lock["stages"]["trace"]["outputs"]["fp32_model"]
    model_file = workdir / ".pipe" / "artifacts" / digest[:2] / digest / "files" / "model.pt"
    with open(model_file, "r+b") as handle:
        handle.truncate(100)

    result = pipe("run", path.name, "--json", cwd=workdir)
    assert "corrupt artifact" in result.stderr
    assert statuses(json.loads(result.stdout)) == {"trace": "ran"}
    assert model_file.stat().st_size > 100


def test_invalid_file_json_and_nothing_written(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY + "    bogus: 1\n")
    code, data = run_json(path)
    assert code == 2
    assert data["stages"] == []
    assert "p.yaml:16:" in data["error"]
    assert "unknown field 'bogus'" in data["error"]
    assert not (workdir / "p.lock").exists()
    plain = pipe("run", path.name, cwd=workdir)
    assert plain.returncode == 2
    assert plain.stderr.count("\n") == 1
    assert "Traceback" not in plain.stderr


def test_kill_during_stage_then_resume(workdir: Path) -> None:
    (workdir / "tiny_model.py").write_text(SLOW_MODEL)
    path = write_pipeline(workdir, TRACE_ONLY)
    marker = workdir / "started"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPE_TEST_SLEEP": "60", "PIPE_TEST_STARTED": str(marker)}
    process = subprocess.Popen([*PIPE, "run", path.name], cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the trace stage did not start"
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert not (workdir / "p.lock").exists()
    assert list((workdir / ".pipe" / "records").rglob("*.json")) == []
    assert len(list((workdir / ".pipe" / "tmp").iterdir())) == 1

    code, data = run_json(path)
    assert code == 0
    assert statuses(data) == {"trace": "ran"}
    assert list((workdir / ".pipe" / "tmp").iterdir()) == []


def test_two_runs_compute_stage_once(workdir: Path) -> None:
    (workdir / "tiny_model.py").write_text(SLOW_MODEL)
    path = write_pipeline(workdir, TRACE_ONLY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPE_TEST_SLEEP": "4"}
    command = [*PIPE, "run", path.name, "--json"]
    first = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen([*PIPE, "run", path.name, "--json", "-v"],
                              cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_first, _ = first.communicate(timeout=120)
    out_second, err_second = second.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 0
    assert statuses(json.loads(out_first)) == {"trace": "ran"}
    assert statuses(json.loads(out_second)) == {"trace": "cached"}
    assert "waiting for pid" in err_second
    assert len(list((workdir / ".pipe" / "records").rglob("*.json"))) == 1


def test_status_dag_show_validate_json(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    validate = json.loads(pipe("validate", path.name, "--json", cwd=workdir).stdout)
    assert validate == {"valid": True, "pipeline": "tiny", "stages": ["trace"]}

    status = json.loads(pipe("status", path.name, "--json", cwd=workdir).stdout)
    assert status["stale"] == ["trace"]
    assert status["stages"][0]["reason"] == "not run before"

    dag = json.loads(pipe("dag", path.name, "--json", cwd=workdir).stdout)
    assert dag["order"] == ["trace"]
    assert dag["stages"][0]["outputs"] == {"fp32_model": "fp32_model"}

    run_json(path)
    show = json.loads(pipe("show", path.name, "--json", cwd=workdir).stdout)
    assert show["stages"][0]["name"] == "trace"
    assert show["stages"][0]["metrics"]["nodes"] > 0
    assert show["stages"][0]["status"] == "ran"

    kinds = json.loads(pipe("stages", "--json", cwd=workdir).stdout)
    trace_kind = next(kind for kind in kinds["kinds"] if kind["kind"] == "trace")
    assert trace_kind["params"]["leaf_modules"]["default"] == []


def test_validate_missing_module_and_checkpoint(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY.replace("source: tiny_model:build", "source: no_such_module:build"))
    result = pipe("validate", path.name, cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: p.yaml:4: model.source: 'no_such_module:build': module file not found, "
        f"expected {workdir.resolve() / 'no_such_module.py'} or {workdir.resolve() / 'no_such_module' / '__init__.py'}; "
        "put the module next to the pipeline file"
    ]

    with_checkpoint = TRACE_ONLY.replace("input_shape: [1, 1, 8, 8]", "input_shape: [1, 1, 8, 8]\n  checkpoint: weights.pt")
    path = write_pipeline(workdir, with_checkpoint)
    result = pipe("validate", path.name, cwd=workdir)
    assert result.returncode == 2
    assert f"error: p.yaml:6: model.checkpoint: file 'weights.pt' not found in {workdir.resolve()}" in result.stderr
    assert not (workdir / "p.lock").exists()


def test_validate_misspelled_model_callable(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY.replace("source: tiny_model:build", "source: tiny_model:biuld"))
    for command in ("validate", "run"):
        result = pipe(command, path.name, cwd=workdir)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "error: p.yaml:4: model.source: 'tiny_model:biuld': tiny_model.py defines no 'biuld' at its top level; "
            "defined there: build, nn, torch"
        )
    assert not (workdir / "p.lock").exists()


def test_show_notes_overrides_of_last_run(workdir: Path) -> None:
    path = write_pipeline(workdir, PARALLEL)
    assert pipe("run", path.name, "--to", "calibrate", cwd=workdir).returncode == 0
    plain = pipe("show", path.name, cwd=workdir).stdout
    assert "NOTE" not in plain

    assert pipe("run", path.name, "--to", "calibrate", "--set", "calibrate.max_batches=1", cwd=workdir).returncode == 0
    output = pipe("show", path.name, cwd=workdir)
    assert "NOTE: the last run used --set calibrate.max_batches=1: metrics come from the lock file, timings from that run" in output.stdout
    assert json.loads(pipe("show", path.name, "--json", cwd=workdir).stdout)["last_run_overrides"] == ["calibrate.max_batches=1"]


def test_gc_removes_unreferenced(workdir: Path) -> None:
    path = write_pipeline(workdir, TRACE_ONLY)
    run_json(path)
    run_json(path, "--set", "trace.leaf_modules=[torch.nn.Conv2d]")
    records = list((workdir / ".pipe" / "records").rglob("*.json"))
    assert len(records) == 2

    dry = json.loads(pipe("gc", ".", "--dry-run", "--json", cwd=workdir).stdout)
    assert len(dry["removed_records"]) == 1
    assert len(list((workdir / ".pipe" / "records").rglob("*.json"))) == 2

    done = json.loads(pipe("gc", ".", "--json", cwd=workdir).stdout)
    assert done["removed_records"] == dry["removed_records"]
    _, data = run_json(path)
    assert statuses(data) == {"trace": "cached"}
