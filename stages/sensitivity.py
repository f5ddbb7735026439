"""The ``sensitivity`` stage: rank layers by how much int8 hurts them and skip the worst.

Placed after prepare-qconfig, it reads ``fp32_model`` and that ``qconfig``
and writes a new ``qconfig`` in which the worst layers are skipped until
the ``budget`` is met (see stages.quant.sensitivity). insert-observers
after it binds to this qconfig, the nearest ancestor that produces one.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES
from stages.dataset_stage import DatasetStage

# Layers listed in the metrics, worst first.
RANKING_IN_METRICS = 10


class Sensitivity(DatasetStage):
    kind = "sensitivity"
    version = 1
    sources = ("sensitivity.py", "dataset_stage.py", "data", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("fp32_model", "fp32_model"), Input("qconfig", "qconfig"))

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("qconfig", "qconfig"),)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_model, read_json, write_json
        from stages.data import load_dataset
        from stages.quant.qconfig import QCONFIG_FILE
        from stages.quant.sensitivity import analyze, candidate_layers

        data_name = ctx.params["data"]
        dataset = load_dataset(ctx.config["data"], ctx.root, data_name)
        batches = [inputs for inputs, _ in dataset.batches(ctx.params["max_batches"])]
        fp32 = load_model(ctx.inputs["fp32_model"], ctx.root)
        qconfig = read_json(ctx.inputs["qconfig"] / QCONFIG_FILE)
        metric = ctx.params["metric"]
        budget = ctx.params["budget"]

        tick = ctx.progress("sensitivity", len(candidate_layers(qconfig, fp32)))
        try:
            new_qconfig, result = analyze(fp32, qconfig, batches, metric, budget, ctx.params["max_skipped"], tick)
        except (ValueError, RuntimeError) as exc:
            raise StageError(f"sensitivity analysis on data set '{data_name}' failed: {exc}") from exc

        write_json(ctx.outputs["qconfig"] / QCONFIG_FILE, new_qconfig)
        unit = "dB" if metric == "sqnr" else "%"
        metrics = {
            "metric": metric,
            "budget": budget,
            "budget_met": result.budget_met,
            "initial_score": _finite(result.initial_score),
            "final_score": _finite(result.final_score),
            "skipped": [
                {"node": item.node, "target": item.target, "op_type": item.op_type, "score_alone": _finite(item.score)}
                for item in result.skipped
            ],
            "ranking": [
                {"node": item.node, "op_type": item.op_type, "score_alone": _finite(item.score)}
                for item in result.ranking[:RANKING_IN_METRICS]
            ],
        }
        skipped_names = ", ".join(item.node for item in result.skipped) or "none"
        state = "met" if result.budget_met else "NOT met"
        message = (
            f"{metric} {result.initial_score:.2f} -> {result.final_score:.2f} {unit}, budget {budget} {state}; "
            f"skipped {len(result.skipped)}: {skipped_names}"
        )
        if not result.budget_met:
            ctx.log.warning("sensitivity: budget %s not met after skipping %d layers", budget, len(result.skipped))
        return StageResult(metrics=metrics, message=message)

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        metrics = record.get("metrics") or {}
        if not metrics:
            return ""
        unit = "dB SQNR" if metrics.get("metric") == "sqnr" else "% top-1 agreement"
        lines = [
            f"## Sensitivity: {name}",
            "",
            f"Whole model: {metrics['initial_score']} -> {metrics['final_score']} {unit}; "
            f"budget {metrics['budget']} {'met' if metrics['budget_met'] else 'not met'}.",
            "",
            "| layer | op | alone | skipped |",
            "|---|---|---|---|",
        ]
        skipped = {item["node"] for item in metrics.get("skipped", [])}
        for item in metrics.get("ranking", []):
            lines.append(f"| {item['node']} | {item['op_type']} | {item['score_alone']} | {'yes' if item['node'] in skipped else ''} |")
        return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    """JSON has no infinity: an exact match (infinite SQNR) is recorded as null."""
    import math

    return round(value, 4) if math.isfinite(value) else None
