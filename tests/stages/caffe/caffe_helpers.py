"""Helpers of the Caffe export tests: skip without Caffe, export a module and run it in pycaffe."""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stages.caffe.emitter import CaffeGraph, build_net, output_blobs
from stages.caffe.exporter import write_net
from stages.caffe.parity import find_divergence, record_fx_values, relative, run_caffe, subprocess_env
from stages.quant.fold import fold_batchnorm
from stages.tracing.tracer import trace_model


@functools.cache
def caffe_import_error() -> str | None:
    """Return why `import caffe` fails in a fresh interpreter, or None when it works."""
    result = subprocess.run(
        [sys.executable, "-c", "import caffe"], cwd="/", env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
    return lines[-1]


requires_caffe = pytest.mark.skipif(
    caffe_import_error() is not None,
    reason=f"Caffe is not importable ({caffe_import_error()}); install it with scripts/install_caffe.sh",
)


@dataclass
class CaffeRun:
    """A module exported to Caffe and run in pycaffe on one batch."""

    graph: CaffeGraph
    prototxt: Path
    caffemodel: Path
    blobs: dict[str, np.ndarray]
    torch_outputs: list[np.ndarray]
    fx_values: dict[str, np.ndarray]

    @property
    def outputs(self) -> list[np.ndarray]:
        return [self.blobs[name] for name in output_blobs(self.graph)]

    def max_rel_diff(self) -> float:
        diffs = [float(np.abs(got.astype(np.float64) - want).max()) for got, want in zip(self.outputs, self.torch_outputs)]
        reference = max(float(np.abs(want).max()) for want in self.torch_outputs)
        return relative(max(diffs), reference)

    def layer_types(self) -> list[str]:
        return [layer.type for layer in self.graph.net.layer]

    def first_divergence(self, max_rel_diff: float = 1e-4):
        return find_divergence(
            self.blobs, self.fx_values, self.graph.values, self.graph.producers,
            [layer.name for layer in self.graph.net.layer], max_rel_diff,
        )


def export_and_run(
    module: nn.Module | torch.fx.GraphModule, inputs: torch.Tensor, folder: Path, fold: bool = False
) -> CaffeRun:
    """Trace (unless already a GraphModule), emit, write and run ``module`` on ``inputs`` in pycaffe.

    ``fold`` folds BatchNorm into convolutions first, as the export stage does by default.
    """
    graph_module = module if isinstance(module, torch.fx.GraphModule) else trace_model(module.eval())
    blob_names: dict[str, str] = {}
    if fold:
        graph_module, blob_names = fold_batchnorm(graph_module)
    graph = build_net(graph_module, inputs, blob_names=blob_names)
    folder.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel = write_net(graph, folder)
    batch = inputs.numpy()
    blobs = run_caffe(prototxt, caffemodel, batch, all_blobs=True)
    with torch.no_grad():
        result = graph_module(inputs)
    results = result if isinstance(result, (list, tuple)) else [result]
    torch_outputs = [value.numpy().astype(np.float64) for value in results]
    return CaffeRun(graph, prototxt, caffemodel, blobs, torch_outputs, record_fx_values(graph_module, batch))


def reestimate_batchnorm(model: nn.Module, input_shape: tuple[int, ...], batches: int = 1) -> None:
    """Replace BatchNorm running statistics by their averages over seeded random inputs.

    Random weights with the default statistics (mean 0, variance 1) make deep
    nets' activations grow or vanish layer by layer. Statistics of the actual
    activations keep them near unit scale, as in a trained model.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(input_shape, generator=generator))
    model.eval()
