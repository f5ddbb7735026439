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

How the settings of a node are decided, later steps winning:
    1. the ``target`` preset (TARGETS);
    2. the stage params given explicitly (activation_observer,
       activation_dtype, percentile, weight_observer, per_channel);
    3. each ``overrides`` rule whose ``match`` glob matches the node's
       module name or node name and whose ``op`` matches its op type, in
       list order;
    4. ``skip``, which keeps a node float whatever the rules set.
"""

from __future__ import annotations

import copy
import fnmatch
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
WEIGHT_OBSERVERS = ("minmax", "mse")

# Presets of the ``target`` param: activation and weight settings.
TARGETS: dict[str, dict[str, Any]] = {
    # uint8 asymmetric activations, int8 per-channel symmetric weights: the
    # layout onnxruntime's x86 kernels (QLinearConv U8S8) run fastest.
    "onnxruntime": {
        "activation_observer": "minmax",
        "activation_dtype": "uint8",
        "weight_observer": "minmax",
        "per_channel": True,
    },
    # int8 activations with zero point 0, for runtimes that need it.
    "symmetric": {
        "activation_observer": "minmax",
        "activation_dtype": "int8",
        "weight_observer": "minmax",
        "per_channel": True,
    },
}
_OVERRIDE_SETTINGS = ("activation_observer", "activation_dtype", "percentile", "weight_observer", "per_channel")


def propagate_shapes(gm: fx.GraphModule, input_shape: list[int]) -> None:
    """Record ``tensor_meta`` on every node by running a random input of ``input_shape``."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(*input_shape, generator=generator)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def resolve_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Merge the ``target`` preset with the params given explicitly (absent params take the preset)."""
    target = params.get("target") or "onnxruntime"
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {sorted(TARGETS)}")
    settings = dict(TARGETS[target])
    settings["percentile"] = 99.99
    for key in _OVERRIDE_SETTINGS:
        if params.get(key) is not None:
            settings[key] = params[key]
    settings["target"] = target
    return settings


def _activation(settings: dict[str, Any]) -> dict[str, Any]:
    if settings["activation_observer"] not in OBSERVERS:
        raise ValueError(
            f"unknown activation observer {settings['activation_observer']!r}: expected one of {sorted(OBSERVERS)}"
        )
    activation = {"observer": settings["activation_observer"], "dtype": settings["activation_dtype"]}
    if settings["activation_observer"] == "percentile":
        activation["percentile"] = float(settings["percentile"])
    return activation


def _weight(settings: dict[str, Any]) -> dict[str, Any]:
    if settings["weight_observer"] not in WEIGHT_OBSERVERS:
        raise ValueError(f"unknown weight observer {settings['weight_observer']!r}: expected one of {list(WEIGHT_OBSERVERS)}")
    return {"observer": settings["weight_observer"], "dtype": "int8", "per_channel": bool(settings["per_channel"])}


def build_qconfig(gm: fx.GraphModule, input_shape: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Build the qconfig of an fp32 GraphModule from the prepare-qconfig params.

    Raises ValueError when ``skip`` names neither a node nor a called
    module, or when an override rule matches no node.
    """
    settings = resolve_settings(params)
    activation = _activation(settings)
    weight = _weight(settings)
    skip = list(params.get("skip") or [])
    overrides = [dict(rule) for rule in params.get("overrides") or []]

    propagate_shapes(gm, input_shape)
    modules = dict(gm.named_modules())
    _check_skip(gm, skip)

    nodes: dict[str, dict[str, Any]] = {}
    matched = [0] * len(overrides)
    for node in gm.graph.nodes:
        pattern = classify(node, modules)
        entry: dict[str, Any] = {
            "op": node.op,
            "target": node.target if isinstance(node.target, str) else op_type(node, modules),
            "op_type": op_type(node, modules),
            "pattern": pattern,
        }
        node_settings = dict(settings)
        quantize = pattern not in _NOT_QUANTIZED
        rules: list[int] = []
        for index, rule in enumerate(overrides):
            if not _rule_matches(rule, node, entry["op_type"]):
                continue
            matched[index] += 1
            rules.append(index)
            for key in _OVERRIDE_SETTINGS:
                if key in rule:
                    node_settings[key] = rule[key]
            if "quantize" in rule:
                quantize = pattern not in _NOT_QUANTIZED and bool(rule["quantize"])

        skipped = node.name in skip or (node.op == "call_module" and node.target in skip)
        entry["quantize"] = quantize and not skipped
        if skipped:
            entry["skipped"] = True
        if rules:
            entry["overrides"] = rules
        if entry["quantize"]:
            entry["activation"] = _activation(node_settings)
            if pattern in _WEIGHTED:
                entry["weight"] = _weight(node_settings)
        nodes[node.name] = entry

    unused = [index for index, count in enumerate(matched) if count == 0]
    if unused:
        rule = overrides[unused[0]]
        raise ValueError(
            f"override rule {unused[0]} ({rule}) matches no node; `match` is a glob on module names "
            f"(e.g. layer1.*) or node names, `op` an op type such as Conv2d or add"
        )

    return {
        "format_version": FORMAT_VERSION,
        "target": settings["target"],
        "activation": activation,
        "weight": weight,
        "skip": skip,
        "overrides": overrides,
        "nodes": nodes,
    }


def _rule_matches(rule: dict[str, Any], node: fx.Node, node_op_type: str) -> bool:
    pattern = rule.get("match")
    if pattern is not None:
        names = [node.name]
        if node.op == "call_module":
            names.append(str(node.target))
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return False
    op = rule.get("op")
    if op is not None and op != node_op_type:
        return False
    return True


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
        # The same nodes describe_scheme lists as float: skipped nodes and graph inputs and attributes are not counted.
        "float_nodes": sum(1 for entry in entries if entry["pattern"] == "float" and entry["op"] not in ("placeholder", "get_attr")),
    }


def describe_scheme(qconfig: dict[str, Any]) -> dict[str, Any]:
    """Collect the scheme, skipped and float node names and override rules, for stage metrics and the report."""
    entries = qconfig["nodes"]
    return {
        "target": qconfig.get("target", "onnxruntime"),
        "activation": qconfig["activation"],
        "weight": qconfig["weight"],
        "skipped": [name for name, entry in entries.items() if entry.get("skipped")],
        "float": [
            name
            for name, entry in entries.items()
            if entry["pattern"] == "float" and entry["op"] not in ("placeholder", "get_attr")
        ],
        "overrides": qconfig.get("overrides", []),
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
