"""The Caffe calibration table: activation qparams per blob and weight scales per layer.

An int8 Caffe toolchain reads it next to the fp32 ``.prototxt`` and
``.caffemodel``::

    {"format": "brocolli-caffe-calibration", "version": 1,
     "activations": {<blob>: {"scale": s, "zero_point": z, "dtype": "uint8"}},
     "weights": {<layer>: {"scales": [per output channel], "axis": 0}}}

Activation qparams are those the calibrate stage computed with the quant
library (``calibration.json`` of the calibration artifact), keyed by the fp32
fx node names whose values they describe; each lands on the blob that stores
that value. Weight scales are the quant library's symmetric per-channel int8
scales of the exported weights (after BatchNorm folding, as convert computes
them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stages.artifacts import read_json
from stages.caffe.emitter import CaffeGraph
from stages.quant.arithmetic import weight_scales
from stages.quant.calibration import TABLE_FILE

TABLE_FORMAT = "brocolli-caffe-calibration"
TABLE_VERSION = 1
WEIGHTED_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


def fp32_blobs(graph: CaffeGraph) -> dict[str, str]:
    """Map each fp32 fx node name to the blob holding its value."""
    mapping: dict[str, str] = {}
    for node_name, blob in graph.values.items():
        mapping.setdefault(graph.blob_names.get(node_name, node_name), blob)
    return mapping


def build_table(graph: CaffeGraph, calibration_dir: Path) -> dict[str, Any]:
    """Return the calibration table of the emitted net from a calibration artifact."""
    values = read_json(calibration_dir / TABLE_FILE)["values"]
    blobs = fp32_blobs(graph)

    activations: dict[str, Any] = {}
    for value_name in sorted(values):
        blob = blobs.get(value_name)
        if blob is None or blob in activations:
            continue
        entry = values[value_name]
        activations[blob] = {"scale": float(entry["scale"]), "zero_point": int(entry["zero_point"]), "dtype": str(entry["dtype"])}

    modules = dict(graph.graph_module.named_modules())
    nodes = {node.name: node for node in graph.graph_module.graph.nodes}
    weights: dict[str, Any] = {}
    for layer in graph.net.layer:
        if layer.type not in WEIGHTED_LAYERS or layer.name not in nodes:
            continue
        weight = modules[str(nodes[layer.name].target)].weight.detach()
        # Deconvolution weights are (in, out / groups, kh, kw): output channels sit on axis 1.
        axis = 1 if layer.type == "Deconvolution" else 0
        per_channel = weight.transpose(0, 1) if axis == 1 else weight
        scales = weight_scales(per_channel.contiguous(), per_channel=True)
        weights[layer.name] = {"scales": [float(scale) for scale in scales.to(torch.float64)], "axis": axis}

    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "activations": activations, "weights": weights}
