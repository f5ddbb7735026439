from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from stages.profiling.exports import export_precision, find_onnx_exports, first_of
from stages.profiling.onnx_timing import (
    InputShapeError,
    create_session,
    node_times,
    profile_onnx_nodes,
    session_feeds,
    time_onnx,
    time_onnx_models,
    time_onnx_rounds,
)


def test_time_onnx_counts_repeats(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "model.onnx", int8=False)
    latency = time_onnx(tmp_path / "model.onnx", batch_size=2, threads=1, warmup=2, repeats=7)
    assert latency.runs == 7
    assert 0 < latency.p10_ms <= latency.median_ms <= latency.p90_ms


def test_feeds_follow_batch_size(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "dynamic.onnx", int8=False)
    write_conv_model(tmp_path / "fixed.onnx", int8=False, batch=1)
    feeds = session_feeds(create_session(tmp_path / "dynamic.onnx", 1), 4)
    assert feeds["input"].shape == (4, 3, 16, 16)
    assert str(feeds["input"].dtype) == "float32"
    with pytest.raises(InputShapeError, match="fixed batch size of 1, not 4; set batch_size: 1"):
        session_feeds(create_session(tmp_path / "fixed.onnx", 1), 4)


def test_node_times_skip_warmup_and_take_median() -> None:
    def run(ts: int, dur: int) -> dict:
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def kernel(name: str, op: str, ts: int, dur: int, index: str = "0") -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op, "node_index": index}}

    events = [
        run(0, 100), kernel("conv", "Conv", 10, 90),  # warm-up run, not counted
        run(200, 100), kernel("conv", "Conv", 210, 30), kernel("relu", "Relu", 250, 5),
        run(400, 100), kernel("conv", "Conv", 410, 40), kernel("relu", "Relu", 450, 7),
        run(600, 900), kernel("conv", "Conv", 610, 800), kernel("relu", "Relu", 1450, 6),
        run(2000, 100), kernel("conv", "Conv", 2010, 20), kernel("relu", "Relu", 2050, 4),
        kernel("Transpose", "Transpose", 2060, 2, "7"), kernel("Transpose", "Transpose", 2070, 4, "8"),
    ]
    rows = node_times(events, warmup=1)
    assert [(row.node, row.op) for row in rows] == [("conv", "Conv"), ("relu", "Relu"), ("Transpose", "Transpose")]
    # Medians over the 4 timed runs, in ms: conv of 30, 40, 800, 20 us.
    assert rows[0].ms == 0.035
    assert rows[1].ms == 0.0055
    # Two unnamed Transposes in one run only: 6 us there, 0 in the other three runs.
    assert rows[2].ms == 0.0
    assert rows[2].count == 2


def test_profile_onnx_nodes_names_real_nodes(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "model.onnx", int8=False)
    rows = profile_onnx_nodes(tmp_path / "model.onnx", batch_size=1, threads=1, warmup=1, repeats=5)
    ops = {row.op for row in rows}
    assert "Conv" in ops or "FusedConv" in ops
    assert all(row.ms >= 0 for row in rows)
    assert rows == sorted(rows, key=lambda row: (-row.ms, row.node))


def test_export_precision_from_contract_or_ops(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    for name, int8 in (("a", False), ("b", True), ("c", True)):
        (tmp_path / name).mkdir()
        write_conv_model(tmp_path / name / "model.onnx", int8=int8)
    (tmp_path / "a" / "input_contract.json").write_text(json.dumps({"precision": "fp32"}))
    (tmp_path / "b" / "input_contract.json").write_text(json.dumps({"precision": "int8"}))
    assert export_precision(tmp_path / "a") == "fp32"
    assert export_precision(tmp_path / "b") == "int8"
    # No contract: QuantizeLinear nodes make it int8.
    assert export_precision(tmp_path / "c") == "int8"

    (tmp_path / "caffe").mkdir()
    exports = find_onnx_exports([tmp_path / "a", tmp_path / "caffe", tmp_path / "b"], ["onnx_a", "caffe", "onnx_b"])
    assert [(export.stage, export.precision) for export in exports] == [("onnx_a", "fp32"), ("onnx_b", "int8")]
    assert first_of(exports, "int8").stage == "onnx_b"


def test_interleaved_timing_covers_every_model(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "fp32.onnx", int8=False)
    write_conv_model(tmp_path / "int8.onnx", int8=True)
    latencies = time_onnx_models({"fp32": tmp_path / "fp32.onnx", "int8": tmp_path / "int8.onnx"}, 1, 1, 1, repeats=7, rounds=3)
    assert set(latencies) == {"fp32", "int8"}
    for latency in latencies.values():
        assert latency.runs == 7
        assert 0 < latency.p10_ms <= latency.median_ms <= latency.p90_ms


def test_rounds_split_the_runs_per_model(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "fp32.onnx", int8=False)
    write_conv_model(tmp_path / "int8.onnx", int8=True)
    rounds = time_onnx_rounds({"fp32": tmp_path / "fp32.onnx", "int8": tmp_path / "int8.onnx"}, 1, 1, 1, repeats=7, rounds=3)
    assert {name: [len(chunk) for chunk in chunks] for name, chunks in rounds.items()} == {"fp32": [3, 2, 2], "int8": [3, 2, 2]}
    assert all(seconds > 0 for chunks in rounds.values() for chunk in chunks for seconds in chunk)


def test_interleaved_timing_names_bad_model(tmp_path: Path, write_conv_model: Callable[..., None]) -> None:
    write_conv_model(tmp_path / "dynamic.onnx", int8=False)
    write_conv_model(tmp_path / "fixed.onnx", int8=False, batch=1)
    with pytest.raises(InputShapeError, match="'fixed': input 'input' has a fixed batch size of 1, not 4"):
        time_onnx_models({"dynamic": tmp_path / "dynamic.onnx", "fixed": tmp_path / "fixed.onnx"}, 4, 1, 1, repeats=2)
