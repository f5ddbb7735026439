"""Copy a traced block's graph into another graph, in place of one node."""

from __future__ import annotations

from typing import Any

from torch import fx


def copy_graph_before(graph: fx.Graph, node: fx.Node, block_graph: fx.Graph, inputs: list[Any], prefix: str) -> Any:
    """Copy ``block_graph`` before ``node`` and return the copied output value.

    The block's placeholders read ``inputs`` in order. Module and attribute
    targets get ``prefix`` as their parent path (the block is registered
    there), and copied nodes are named ``{node.name}_{name in the block}``.
    """
    values: dict[fx.Node, Any] = {}
    placeholders = iter(inputs)
    with graph.inserting_before(node):
        for sub in block_graph.nodes:
            if sub.op == "placeholder":
                values[sub] = next(placeholders)
                continue
            if sub.op == "output":
                return fx.map_arg(sub.args[0], values.__getitem__)
            target = f"{prefix}.{sub.target}" if sub.op in ("call_module", "get_attr") else sub.target
            values[sub] = graph.create_node(
                sub.op,
                target,
                fx.map_arg(sub.args, values.__getitem__),
                fx.map_arg(sub.kwargs, values.__getitem__),
                name=f"{node.name}_{sub.name}",
                type_expr=sub.type,
            )
    raise ValueError(f"the graph copied in place of node '{node.name}' has no output node")
