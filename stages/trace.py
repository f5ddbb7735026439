"""The ``trace`` stage: build the model and trace it into ``fp32_model``.

The traced GraphModule is checked against the original model on a random
example input of the model's ``input_shape``; a mismatch fails the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.contract import Output, Stage, StageContext, StageResult
from pipeline.errors import StageError, StageFailed
from stages import MODEL_SOURCES

# Seed of the random example input that checks the trace.
CHECK_SEED = 0
# Seed of the model's random initialization.
INIT_SEED = 0
# Largest difference between the traced and the original model's outputs,
# relative to the output's largest magnitude, that counts as float rounding.
TRACE_MAX_REL_DIFF = 1e-5
# Absolute slack for outputs that are all (nearly) zero.
TRACE_MIN_ABS_DIFF = 1e-8


class Trace(Stage):
    kind = "trace"
    version = 1
    sources = ("trace.py", *MODEL_SOURCES)

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return (Output("fp32_model", "fp32_model"),)

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("torch", "torchvision")

    def config(self, params: Mapping[str, Any], pipeline: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": pipeline["model"]}

    def files(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[Path]:
        from stages.tracing.source import model_source_file

        model_spec = pipeline["model"]
        files: list[Path] = []
        if model_spec.get("checkpoint"):
            files.append(root / model_spec["checkpoint"])
        source_file = model_source_file(model_spec["source"], root)
        if source_file is not None:
            files.append(source_file)
        return files

    def problems(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[tuple[tuple[Any, ...], str]]:
        from stages.tracing.source import source_problems

        return source_problems(pipeline["model"], root)

    def run(self, ctx: StageContext) -> StageResult:
        from stages.artifacts import save_model
        from stages.tracing.source import build_model
        from stages.tracing.tracer import TraceFailure, trace_model

        import torch

        model_spec = ctx.config["model"]
        input_shape = list(model_spec["input_shape"])
        # Weights a checkpoint does not cover come from the model's random
        # initialization: seed it, so that the artifact's digest reproduces.
        torch.manual_seed(INIT_SEED)
        model = build_model(model_spec, ctx.root)

        try:
            graph_module = trace_model(model, ctx.params["leaf_modules"], ctx.params["concrete_args"], input_shape)
        except TraceFailure as exc:
            raise StageError(str(exc)) from exc

        max_abs_diff = _compare_outputs(model, graph_module, input_shape, ctx.stage_name)
        node_count = len(graph_module.graph.nodes)
        meta = {"input_shape": input_shape, "source": model_spec["source"]}
        save_model(graph_module, ctx.outputs["fp32_model"], meta=meta)
        return StageResult(
            metrics={"nodes": node_count, "max_abs_diff": max_abs_diff},
            message=f"traced {type(model).__name__}: {node_count} nodes, max_abs_diff={max_abs_diff:.3g}",
        )


def _compare_outputs(model: Any, graph_module: Any, input_shape: list[int], stage_name: str) -> float:
    """Run both models on one random input and return the max abs difference.

    Raises StageFailed when an output's max abs difference exceeds
    TRACE_MAX_REL_DIFF times its largest magnitude, because then the trace
    does not compute the model. Differences within that bound are float
    rounding: the attention inliners reorder a few products.
    """
    import torch
    from torch.utils._pytree import tree_flatten

    generator = torch.Generator().manual_seed(CHECK_SEED)
    example = torch.randn(input_shape, generator=generator)
    with torch.no_grad():
        try:
            expected, _ = tree_flatten(model(example))
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StageError(
                f"the model failed on a random input of model.input_shape {input_shape}: {reason}; "
                f"set model.input_shape to the shape the model takes, batch first"
            ) from exc
        actual, _ = tree_flatten(graph_module(example))

    if len(expected) != len(actual):
        raise StageFailed(f"traced model returns {len(actual)} values, the model {len(expected)}")

    max_abs_diff = 0.0
    close = True
    for want, got in zip(expected, actual):
        if not isinstance(want, torch.Tensor):
            close = close and want == got
            continue
        difference = (want.float() - got.float()).abs().max().item() if want.numel() else 0.0
        max_abs_diff = max(max_abs_diff, difference)
        magnitude = want.float().abs().max().item() if want.numel() else 0.0
        close = close and difference <= TRACE_MAX_REL_DIFF * magnitude + TRACE_MIN_ABS_DIFF

    if not close:
        raise StageFailed(
            f"traced model differs from the model on a random input (max_abs_diff={max_abs_diff:.3g}); "
            f"the forward of some module likely reads Python state (a flag, a counter, a tensor's value) "
            f"that tracing froze: list that module in this stage's leaf_modules param",
            {"max_abs_diff": max_abs_diff},
        )
    return max_abs_diff
