"""The ``calibrate`` stage: collect observer statistics on a data set.

Runs the ``data`` set (at most ``max_batches`` batches) through
``observed_model`` and writes the ``calibration`` artifact:
``calibration.pt`` (observer statistics) and ``calibration.json`` (per fp32
value: min, max, clip range, scale and zero point).
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES
from stages.dataset_stage import DatasetStage


class Calibrate(DatasetStage):
    kind = "calibrate"
    version = 1
    sources = ("calibrate.py", "dataset_stage.py", "data", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("observed_model", "observed_model"),)

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("calibration", "calibration"),)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_model, write_json
        from stages.data import load_dataset
        from stages.quant.calibration import TABLE_FILE, calibrate, calibration_table, collect_stats, save_stats

        data_name = ctx.params["data"]
        dataset = load_dataset(ctx.config["data"], ctx.root, data_name)
        observed = load_model(ctx.inputs["observed_model"], ctx.root)
        max_batches = ctx.params.get("max_batches")
        batch_count = dataset.num_batches if max_batches is None else min(dataset.num_batches, max_batches)

        tick = ctx.progress("calibrate", batch_count)
        inputs = (batch for batch, _ in dataset.batches(max_batches))
        try:
            summary = calibrate(observed, inputs, max_batches, tick)
            table = calibration_table(observed)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise StageError(f"calibration on data set '{data_name}' failed: {exc}") from exc

        folder = ctx.outputs["calibration"]
        save_stats(collect_stats(observed), folder)
        write_json(folder / TABLE_FILE, table)
        ctx.log.info("calibrate: %d batches of '%s' through %d observers", summary.batches, data_name, summary.observers)
        return StageResult(
            metrics={"batches": summary.batches, "samples": summary.samples, "observers": summary.observers},
            message=f"calibrated {summary.observers} observers on {summary.samples} samples of '{data_name}'",
        )
