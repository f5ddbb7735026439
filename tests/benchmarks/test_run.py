"""`python benchmarks/run.py --quick` end to end, and its table rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.profiling.cpu import describe_cpu

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--json", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["errors"] == {}
    assert report["environment"]["cpu"] == describe_cpu()
    assert report["environment"]["versions"]["onnxruntime"]

    compared = report["results"]["accuracy and speed resnet_int8"]
    assert compared["samples"] == 600
    accuracy = compared["accuracy"]
    assert accuracy["fp32 (PyTorch)"]["top1"] > 95.0
    assert accuracy["ours, int8 ONNX in onnxruntime"]["top1"] > 95.0
    assert accuracy["torch.ao FX (x86 qconfig)"]["top1"] > 90.0
    assert accuracy["onnxruntime quantize_static (best: MinMax)"]["top1"] > 90.0
    for latency in compared["speed_ms"].values():
        assert 0 < latency["p10"] <= latency["median"] <= latency["p90"]

    commands = report["results"]["overhead"]["commands"]
    assert set(commands) == {"python -c 'import torch'", "pipe run (fully cached)", "pipe status"}
    assert all(row["seconds"] > 0 for row in commands.values())

    observers = report["results"]["calibration"]["observers"]
    assert set(observers) == {"minmax", "percentile"}
    assert all(row["ratio"] > 0 for row in observers.values())

    exporters = report["results"]["export resnet_int8"]
    assert exporters["torch.onnx.export (TorchScript)"]["ratio"] == 1.0
    assert exporters["ours, emitter"]["seconds"] > 0


def test_text_tables_show_ratios() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.run import text_lines

    report = {
        "date": "2026-01-01 00:00 UTC",
        "quick": True,
        "environment": {"cpu": "Test CPU (avx512_vnni)", "cores": 2, "load_average_1min": 0.5, "versions": {"torch": "2.14.1"}},
        "results": {
            "overhead": {
                "runs": 3,
                "commands": {
                    "python -c 'import torch'": {"seconds": 2.0, "ratio": 1.0},
                    "pipe status": {"seconds": 0.4, "ratio": 0.2, "target": 0.25, "met": True},
                },
            },
        },
        "errors": {"calibration": "RuntimeError: broken"},
        "seconds": 12.0,
    }
    lines = text_lines(report)
    assert "## pipeline overhead: median of 3 runs" in lines
    assert "CPU: Test CPU (avx512_vnni), 2 cores, load average 0.5; torch 2.14.1" in lines
    assert any(line.startswith("| pipe status") and "0.20x" in line and "met (<= 0.25x)" in line for line in lines)
    assert "FAILED calibration: RuntimeError: broken" in lines
