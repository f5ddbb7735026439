"""The ``insert-observers`` stage: fold BatchNorm, fuse ReLU, insert observers.

Reads ``fp32_model`` and ``qconfig`` and writes ``observed_model``, a
GraphModule with one observer module per quantized value (see
stages.quant.observe) and the ``value_names`` and ``quant_plan`` attributes.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES


class InsertObservers(Stage):
    kind = "insert-observers"
    version = 1
    sources = ("insert_observers.py", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("fp32_model", "fp32_model"), Input("qconfig", "qconfig"))

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("observed_model", "observed_model"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch",)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_meta, load_model, read_json, save_model
        from stages.quant.observe import insert_observers
        from stages.quant.qconfig import QCONFIG_FILE

        fp32 = load_model(ctx.inputs["fp32_model"], ctx.root)
        meta = load_meta(ctx.inputs["fp32_model"])
        qconfig = read_json(ctx.inputs["qconfig"] / QCONFIG_FILE)
        try:
            observed, summary = insert_observers(fp32, qconfig)
        except ValueError as exc:
            raise StageError(str(exc)) from exc

        save_model(observed, ctx.outputs["observed_model"], meta={"input_shape": meta["input_shape"]})
        return StageResult(
            metrics={
                "observers": summary.observers,
                "folded_batchnorms": summary.folded_batchnorms,
                "fused_relus": summary.fused_relus,
                "quantized_nodes": summary.quantized_nodes,
            },
            message=(
                f"{summary.observers} observers, {summary.folded_batchnorms} BatchNorm folded, "
                f"{summary.fused_relus} ReLU fused"
            ),
        )
