"""The ``prepare-qconfig`` stage: decide per fx node what to quantize and how.

Writes the ``qconfig`` artifact, a folder with ``qconfig.json`` (layout in
stages.quant.qconfig): weights int8 per-channel symmetric, activations per
tensor (uint8 asymmetric by default), and the nodes that stay float.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError


class PrepareQconfig(Stage):
    kind = "prepare-qconfig"
    version = 1
    sources = ("prepare_qconfig.py", "quant/")

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("fp32_model", "fp32_model"),)

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("qconfig", "qconfig"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch",)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_meta, load_model, write_json
        from stages.quant.qconfig import QCONFIG_FILE, build_qconfig, summarize

        fp32 = load_model(ctx.inputs["fp32_model"], ctx.root)
        input_shape = list(load_meta(ctx.inputs["fp32_model"])["input_shape"])
        try:
            qconfig = build_qconfig(fp32, input_shape, dict(ctx.params))
        except ValueError as exc:
            raise StageError(f"stage '{ctx.stage_name}': {exc}") from exc

        write_json(ctx.outputs["qconfig"] / QCONFIG_FILE, qconfig)
        metrics = summarize(qconfig)
        activation = qconfig["activation"]
        return StageResult(
            metrics=metrics,
            message=(
                f"{metrics['quantized_nodes']} nodes to quantize ({activation['dtype']} activations, "
                f"{activation['observer']} observer), {metrics['skipped_nodes']} skipped, {metrics['float_nodes']} float"
            ),
        )
