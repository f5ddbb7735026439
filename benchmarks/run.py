"""Benchmark `pipe` against its peers and print one table per section.

    python benchmarks/run.py            # every section, about 2.5 minutes on 2 cores (first run)
    python benchmarks/run.py --quick    # the digits ResNet, fewer repeats; calibration cost on one mobilenet_v2 batch
    python benchmarks/run.py --json     # one JSON object on stdout

Sections:

- accuracy and speed of our int8 model against torch.ao FX and onnxruntime
  quantize_static, on the digits ResNet and (unless --quick) on mobilenet_v2
  with ImageNet weights;
- the overhead of a fully cached `pipe run` and of `pipe status` against
  ``import torch``;
- calibration cost per observer on mobilenet_v2 at batch 32;
- export time against torch.onnx.export.

Every section prints the CPU and package versions. The example pipelines
run in copies under --work-dir, whose caches persist between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import table  # noqa: E402
from benchmarks.environment import environment, environment_line  # noqa: E402

log = logging.getLogger("benchmarks")

DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "brocolli-benchmarks"
DIGITS = "resnet_int8"
MOBILENET = "mobilenet_v2_int8"
PARTIAL_FILE = "partial-results.json"


def _section(results: dict[str, Any], errors: dict[str, str], name: str, function: Callable[[], Any]) -> None:
    """Run one section; a failure is recorded and the other sections still run."""
    started = time.perf_counter()
    log.info("benchmark section %s: started", name)
    try:
        results[name] = function()
    except Exception as exc:  # one broken section must not hide the others' numbers
        errors[name] = f"{type(exc).__name__}: {exc}"
        log.error("benchmark section %s failed: %s\n%s", name, errors[name], traceback.format_exc())
    log.info("benchmark section %s: %.1f s", name, time.perf_counter() - started)


def run_benchmarks(work_dir: Path, quick: bool) -> dict[str, Any]:
    """Run every section and return their results, the environment, errors and the total time."""
    from benchmarks.calibration_cost import calibration_cost
    from benchmarks.compare import compare_example
    from benchmarks.export_time import export_time
    from benchmarks.overhead import pipeline_overhead
    from benchmarks.workspace import copy_example, run_example
    from pipeline.config import load

    started = time.perf_counter()
    examples = (DIGITS,) if quick else (DIGITS, MOBILENET)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    runs: dict[str, Any] = {}
    partial = work_dir / PARTIAL_FILE

    def section(target: dict[str, Any], name: str, function: Callable[[], Any]) -> None:
        _section(target, errors, name, function)
        # Results so far, for a run that is stopped before it prints its tables.
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"results": results, "errors": errors}, indent=2) + "\n")

    for name in examples:
        section(runs, f"pipeline {name}", lambda name=name: run_example(name, work_dir))
    for name in examples:
        if f"pipeline {name}" in runs:
            section(results, f"accuracy and speed {name}", lambda name=name: compare_example(runs[f"pipeline {name}"], work_dir, quick))
    if f"pipeline {DIGITS}" in runs:
        section(results, "overhead", lambda: pipeline_overhead(runs[f"pipeline {DIGITS}"].path, 3 if quick else 5))

    def calibration() -> dict[str, Any]:
        path = copy_example(MOBILENET, work_dir)
        document = load(path).document
        calib = next(stage.params["data"] for stage in load(path).stages if stage.kind == "calibrate")
        return calibration_cost(document["model"], document["data"][calib], path.parent, quick)

    section(results, "calibration", calibration)
    for name in examples:
        if f"pipeline {name}" in runs:
            section(results, f"export {name}", lambda name=name: export_time(runs[f"pipeline {name}"], 1 if quick else 3))

    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "quick": quick,
        "environment": environment(),
        "results": results,
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 1),
    }


def text_lines(report: dict[str, Any]) -> list[str]:
    """Render the results as one table per section, each headed by the CPU and package versions."""
    env_line = environment_line(report["environment"])
    results = report["results"]
    blocks: list[list[str]] = []
    for name in (DIGITS, MOBILENET):
        if f"accuracy and speed {name}" in results:
            data = results[f"accuracy and speed {name}"]
            blocks.append(table.accuracy_lines(name, data))
            blocks.append(table.speed_lines(name, data))
    if "overhead" in results:
        blocks.append(table.overhead_lines(results["overhead"]))
    if "calibration" in results:
        blocks.append(table.calibration_lines(results["calibration"]))
    for name in (DIGITS, MOBILENET):
        if f"export {name}" in results:
            blocks.append(table.export_lines(name, results[f"export {name}"]))

    lines = [f"brocolli pipe benchmarks, {report['date']}{' (--quick)' if report['quick'] else ''}", ""]
    for block in blocks:
        lines += [f"## {block[0]}", env_line, *block[1:], ""]
    for section, error in report["errors"].items():
        lines.append(f"FAILED {section}: {error}")
    lines.append(f"total: {report['seconds']:.0f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark pipe's int8 pipeline against torch.ao FX and onnxruntime quantize_static.")
    parser.add_argument("--quick", action="store_true", help="digits ResNet only, fewer repeats, one onnxruntime calibration method; calibration cost on one mobilenet_v2 batch with the minmax and percentile observers")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help=f"folder for the example copies and their caches (default: {DEFAULT_WORK_DIR})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    report = run_benchmarks(args.work_dir.resolve(), args.quick)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(text_lines(report)))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
