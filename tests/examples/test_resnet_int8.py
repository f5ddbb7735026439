"""The main job, `pipe run examples/resnet_int8.yaml`, end to end in a copy.

One real run of every stage kind on the digits data; later runs in the same
folder check caching, a param change and a failing accuracy gate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from example_run import REPO, copy_example, pipe_run_json

EXAMPLE_FILES = ("resnet_int8.yaml", "digits_resnet.py", "digits_resnet.pt")
KINDS = {"trace", "prepare-qconfig", "insert-observers", "calibrate", "convert", "evaluate", "export", "profile"}

pytestmark = pytest.mark.slow


def pipe_json(folder: Path, *args: str) -> tuple[int, dict]:
    return pipe_run_json(folder, "resnet_int8.yaml", *args, timeout=900)


def statuses(data: dict) -> dict[str, str]:
    return {stage["name"]: stage["status"] for stage in data["stages"]}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("example")
    copy_example(folder, EXAMPLE_FILES)
    code, data = pipe_json(folder)
    assert code == 0, data.get("error")
    return folder, data


def test_first_run_runs_every_kind(example: tuple[Path, dict]) -> None:
    _, data = example
    kinds = {stage["kind"] for stage in data["stages"]}
    assert kinds == KINDS
    assert set(statuses(data).values()) == {"ran"}


def test_int8_accuracy_within_one_point(example: tuple[Path, dict]) -> None:
    _, data = example
    metrics = data["metrics"]["evaluate"]
    assert metrics["samples"] >= 540
    assert metrics["top1_fp32"] > 95.0
    assert metrics["top1_fp32"] - metrics["top1_int8"] <= 1.0
    assert metrics["passed"] is True


def test_exports_pass_parity(example: tuple[Path, dict]) -> None:
    folder, data = example
    fp32 = data["metrics"]["onnx_fp32"]
    int8 = data["metrics"]["onnx_int8"]
    assert fp32["precision"] == "fp32"
    assert fp32["max_rel_diff"] <= 1e-4
    assert int8["precision"] == "int8"
    assert int8["within_one_step_pct"] >= 99.9
    for metrics in (fp32, int8):
        assert metrics["passed"] is True
        assert (folder / metrics["path"]).is_file()
    report = (folder / "out" / "resnet_int8" / "report.md").read_text()
    assert "Files: [onnx_int8.json](onnx_int8.json), [onnx_int8.onnx](onnx_int8.onnx)." in report
    assert "[caffe.prototxt](caffe.prototxt)" in report


def test_profile_reports_sizes_and_cpu(example: tuple[Path, dict]) -> None:
    folder, data = example
    metrics = data["metrics"]["profile"]
    measurements = data["measurements"]["profile"]
    assert metrics["size_fp32_bytes"] == (folder / data["metrics"]["onnx_fp32"]["path"]).stat().st_size
    assert metrics["size_int8_bytes"] == (folder / data["metrics"]["onnx_int8"]["path"]).stat().st_size
    assert metrics["size_int8_bytes"] < metrics["size_fp32_bytes"]
    assert measurements["latency_fp32_ms"] > 0
    assert measurements["latency_int8_ms"] > 0
    assert "cpu" in measurements


def test_second_run_all_cached(example: tuple[Path, dict]) -> None:
    folder, _ = example
    lock_before = (folder / "resnet_int8.lock").read_text()
    code, data = pipe_json(folder)
    assert code == 0
    assert set(statuses(data).values()) == {"cached"}
    assert (folder / "resnet_int8.lock").read_text() == lock_before


def test_param_change_reruns_dependents_only(example: tuple[Path, dict]) -> None:
    folder, _ = example
    path = folder / "resnet_int8.yaml"
    original = path.read_text()
    try:
        document = yaml.safe_load(original)
        calibrate = next(stage for stage in document["stages"] if stage["name"] == "calibrate")
        calibrate["max_batches"] = 4
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        code, data = pipe_json(folder)
    finally:
        path.write_text(original)
    assert code == 0, data.get("error")
    assert statuses(data) == {
        "trace": "cached", "qconfig": "cached", "observe": "cached", "calibrate": "ran", "convert": "ran",
        "evaluate": "ran", "onnx_fp32": "cached", "onnx_int8": "ran", "caffe": "ran", "profile": "ran",
    }


def test_failing_gate_exits_1_and_skips(example: tuple[Path, dict]) -> None:
    folder, _ = example
    # Calibrating on blank images collapses every activation range, which
    # wrecks int8 accuracy: the evaluate gate must catch it.
    np.savez(folder / "blank.npz", inputs=np.zeros((64, 1, 8, 8), dtype=np.float32))
    path = folder / "resnet_int8.yaml"
    original = path.read_text()
    lock_before = (folder / "resnet_int8.lock").read_text()
    try:
        document = yaml.safe_load(original)
        document["data"]["blank"] = {"source": "npy", "path": "blank.npz", "batch_size": 32}
        calibrate = next(stage for stage in document["stages"] if stage["name"] == "calibrate")
        calibrate["data"] = "blank"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        code, data = pipe_json(folder)
    finally:
        path.write_text(original)
    assert code == 1
    status = statuses(data)
    assert status["evaluate"] == "failed"
    assert status["onnx_int8"] == "skipped"
    assert status["caffe"] == "skipped"
    assert status["profile"] == "skipped"
    assert status["onnx_fp32"] == "cached"
    assert "accuracy test failed" in data["error"]
    assert "pipe run resnet_int8.yaml" in data["error"]
    assert "evaluate" not in data["metrics"]
    report = (folder / "out" / "resnet_int8" / "report.md").read_text()
    assert "## Stages without a result" in report
    assert "- evaluate: failed (" in report
    assert "- profile: skipped" in report
    lock = yaml.safe_load((folder / "resnet_int8.lock").read_text())
    assert lock["stages"]["evaluate"] == yaml.safe_load(lock_before)["stages"]["evaluate"]
