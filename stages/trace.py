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
            raise StageError(f"stage '{ctx.stage_name}': {exc}") from exc

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

    Raises StageFailed when the outputs differ beyond ``torch.allclose``'s
    default tolerance, because then the trace does not compute the model.
    """
    import torch
    from torch.utils._pytree import tree_flatten

    generator = torch.Generator().manual_seed(CHECK_SEED)
    example = torch.randn(input_shape, generator=generator)
    with torch.no_grad():
        expected, _ = tree_flatten(model(example))
        actual, _ = tree_flatten(graph_module(example))

    if len(expected) != len(actual):
        raise StageFailed(
            f"stage '{stage_name}': traced model returns {len(actual)} values, the model {len(expected)}",
        )

    max_abs_diff = 0.0
    close = True
    for want, got in zip(expected, actual):
        if not isinstance(want, torch.Tensor):
            close = close and want == got
            continue
        max_abs_diff = max(max_abs_diff, (want.float() - got.float()).abs().max().item())
        close = close and torch.allclose(want, got)

    if not close:
        raise StageFailed(
            f"stage '{stage_name}': traced model differs from the model on a random input "
            f"(max_abs_diff={max_abs_diff:.3g}); the forward likely depends on Python state that tracing froze, "
            f"add that module to leaf_modules",
            {"max_abs_diff": max_abs_diff},
        )
    return max_abs_diff
