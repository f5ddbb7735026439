"""The summary lines printed after a run."""

from __future__ import annotations

from pipeline.render import summary_lines
from pipeline.runner import Outcome, RunResult


def _result(*outcomes: Outcome) -> RunResult:
    return RunResult(pipeline="p.yaml", outcomes=list(outcomes))


def test_summary_counts_reproduced_stages() -> None:
    lines = summary_lines(
        _result(
            Outcome("trace", "trace", status="ran", reproduced=True),
            Outcome("calibrate", "calibrate", status="ran", reproduced=False),
            Outcome("convert", "convert", status="cached"),
        )
    )

    assert "lock: 1 of 2 recomputed stages reproduce the lock file's output digests; differing: calibrate" in lines


def test_summary_without_lock_comparison_has_no_lock_line() -> None:
    lines = summary_lines(_result(Outcome("trace", "trace", status="cached")))

    assert not any(line.startswith("lock:") for line in lines)


def test_summary_flags_speed_up_of_tiny_models() -> None:
    tiny = Outcome("profile", "profile", status="ran", measurements={"latency_fp32_ms": 0.041, "latency_int8_ms": 0.049})
    large = Outcome("profile", "profile", status="ran", measurements={"latency_fp32_ms": 4.2, "latency_int8_ms": 1.9})

    tiny_line = next(line for line in summary_lines(_result(tiny)) if line.startswith("speed"))
    large_line = next(line for line in summary_lines(_result(large)) if line.startswith("speed"))

    assert "per-run overhead dominates" in tiny_line
    assert "per-run overhead dominates" not in large_line
    assert "speed-up 2.21x" in large_line



def test_summary_lists_files_of_each_export() -> None:
    caffe = Outcome(
        "caffe", "export", status="cached",
        metrics={"path": "out/caffe.caffemodel"},
        published=["caffe.caffemodel", "caffe.calibration.json", "caffe.prototxt"],
    )
    onnx = Outcome("onnx", "export", status="ran", metrics={"path": "out/onnx.onnx"}, published=["onnx.onnx"])

    exports = next(line for line in summary_lines(_result(caffe, onnx)) if line.startswith("exports:"))

    assert exports == "exports: out/caffe.caffemodel (with caffe.calibration.json, caffe.prototxt), out/onnx.onnx"
