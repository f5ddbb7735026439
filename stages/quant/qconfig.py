"""The qconfig: per fx node, whether and how to quantize it.

``qconfig.json`` layout (format version 1)::

    {
      "format_version": 1,
      "activation": {"observer": "minmax", "dtype": "uint8", "percentile": 99.99},
      "weight": {"observer": "minmax", "dtype": "int8", "per_channel": true},
      "skip": ["layer1.0.conv1"],
      "nodes": {
        "<fp32 fx node name>": {
          "op": "call_module", "target": "layer1.0.conv1", "op_type": "Conv2d",
          "pattern": "conv", "quantize": true,
          "activation": {...}, "weight": {...}     (quantized nodes)
          "skipped": true                         (nodes named in skip)
        }
      }
    }

``pattern`` is one of stages.quant.patterns; ``quantize`` is false for float
patterns and skipped nodes. A later stage may edit per-node settings.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from stages.quant.observers import OBSERVERS
from stages.quant.patterns import classify, op_type

FORMAT_VERSION = 1
QCONFIG_FILE = "qconfig.json"

_WEIGHTED = frozenset({"conv", "linear"})
_NOT_QUANTIZED = frozenset({"float", "output"})


def propagate_shapes(gm: fx.GraphModule, input_shape: list[int]) -> None:
    """Record ``tensor_meta`` on every node by running a random input of ``input_shape``."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(*input_shape, generator=generator)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def build_qconfig(gm: fx.GraphModule, input_shape: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Build the qconfig of an fp32 GraphModule from the prepare-qconfig params.

    Raises ValueError when ``skip`` names neither a node nor a called module.
    """
    activation = {"observer": params["activation_observer"], "dtype": params["activation_dtype"]}
    if params["activation_observer"] == "percentile":
        activation["percentile"] = float(params["percentile"])
    if activation["observer"] not in OBSERVERS:
        raise ValueError(f"unknown activation observer {activation['observer']!r}: expected one of {sorted(OBSERVERS)}")
    weight = {"observer": params["weight_observer"], "dtype": "int8", "per_channel": bool(params["per_channel"])}
    skip = list(params["skip"])

    propagate_shapes(gm, input_shape)
    modules = dict(gm.named_modules())
    _check_skip(gm, skip)

    nodes: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        pattern = classify(node, modules)
        entry: dict[str, Any] = {
            "op": node.op,
            "target": node.target if isinstance(node.target, str) else op_type(node, modules),
            "op_type": op_type(node, modules),
            "pattern": pattern,
        }
        skipped = node.name in skip or (node.op == "call_module" and node.target in skip)
        entry["quantize"] = pattern not in _NOT_QUANTIZED and not skipped
        if skipped:
            entry["skipped"] = True
        if entry["quantize"]:
            entry["activation"] = copy.deepcopy(activation)
            if pattern in _WEIGHTED:
                entry["weight"] = copy.deepcopy(weight)
        nodes[node.name] = entry

    return {"format_version": FORMAT_VERSION, "activation": activation, "weight": weight, "skip": skip, "nodes": nodes}


def check_qconfig(qconfig: dict[str, Any], gm: fx.GraphModule) -> None:
    """Raise ValueError when a qconfig does not describe the nodes of ``gm``."""
    version = qconfig.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"qconfig format version {version!r} is not supported, expected {FORMAT_VERSION}; rerun prepare-qconfig")
    graph_names = {node.name for node in gm.graph.nodes}
    config_names = set(qconfig["nodes"])
    if graph_names != config_names:
        missing = sorted(graph_names - config_names)[:5]
        extra = sorted(config_names - graph_names)[:5]
        raise ValueError(
            f"qconfig nodes do not match the fp32 graph (missing {missing}, unknown {extra}); "
            "rerun prepare-qconfig on this fp32_model"
        )


def summarize(qconfig: dict[str, Any]) -> dict[str, int]:
    """Count quantized, skipped and float nodes, for stage metrics."""
    entries = qconfig["nodes"].values()
    return {
        "quantized_nodes": sum(1 for entry in entries if entry["quantize"]),
        "skipped_nodes": sum(1 for entry in entries if entry.get("skipped")),
        "float_nodes": sum(1 for entry in entries if not entry["quantize"] and entry["pattern"] not in ("output",)),
    }


def _check_skip(gm: fx.GraphModule, skip: list[str]) -> None:
    node_names = {node.name for node in gm.graph.nodes}
    module_targets = {node.target for node in gm.graph.nodes if node.op == "call_module"}
    unknown = [name for name in skip if name not in node_names and name not in module_targets]
    if unknown:
        known = sorted(module_targets)[:8]
        raise ValueError(
            f"skip names {unknown} match no fx node or called module; use node names or module names such as {known}"
        )
