"""Observer insertion: turn an fp32 GraphModule into an observed one.

The pass folds BatchNorm into the preceding conv and fuses conv, linear and
add with a following ReLU or ReLU6, so the observer goes after the
activation. Then it
inserts one observer module after every value that a quantized node
produces or reads. These are the graph inputs, the outputs of quantized
nodes and the float values that feed quantized nodes. Observers belong to
fx nodes, not to modules, so a module called at two places (a shared
nn.ReLU) gets one observer per call.

The observed GraphModule carries two plain-dict attributes:
    value_names  observed node name -> fp32 node name whose value it computes
    quant_plan   observed node name -> {"pattern", "quantize", "relu",
                 "fused_into", "observer", "activation", "weight"}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import fx

from stages.quant.fold import fold_batchnorm
from stages.quant.observers import make_observer
from stages.quant.patterns import COMPUTE_PATTERNS, FUSABLE_WITH_RELU, FUSED_ACTIVATIONS, PASS_THROUGH_PATTERNS, tensor_args
from stages.quant.qconfig import check_qconfig

log = logging.getLogger(__name__)

OBSERVER_PREFIX = "observer_"


@dataclass
class ObserveSummary:
    """Counts reported by the insert-observers stage."""

    observers: int
    folded_batchnorms: int
    fused_relus: int
    quantized_nodes: int


def insert_observers(fp32: fx.GraphModule, qconfig: dict[str, Any]) -> tuple[fx.GraphModule, ObserveSummary]:
    """Return the observed copy of ``fp32`` and its counts (``fp32`` is not changed)."""
    check_qconfig(qconfig, fp32)
    gm, folded = fold_batchnorm(fp32)
    nodes = qconfig["nodes"]

    value_names = {node.name: node.name for node in gm.graph.nodes}
    for conv_name, bn_name in folded.items():
        value_names[conv_name] = bn_name

    plan = _build_plan(gm, nodes, folded)
    observed = _observed_values(gm, plan, qconfig["activation"])

    existing = {name for name, _ in gm.named_modules()}
    for node in list(gm.graph.nodes):
        if node.name not in observed:
            continue
        target = _unique_name(OBSERVER_PREFIX + node.name, existing)
        existing.add(target)
        gm.add_submodule(target, make_observer(observed[node.name], value_names[node.name]))
        with gm.graph.inserting_after(node):
            observer_node = gm.graph.create_node("call_module", target, (node,), {}, name=f"{node.name}_observer")
        node.replace_all_uses_with(observer_node, delete_user_cb=lambda user: user is not observer_node)
        value_names[observer_node.name] = value_names[node.name]
        plan[node.name]["observer"] = target

    gm.graph.lint()
    gm.recompile()
    gm.value_names = value_names
    gm.quant_plan = plan

    summary = ObserveSummary(
        observers=len(observed),
        folded_batchnorms=len(folded),
        fused_relus=sum(1 for entry in plan.values() if entry.get("relu")),
        quantized_nodes=sum(
            1
            for entry in plan.values()
            if entry["quantize"] and entry["pattern"] in COMPUTE_PATTERNS and entry["fused_into"] is None
        ),
    )
    log.info("inserted %d observers, folded %d BatchNorm, fused %d ReLU", summary.observers, summary.folded_batchnorms, summary.fused_relus)
    return gm, summary


def _build_plan(gm: fx.GraphModule, nodes: dict[str, dict[str, Any]], folded: dict[str, str]) -> dict[str, dict[str, Any]]:
    plan: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        entry = nodes[node.name]
        quantize = bool(entry["quantize"])
        if node.name in folded:
            quantize = quantize and bool(nodes[folded[node.name]]["quantize"])
        plan[node.name] = {
            "pattern": entry["pattern"],
            "quantize": quantize and entry["pattern"] in COMPUTE_PATTERNS | PASS_THROUGH_PATTERNS | {"input"},
            "relu": None,
            "fused_into": None,
            "observer": None,
            "activation": entry.get("activation"),
            "weight": entry.get("weight"),
        }

    for node in gm.graph.nodes:
        entry = plan[node.name]
        if not entry["quantize"] or entry["pattern"] not in FUSABLE_WITH_RELU or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        user_entry = plan[user.name]
        if user_entry["pattern"] in FUSED_ACTIVATIONS and user_entry["quantize"] and user_entry["fused_into"] is None:
            entry["relu"] = user.name
            user_entry["fused_into"] = node.name
    return plan


def _observed_values(gm: fx.GraphModule, plan: dict[str, dict[str, Any]], default: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pick the nodes whose output gets an observer, with its activation settings.

    A value is available as integers when it is observed or when a
    pass-through node (maxpool, reshape) reads an available value. A
    quantized node whose input is not available gets an observer on that
    input, so conversion can put a Quantize there.
    """
    observed: dict[str, dict[str, Any]] = {}
    available: set[str] = set()
    for node in gm.graph.nodes:
        entry = plan[node.name]
        if not entry["quantize"] or entry["fused_into"] is not None:
            continue
        pattern = entry["pattern"]
        if pattern == "input":
            observed[node.name] = dict(default)
            available.add(node.name)
        elif pattern in PASS_THROUGH_PATTERNS:
            first = tensor_args(node, pattern)
            if first and first[0].name in available:
                available.add(node.name)
        elif pattern in COMPUTE_PATTERNS:
            for arg in tensor_args(node, pattern):
                if arg.name not in available:
                    observed[arg.name] = dict(default)
                    available.add(arg.name)
            output = entry["relu"] or node.name
            observed[output] = dict(entry["activation"] or default)
            available.add(output)
    return observed


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        candidate = f"{name}_{index}"
        index += 1
    return candidate
