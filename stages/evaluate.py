"""The ``evaluate`` stage: accuracy gate and per-node error of the int8 model.

Runs ``fp32_model`` and ``int8_model`` over a held-out data set and writes
the ``evaluation`` artifact (``per_node.json`` and ``sqnr.png``). The stage
fails when int8 loses more than ``max_top1_drop`` points of top-1 accuracy
(labelled data) or agrees with fp32 on fewer than ``min_top1_agreement``
percent of samples.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, StageContext, StageResult
from pipeline.errors import StageError, StageFailed
from stages import MODEL_SOURCES
from stages.dataset_stage import DatasetStage

PER_NODE_FILE = "per_node.json"
CHART_FILE = "sqnr.png"


class Evaluate(DatasetStage):
    kind = "evaluate"
    version = 1
    sources = ("evaluate.py", "dataset_stage.py", "evaluation", "data", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("fp32_model", "fp32_model"), Input("int8_model", "int8_model"))

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("evaluation", "evaluation"),)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_model, write_json
        from stages.data import load_dataset
        from stages.evaluation.chart import draw_sqnr_chart
        from stages.evaluation.compare import compare_models
        from stages.evaluation.metrics import comparison_metrics, per_node_document

        data_name = ctx.params["data"]
        dataset = load_dataset(ctx.config["data"], ctx.root, data_name)
        fp32_model = load_model(ctx.inputs["fp32_model"], ctx.root)
        int8_model = load_model(ctx.inputs["int8_model"], ctx.root)

        max_batches = ctx.params.get("max_batches")
        batch_count = dataset.num_batches if max_batches is None else min(dataset.num_batches, max_batches)
        try:
            comparison = compare_models(fp32_model, int8_model, dataset, max_batches, ctx.progress("evaluate", batch_count))
        except (ValueError, TypeError) as exc:
            raise StageError(f"cannot compare the models on data set '{data_name}': {exc}") from exc

        folder = ctx.outputs["evaluation"]
        write_json(folder / PER_NODE_FILE, per_node_document(comparison))
        draw_sqnr_chart(comparison.nodes, folder / CHART_FILE, f"Per-node SQNR of int8 against fp32, data set '{data_name}', {comparison.samples} samples")

        metrics = comparison_metrics(comparison)
        failure = gate_failure(metrics, comparison, ctx.params)
        metrics["passed"] = failure is None
        if failure is not None:
            raise StageFailed(f"accuracy test failed: {failure}", metrics)

        ctx.log.info("evaluate: %d samples of '%s', %d nodes compared", comparison.samples, data_name, len(comparison.nodes))
        return StageResult(
            metrics=metrics,
            publish={f"{ctx.stage_name}_sqnr.png": f"evaluation/{CHART_FILE}"},
            message=f"accuracy test passed: {pass_summary(metrics, ctx.params)}",
        )

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        from stages.evaluation.report import evaluation_section

        return evaluation_section(name, record)


def gate_failure(metrics: Mapping[str, Any], comparison: Any, params: Mapping[str, Any]) -> str | None:
    """Return why the accuracy gate fails, or None when it passes.

    Checks the unrounded drop, so a drop of exactly ``max_top1_drop`` passes.
    """
    from stages.evaluation.metrics import top1_drop

    max_drop = params["max_top1_drop"]
    if comparison.labelled and top1_drop(comparison) > max_drop:
        return (
            f"int8 top-1 {metrics['top1_int8']:.2f}% vs fp32 {metrics['top1_fp32']:.2f}%, "
            f"drop {metrics['top1_drop']:.2f} points > max_top1_drop {max_drop}"
        )

    min_agreement = params.get("min_top1_agreement")
    agreement = comparison.percent(comparison.agree)
    if min_agreement is not None and agreement < min_agreement:
        return f"top-1 agreement {metrics['top1_agreement']:.2f}% < min_top1_agreement {min_agreement}%"
    return None


def pass_summary(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    parts = []
    if "top1_int8" in metrics:
        parts.append(
            f"int8 top-1 {metrics['top1_int8']:.2f}% vs fp32 {metrics['top1_fp32']:.2f}%, "
            f"drop {metrics['top1_drop']:.2f} points <= max_top1_drop {params['max_top1_drop']}"
        )
    parts.append(f"top-1 agreement {metrics['top1_agreement']:.2f}%")
    if metrics.get("sqnr_db") is not None:
        parts.append(f"logits SQNR {metrics['sqnr_db']:.2f} dB")
    return ", ".join(parts)
