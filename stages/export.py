"""The ``export`` stage: write the model in a deployable format and check parity.

``format: onnx`` runs our fx-to-ONNX emitter and compares onnxruntime with
the PyTorch model (the fp32 model for ``precision: fp32``, the int8 model
for ``precision: int8``). ``format: caffe`` runs our fx-to-Caffe emitter on
the fp32 model, compares pycaffe (in a subprocess) with PyTorch, and writes a
calibration table for int8 deployment when a calibrate stage is among the
stage's ancestors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES


class Export(Stage):
    kind = "export"
    version = 1
    sources = ("export.py", "fx_emit.py", "onnx", "caffe", "data", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        if params.get("format") == "caffe":
            return (Input("model", "fp32_model"), Input("calibration", "calibration", optional=True))
        artifact = "int8_model" if params.get("precision") == "int8" else "fp32_model"
        return (Input("model", artifact),)

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("export", "export"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        if params.get("format") == "caffe":
            return ("torch", "brocolli-caffe", "protobuf")
        return ("torch", "onnx", "onnxruntime")

    def config(self, params: Mapping[str, Any], pipeline: Mapping[str, Any]) -> dict[str, Any]:
        if params.get("data"):
            return {"data": pipeline["data"][params["data"]]}
        return {}

    def files(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[Path]:
        if not params.get("data"):
            return []
        from stages.data.loader import dataset_files

        return dataset_files(pipeline["data"][params["data"]], root, params["data"])

    def run(self, ctx: StageContext) -> StageResult:
        params = ctx.params
        if params["format"] == "caffe":
            return _run_caffe(ctx)

        from stages.onnx.exporter import CONTRACT_FILE, MODEL_FILE, ExportRequest, export_onnx

        file_name = params.get("file_name") or ctx.stage_name
        published = ctx.output_dir / f"{file_name}.onnx"
        request = ExportRequest(
            stage_name=ctx.stage_name,
            model_dir=Path(ctx.inputs["model"]),
            output_dir=ctx.outputs["export"],
            root=ctx.root,
            precision=params["precision"],
            opset=params["opset"],
            dynamic_batch=params["dynamic_batch"],
            samples=params["samples"],
            max_rel_diff=params["max_rel_diff"],
            min_within_one_step_pct=params["min_within_one_step_pct"],
            published_path=Path(os.path.relpath(published, ctx.root)).as_posix(),
            dataset_name=params.get("data"),
            dataset_spec=ctx.config.get("data"),
        )
        metrics, message = export_onnx(request)
        publish = {
            f"{file_name}.onnx": f"export/{MODEL_FILE}",
            f"{file_name}.json": f"export/{CONTRACT_FILE}",
        }
        if metrics.get("external_data"):
            # The model names its data file by the published name, so both keep it.
            publish[metrics["external_data"]] = f"export/{metrics['external_data']}"
        return StageResult(metrics=metrics, publish=publish, message=message)

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        """Return the export's parity result and links to its files in the output folder."""
        metrics = record.get("metrics", {})
        if not metrics:
            return ""
        if metrics.get("format") == "caffe":
            from stages.caffe.report import report_section

            section = report_section(name, metrics)
        else:
            section = _onnx_section(name, metrics)
        published = record.get("published") or []
        if published:
            section += "\nFiles: " + ", ".join(f"[{file}]({file})" for file in published) + ".\n"
        return section


def model_link(metrics: Mapping[str, Any]) -> str:
    """Return a Markdown link to the exported model, relative to report.md in the output folder."""
    if "path" not in metrics:
        return "`?`"
    name = Path(metrics["path"]).name
    return f"[`{name}`]({name})"


def parity_sentence(runtime: str, metrics: Mapping[str, Any]) -> str:
    """Return the parity verdict against PyTorch in ``runtime``, with the largest differences, as one sentence."""
    verdict = "passed" if metrics.get("passed") else "failed"
    return (
        f"Parity with PyTorch in {runtime} {verdict} on {metrics.get('samples', 0)} samples: "
        f"max abs diff {metrics.get('max_abs_diff', float('nan')):.3g}, "
        f"max rel diff {metrics.get('max_rel_diff', float('nan')):.3g}."
    )


def _onnx_section(name: str, metrics: Mapping[str, Any]) -> str:
    """Return the ONNX model's file and its onnxruntime parity result as Markdown."""
    lines = [
        f"## Export: {name}",
        "",
        f"{metrics.get('precision', '?')} {metrics.get('format', 'onnx')} model {model_link(metrics)} "
        f"(opset {metrics.get('opset', '?')}). " + parity_sentence("onnxruntime", metrics),
    ]
    if "within_one_step_pct" in metrics:
        lines.append(
            f"Outputs within one quantization step of the PyTorch int8 model: {metrics['within_one_step_pct']:.2f}%; "
            f"int8 kernels: {metrics.get('int8_kernels', '?')}; "
            f"float ops left in onnxruntime's optimized graph: {op_counts(metrics.get('float_ops'))}."
        )
    return "\n".join(lines) + "\n"


def op_counts(ops: Mapping[str, int] | None) -> str:
    """Return op types with their counts as ``Erf 1, LayerNormalization 2``, "none" for none, "?" when unknown."""
    if ops is None:
        return "?"
    return ", ".join(f"{op_type} {number}" for op_type, number in ops.items()) or "none"


def _run_caffe(ctx: StageContext) -> StageResult:
    """Export the fp32 model to Caffe; see stages/caffe/exporter.py."""
    params = ctx.params
    if params["precision"] != "fp32":
        raise StageError(
            f"format caffe exports the fp32 model (precision: {params['precision']} given); "
            f"set precision: fp32 and place the stage after calibrate for an int8 calibration table"
        )
    from stages.caffe.exporter import CALIBRATION_FILE, CONTRACT_FILE, MODEL_FILE, PROTOTXT_FILE, CaffeExportRequest, export_caffe

    file_name = params.get("file_name") or ctx.stage_name
    published = ctx.output_dir / f"{file_name}.caffemodel"
    calibration = ctx.inputs.get("calibration")
    request = CaffeExportRequest(
        stage_name=ctx.stage_name,
        model_dir=Path(ctx.inputs["model"]),
        output_dir=ctx.outputs["export"],
        root=ctx.root,
        samples=params["samples"],
        max_rel_diff=params["max_rel_diff"],
        fold_batchnorm=params["fold_batchnorm"],
        published_path=Path(os.path.relpath(published, ctx.root)).as_posix(),
        dataset_name=params.get("data"),
        dataset_spec=ctx.config.get("data"),
        calibration_dir=Path(calibration) if calibration else None,
    )
    metrics, message = export_caffe(request)
    publish = {
        f"{file_name}.prototxt": f"export/{PROTOTXT_FILE}",
        f"{file_name}.caffemodel": f"export/{MODEL_FILE}",
        f"{file_name}.json": f"export/{CONTRACT_FILE}",
    }
    if calibration:
        publish[f"{file_name}.calibration.json"] = f"export/{CALIBRATION_FILE}"
    return StageResult(metrics=metrics, publish=publish, message=message)
