"""onnxruntime CPU sessions, as the exporter checks and the profiler times models.

Imports onnxruntime only, so a timing process starts without torch or onnx.
"""

from __future__ import annotations

import onnxruntime as ort

PROVIDERS = ["CPUExecutionProvider"]
# Optimizers that would change what a float-fallback layer computes.
# NOTE: onnxruntime 1.32's WeightBiasQuantization optimizer quantizes the
# float weights of a Conv that sits between DequantizeLinear and
# QuantizeLinear, so a layer the qconfig keeps in float would run in int8.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def session_options(threads: int | None) -> ort.SessionOptions:
    """Return options with every graph optimization, warnings off, and ``threads`` intra-op threads if given."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options
