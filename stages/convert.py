"""The ``convert`` stage: build the int8 GraphModule.

Loads the ``calibration`` statistics into ``observed_model``'s observers and
rewrites the graph into int8 modules (stages.quant.modules) with static
qparams. The per-node settings of the qconfig travel inside
``observed_model`` (its ``quant_plan`` attribute). Writes ``int8_model``, a
GraphModule that takes and returns float and carries ``value_names`` and
``qparams``.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES


class Convert(Stage):
    kind = "convert"
    version = 1
    sources = ("convert.py", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("observed_model", "observed_model"), Input("calibration", "calibration"))

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("int8_model", "int8_model"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch",)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_meta, load_model, save_model
        from stages.quant.calibration import load_stats
        from stages.quant.convert import convert, load_calibration

        observed = load_model(ctx.inputs["observed_model"], ctx.root)
        meta = load_meta(ctx.inputs["observed_model"])
        try:
            load_calibration(observed, load_stats(ctx.inputs["calibration"]))
            int8_model, summary = convert(observed)
        except ValueError as exc:
            raise StageError(str(exc)) from exc

        save_model(int8_model, ctx.outputs["int8_model"], meta={"input_shape": meta["input_shape"]})
        return StageResult(
            metrics={
                "quantized_nodes": summary.quantized_nodes,
                "float_nodes": summary.float_nodes,
                "quantize_nodes": summary.quantize_nodes,
                "dequantize_nodes": summary.dequantize_nodes,
            },
            message=(
                f"{summary.quantized_nodes} int8 nodes, {summary.float_nodes} float nodes, "
                f"{summary.quantize_nodes} Quantize, {summary.dequantize_nodes} Dequantize"
            ),
        )
