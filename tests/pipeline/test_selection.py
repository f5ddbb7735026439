"""Partial, forced, dry and parallel runs through the Python API."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import yaml

import pipeline
from pipeline.errors import ConfigError
from pipeline import config
from pipeline.cache import Cache
from pipeline.contract import StageContext
from pipeline.runner import _run_in_process
from stages import load_stage
from pipeline_files import PARALLEL, write_pipeline


def statuses(result: dict) -> dict[str, str]:
    return {stage["name"]: stage["status"] for stage in result["stages"]}


@pytest.fixture
def parallel(workdir: Path) -> Path:
    return write_pipeline(workdir, PARALLEL)


def test_dry_run_writes_nothing(parallel: Path) -> None:
    result = pipeline.run(parallel, dry_run=True)
    assert statuses(result)["trace"] == "would run"
    assert statuses(result)["qconfig"] == "would run"
    qconfig = next(stage for stage in result["stages"] if stage["name"] == "qconfig")
    assert qconfig["reason"] == "input from 'trace' would be computed in this run"
    assert not parallel.with_suffix(".lock").exists()
    assert list((parallel.parent / ".pipe" / "records").rglob("*.json")) == []


def test_dry_run_lists_forced_dependents(parallel: Path) -> None:
    pipeline.run(parallel)
    result = pipeline.run(parallel, dry_run=True, force=("calibrate",))
    assert statuses(result) == {
        "trace": "cached", "qconfig": "cached", "observe": "cached", "calibrate": "would run",
        "onnx_fp32": "cached", "convert": "would run",
    }


def test_to_runs_ancestors_only(parallel: Path) -> None:
    result = pipeline.run(parallel, to_stage="observe")
    assert statuses(result) == {
        "trace": "ran", "qconfig": "ran", "observe": "ran", "calibrate": "skipped",
        "onnx_fp32": "skipped", "convert": "skipped",
    }
    assert result["exit_code"] == 0


def test_from_and_only_reuse_cache(parallel: Path) -> None:
    pipeline.run(parallel)
    result = pipeline.run(parallel, only="calibrate", force=("calibrate",))
    status = statuses(result)
    assert status["calibrate"] == "ran"
    assert status["trace"] == "cached"
    assert status["convert"] == "skipped"

    result = pipeline.run(parallel, from_stage="calibrate", force=("calibrate",))
    status = statuses(result)
    assert status["calibrate"] == "ran"
    assert status["convert"] == "ran"
    assert status["onnx_fp32"] == "cached"


def test_force_reruns_dependents(parallel: Path) -> None:
    pipeline.run(parallel)
    result = pipeline.run(parallel, force=("observe",))
    status = statuses(result)
    assert [name for name, value in status.items() if value == "ran"] == ["observe", "calibrate", "convert"]
    result = pipeline.run(parallel, force_all=True)
    assert set(statuses(result).values()) == {"ran"}


def test_only_without_cached_inputs_skips(parallel: Path) -> None:
    result = pipeline.run(parallel, only="convert")
    assert statuses(result)["convert"] == "skipped"
    assert statuses(result)["trace"] == "skipped"


def test_unknown_stage_option_rejected(parallel: Path) -> None:
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        pipeline.run(parallel, force=("nope",))


def test_parallel_jobs_same_result(parallel: Path, tmp_path: Path) -> None:
    serial = pipeline.run(parallel)
    lock_serial = parallel.with_suffix(".lock").read_text()

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(parallel.parent / "tiny_model.py", other / "tiny_model.py")
    copy = write_pipeline(other, PARALLEL)
    result = pipeline.run(copy, jobs=2)
    assert set(statuses(result).values()) == {"ran"}
    assert copy.with_suffix(".lock").read_text() == lock_serial
    assert result["metrics"] == serial["metrics"]


def test_shared_cache_dir_shares_prefix(parallel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared-cache"
    monkeypatch.setenv("PIPE_CACHE_DIR", str(shared))
    pipeline.run(parallel)

    other = tmp_path / "second"
    other.mkdir()
    shutil.copy(parallel.parent / "tiny_model.py", other / "tiny_model.py")
    second = write_pipeline(other, PARALLEL.replace("name: tiny", "name: second"), name="second.yaml")
    result = pipeline.run(second)
    assert set(statuses(result).values()) == {"cached"}
    assert not (other / ".pipe").exists()


def test_fresh_clone_reports_reproduced(parallel: Path) -> None:
    pipeline.run(parallel)
    shutil.rmtree(parallel.parent / ".pipe")
    result = pipeline.run(parallel)
    reproduced = {stage["name"]: stage.get("reproduced") for stage in result["stages"]}
    assert reproduced == {name: True for name in reproduced}


def test_status_names_changed_param(parallel: Path) -> None:
    pipeline.run(parallel)
    text = parallel.read_text().replace("    data: rand\n  - name: convert", "    data: rand\n    max_batches: 1\n  - name: convert")
    parallel.write_text(text)
    status = pipeline.status(parallel)
    assert status["stale"] == ["calibrate", "convert"]
    rows = {row["name"]: row for row in status["stages"]}
    assert "param max_batches added (1)" in rows["calibrate"]["reason"]
    assert rows["convert"]["reason"] == "upstream stage 'calibrate' is stale"

    result = pipeline.run(parallel)
    assert [name for name, value in statuses(result).items() if value == "ran"] == ["calibrate", "convert"]


def test_diff_between_git_revisions(parallel: Path) -> None:
    folder = parallel.parent
    git = lambda *args: subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True)
    git("init", "-q")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    pipeline.run(parallel)
    git("add", "p.yaml", "p.lock")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "first")

    text = parallel.read_text().replace("    data: rand\n  - name: convert", "    data: rand\n    max_batches: 1\n  - name: convert")
    parallel.write_text(text)
    pipeline.run(parallel)

    from pipeline.diff import pipeline_diff

    data = pipeline_diff(parallel, None, None)
    changed = {row["stage"]: row for row in data["stages"]}
    assert set(changed) == {"calibrate", "convert"}
    assert changed["calibrate"]["key_changed"] is True
    assert changed["calibrate"]["metrics"]["batches"] == {"old": 2, "new": 1}

    git("add", "p.yaml", "p.lock")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "second")
    data = pipeline_diff(parallel, "HEAD~1", "HEAD")
    assert {row["stage"] for row in data["stages"]} == {"calibrate", "convert"}
    with pytest.raises(ConfigError, match="cannot read it from git"):
        pipeline_diff(parallel, "no-such-rev", None)


@pytest.mark.slow
def test_child_process_forwards_progress(parallel: Path, tmp_path: Path) -> None:
    pipeline.run(parallel, to_stage="observe")
    lock = yaml.safe_load(parallel.with_suffix(".lock").read_text())
    observed = Cache(parallel.parent / ".pipe").artifact_files(lock["stages"]["observe"]["outputs"]["observed_model"])
    loaded = config.load(parallel)
    spec = loaded.stage("calibrate")
    bars: dict[str, list[int]] = {}
    totals: dict[str, int] = {}

    def record(description: str, total: int) -> Callable[[int], None]:
        totals[description] = total
        bars[description] = []
        return bars[description].append

    (tmp_path / "calibration").mkdir()
    ctx = StageContext(
        stage_name="calibrate", kind="calibrate", params=spec.params,
        config=load_stage("calibrate").config(spec.params, loaded.document),
        inputs={"observed_model": observed}, outputs={"calibration": tmp_path / "calibration"},
        root=parallel.parent, output_dir=tmp_path / "out", progress_factory=record,
    )
    result = _run_in_process("calibrate", ctx)

    assert result.metrics["samples"] == 16
    # 16 random samples in batches of 8: the child process advances the bar once per batch.
    assert totals == {"calibrate": 2}
    assert sum(bars["calibrate"]) == 2
