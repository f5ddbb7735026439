"""The ``profile`` stage: size, MACs, latency and peak memory of the fp32 and int8 models.

Metrics that reproduce on any machine (parameters, MACs, serialized sizes of
the PyTorch artifacts and the ONNX files) go to the lock file. Timings, peak
memory, the CPU and its int8 instructions go to the run history and the
report. onnxruntime is the int8 engine; the int8 GraphModule's PyTorch time
is reported as a reference for its arithmetic, not as an int8 speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES

PROFILE_FILE = "profile.json"
# Runs per model while measuring peak memory: the first allocates the
# activations, the second shows whether a run keeps more than the first.
MEMORY_RUNS = 2


class Profile(Stage):
    kind = "profile"
    version = 2
    sources = ("profile.py", "profiling", "onnx", *MODEL_SOURCES)

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
        from stages.artifacts import MODEL_FILE, load_meta, load_model, write_json
        from stages.profiling.contention import CpuWatch
        from stages.profiling.cpu import describe_cpu, runtime_versions
        from stages.profiling.exports import find_onnx_exports, first_of
        from stages.profiling.memory import METHOD, measure_peaks
        from stages.profiling.onnx_timing import InputShapeError, profile_onnx_nodes, time_onnx_models
        from stages.profiling.torch_timing import count_macs, count_parameters, time_torch

        params = ctx.params
        model_dirs = {precision: Path(ctx.inputs[f"{precision}_model"]) for precision in ("fp32", "int8")}
        models = {precision: load_model(folder, ctx.root) for precision, folder in model_dirs.items()}
        input_shape = list(load_meta(model_dirs["fp32"])["input_shape"])
        timed_shape = [params["batch_size"], *input_shape[1:]]

        folders = [Path(folder) for folder in ctx.inputs.get("exports", [])]
        names = list(ctx.input_names.get("exports", [])) or [folder.name for folder in folders]
        exports = find_onnx_exports(folders, names)
        compared = {precision: first_of(exports, precision) for precision in ("fp32", "int8")}

        metrics: dict[str, Any] = {}
        for precision, model in models.items():
            metrics[f"params_{precision}"] = count_parameters(model)
            metrics[f"macs_{precision}"] = count_macs(model, [1, *input_shape[1:]])
            metrics[f"torch_size_{precision}_bytes"] = (model_dirs[precision] / MODEL_FILE).stat().st_size
        metrics["macs"] = metrics["macs_fp32"]
        for precision, export in compared.items():
            if export is not None:
                metrics[f"size_{precision}_bytes"] = export.size_bytes
        if compared["fp32"] is not None and compared["int8"] is not None:
            metrics["size_reduction"] = round(metrics["size_fp32_bytes"] / metrics["size_int8_bytes"], 3)

        advance = ctx.progress("profile", 2 + len(exports) + (1 if params["memory"] else 0))
        timing = (params["threads"], params["warmup"], params["repeats"])
        measurements: dict[str, Any] = {
            "cpu": describe_cpu(),
            "threads": params["threads"],
            "batch_size": params["batch_size"],
            "repeats": params["repeats"],
            **runtime_versions(),
        }
        watch = CpuWatch()
        watch.start()
        for precision, model in models.items():
            measurements.update(time_torch(model, timed_shape, *timing).as_measurements(f"torch_{precision}"))
            advance(1)

        per_export: dict[str, Any] = {}
        try:
            latencies = time_onnx_models({export.stage: export.path for export in exports}, params["batch_size"], *timing)
        except InputShapeError as exc:
            raise StageError(f"cannot time export {exc}") from exc
        for export in exports:
            latency = latencies[export.stage]
            nodes = profile_onnx_nodes(export.path, params["batch_size"], *timing) if params["top_nodes"] else []
            per_export[export.stage] = {
                "precision": export.precision,
                **latency.as_measurements("latency"),
                "slowest_nodes": [row.as_dict() for row in nodes[: params["top_nodes"]]],
            }
            if export is compared[export.precision]:
                measurements.update(latency.as_measurements(f"latency_{export.precision}"))
                measurements[f"slowest_nodes_{export.precision}"] = per_export[export.stage]["slowest_nodes"]
            advance(1)
        if per_export:
            measurements["exports"] = per_export
        others_percent = watch.others_percent()
        if others_percent is not None:
            measurements["others_cpu_percent"] = others_percent
        if compared["fp32"] is not None and compared["int8"] is not None:
            measurements["speedup"] = round(measurements["latency_fp32_ms"] / measurements["latency_int8_ms"], 3)

        if params["memory"]:
            targets = {f"torch_{precision}": ("torch", folder / MODEL_FILE) for precision, folder in model_dirs.items()}
            targets.update({f"onnx_{precision}": ("onnxruntime", export.path) for precision, export in compared.items() if export is not None})
            peaks = measure_peaks(targets, timed_shape, params["threads"], MEMORY_RUNS, ctx.root)
            for prefix, peak in peaks.items():
                measurements.update(peak.as_measurements(prefix))
            measurements["memory_method"] = METHOD
            advance(1)

        write_json(ctx.outputs["profile"] / PROFILE_FILE, {"format": 1, "metrics": metrics})
        return StageResult(metrics=metrics, measurements=measurements, message=summary(metrics, measurements))

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        from stages.profiling.report import profile_section

        return profile_section(name, record)


def summary(metrics: Mapping[str, Any], measurements: Mapping[str, Any]) -> str:
    """Return one line with MACs, parameters, the size reduction, the speed-up and the CPU."""
    parts = [f"{metrics['macs'] / 1e6:.2f} M MACs", f"{metrics['params_fp32'] / 1e3:.1f} k params"]
    if "size_reduction" in metrics:
        parts.append(f"int8 ONNX {metrics['size_reduction']:.2f}x smaller")
    if "speedup" in measurements:
        parts.append(
            f"onnxruntime fp32 {measurements['latency_fp32_ms']:.3f} ms, int8 {measurements['latency_int8_ms']:.3f} ms "
            f"(speed-up {measurements['speedup']:.2f}x)"
        )
    parts.append(f"on {measurements['cpu']}")
    return ", ".join(parts)
