"""The ``profile`` stage: size, MACs and latency of the fp32 and int8 models.

Metrics that reproduce on any machine (parameters, MACs, ONNX file sizes) go
to the lock file. Timings and the CPU name go to the run history and the
report. onnxruntime is the int8 engine; the int8 GraphModule's PyTorch time
is reported as a reference for its arithmetic, not as an int8 speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError

PROFILE_FILE = "profile.json"


class Profile(Stage):
    kind = "profile"
    version = 1
    sources = ("profile.py", "profiling")

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (
            Input("fp32_model", "fp32_model"),
            Input("int8_model", "int8_model"),
            Input("exports", "export", many=True),
        )

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("profile", "profile"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch", "onnx", "onnxruntime", "numpy")

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_meta, load_model, write_json
        from stages.profiling.cpu import describe_cpu
        from stages.profiling.exports import find_onnx_exports, first_of
        from stages.profiling.onnx_timing import InputShapeError, profile_onnx_nodes, time_onnx
        from stages.profiling.torch_timing import count_macs, count_parameters, time_torch

        params = ctx.params
        fp32_model = load_model(ctx.inputs["fp32_model"], ctx.root)
        int8_model = load_model(ctx.inputs["int8_model"], ctx.root)
        input_shape = list(load_meta(ctx.inputs["fp32_model"])["input_shape"])
        timed_shape = [params["batch_size"], *input_shape[1:]]

        folders = [Path(folder) for folder in ctx.inputs.get("exports", [])]
        names = list(ctx.input_names.get("exports", [])) or [folder.name for folder in folders]
        exports = find_onnx_exports(folders, names)
        fp32_export = first_of(exports, "fp32")
        int8_export = first_of(exports, "int8")

        metrics: dict[str, Any] = {
            "params_fp32": count_parameters(fp32_model),
            "macs": count_macs(fp32_model, [1, *input_shape[1:]]),
        }
        if fp32_export is not None:
            metrics["size_fp32_bytes"] = fp32_export.size_bytes
        if int8_export is not None:
            metrics["size_int8_bytes"] = int8_export.size_bytes

        steps = 2 + len(exports)
        advance = ctx.progress("profile", steps)
        timing = (params["threads"], params["warmup"], params["repeats"])
        measurements: dict[str, Any] = {"cpu": describe_cpu(), "threads": params["threads"], "batch_size": params["batch_size"]}
        measurements.update(time_torch(fp32_model, timed_shape, *timing).as_measurements("torch_fp32"))
        advance(1)
        measurements.update(time_torch(int8_model, timed_shape, *timing).as_measurements("torch_int8"))
        advance(1)

        per_export: dict[str, Any] = {}
        for export in exports:
            try:
                latency = time_onnx(export.path, params["batch_size"], *timing)
                nodes = profile_onnx_nodes(export.path, params["batch_size"], *timing) if params["top_nodes"] else []
            except InputShapeError as exc:
                raise StageError(f"stage '{ctx.stage_name}': cannot time export '{export.stage}': {exc}") from exc
            per_export[export.stage] = {
                "precision": export.precision,
                **latency.as_measurements("latency"),
                "slowest_nodes": [row.as_dict() for row in nodes[: params["top_nodes"]]],
            }
            if export is fp32_export or export is int8_export:
                measurements.update(latency.as_measurements(f"latency_{export.precision}"))
                measurements[f"slowest_nodes_{export.precision}"] = per_export[export.stage]["slowest_nodes"]
            advance(1)
        if per_export:
            measurements["exports"] = per_export
        if fp32_export is not None and int8_export is not None:
            measurements["speedup"] = round(measurements["latency_fp32_ms"] / measurements["latency_int8_ms"], 3)

        write_json(ctx.outputs["profile"] / PROFILE_FILE, {"format": 1, "metrics": metrics})
        return StageResult(metrics=metrics, measurements=measurements, message=summary(metrics, measurements))

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        from stages.profiling.report import profile_section

        return profile_section(name, record)


def summary(metrics: Mapping[str, Any], measurements: Mapping[str, Any]) -> str:
    """Return one line with MACs, parameters, the CPU and, when both exports were timed, the speed-up."""
    parts = [f"{metrics['macs'] / 1e6:.2f} M MACs", f"{metrics['params_fp32'] / 1e3:.1f} k params"]
    if "speedup" in measurements:
        parts.append(
            f"onnxruntime fp32 {measurements['latency_fp32_ms']:.3f} ms, int8 {measurements['latency_int8_ms']:.3f} ms "
            f"(speed-up {measurements['speedup']:.2f}x)"
        )
    parts.append(f"on {measurements['cpu']}")
    return ", ".join(parts)
