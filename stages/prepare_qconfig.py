"""The ``prepare-qconfig`` stage: decide per fx node what to quantize and how.

Writes the ``qconfig`` artifact, a folder with ``qconfig.json`` (layout in
stages.quant.qconfig): weights int8 per-channel symmetric, activations per
tensor (uint8 asymmetric by default), and the nodes that stay float.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.contract import Input, Output, Stage, StageContext, StageResult
from pipeline.errors import StageError
from stages import MODEL_SOURCES


class PrepareQconfig(Stage):
    kind = "prepare-qconfig"
    version = 2
    sources = ("prepare_qconfig.py", *MODEL_SOURCES)

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return (Input("fp32_model", "fp32_model"),)

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("qconfig", "qconfig"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch",)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import load_meta, load_model, write_json
        from stages.quant.qconfig import QCONFIG_FILE, build_qconfig, describe_scheme, summarize

        fp32 = load_model(ctx.inputs["fp32_model"], ctx.root)
        input_shape = list(load_meta(ctx.inputs["fp32_model"])["input_shape"])
        try:
            qconfig = build_qconfig(fp32, input_shape, dict(ctx.params))
        except ValueError as exc:
            raise StageError(str(exc)) from exc

        write_json(ctx.outputs["qconfig"] / QCONFIG_FILE, qconfig)
        metrics: dict[str, Any] = summarize(qconfig)
        metrics.update(describe_scheme(qconfig))
        activation = qconfig["activation"]
        return StageResult(
            metrics=metrics,
            message=(
                f"{metrics['quantized_nodes']} nodes to quantize ({activation['dtype']} activations, "
                f"{activation['observer']} observer), {metrics['skipped_nodes']} skipped, {metrics['float_nodes']} float; "
                f"the count includes the BatchNorm, ReLU and shape nodes that later fold into their neighbours"
            ),
        )

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        metrics = record.get("metrics") or {}
        if "activation" not in metrics:
            return ""
        activation = metrics["activation"]
        weight = metrics["weight"]
        lines = [
            f"## Quantization config: {name}",
            "",
            f"- target: {metrics.get('target', 'onnxruntime')}",
            f"- activations: {activation['dtype']}, {activation['observer']} observer"
            + (f" (percentile {activation['percentile']})" if "percentile" in activation else ""),
            f"- weights: {weight['dtype']} symmetric, {weight['observer']} observer, "
            + ("per channel" if weight["per_channel"] else "per tensor"),
            f"- nodes: {metrics['quantized_nodes']} quantized, {metrics['skipped_nodes']} skipped, "
            f"{metrics['float_nodes']} float",
            f"- skipped: {', '.join(metrics.get('skipped', [])) or 'none'}",
            f"- float (not quantizable): {_short_list(metrics.get('float', []))}",
        ]
        overrides = metrics.get("overrides", [])
        if overrides:
            lines += ["", "Override rules, applied in order (a later rule wins):", ""]
            for index, rule in enumerate(overrides):
                settings = ", ".join(f"{key}={value}" for key, value in rule.items())
                lines.append(f"{index + 1}. {settings}")
        return "\n".join(lines) + "\n"


def _short_list(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
