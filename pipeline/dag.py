"""The stage DAG: ordering, cycle checks and input binding.

Each stage input is bound to the nearest ancestor (through ``needs``,
breadth first, later stages in the file first among equals) that produces its
artifact type; a ``many`` input is bound to every ancestor that produces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.source_map import line_of

if TYPE_CHECKING:
    import networkx as nx

    from pipeline.config import Pipeline, StageSpec


def build_graph(stages: list[StageSpec]) -> nx.DiGraph:
    """Return a DiGraph with an edge from each needed stage to its dependent."""
    import networkx as nx

    graph = nx.DiGraph()
    for index, spec in enumerate(stages):
        graph.add_node(spec.name, kind=spec.kind, index=index)
    for spec in stages:
        for need in spec.needs:
            graph.add_edge(need, spec.name)
    return graph


def resolve(path: Path, lines: dict, stages: list[StageSpec], kinds: dict[str, str]) -> list[str]:
    """Check the DAG, fill each spec's ``outputs`` and ``bindings``; return the run order."""
    import networkx as nx

    from pipeline.config import display_path
    from stages import load_stage

    graph = build_graph(stages)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        index = graph.nodes[names[0]]["index"]
        line = line_of(lines, ("stages", index, "needs"))
        raise ConfigError(
            f"{display_path(path)}:{line}: stages {' -> '.join(names)} form a cycle in 'needs'; "
            "remove one of these dependencies"
        )

    by_name = {spec.name: spec for spec in stages}
    for spec in stages:
        stage = load_stage(spec.kind)
        spec.outputs = {output.name: output.artifact for output in stage.outputs(spec.params)}

    for index, spec in enumerate(stages):
        stage = load_stage(spec.kind)
        ancestors_by_distance = _ancestors_by_distance(graph, spec.name)
        for stage_input in stage.inputs(spec.params):
            producers = [
                name
                for level in ancestors_by_distance
                for name in level
                if stage_input.artifact in by_name[name].outputs.values()
            ]
            if stage_input.many:
                order = {s.name: i for i, s in enumerate(stages)}
                spec.bindings[stage_input.name] = sorted(producers, key=order.__getitem__)
            elif producers:
                spec.bindings[stage_input.name] = producers[0]
            elif not stage_input.optional:
                ancestors = [name for level in ancestors_by_distance for name in level]
                line = line_of(lines, ("stages", index))
                raise ConfigError(
                    f"{display_path(path)}:{line}: stage '{spec.name}' ({spec.kind}) needs a "
                    f"'{stage_input.artifact}' artifact, but none of its ancestors "
                    f"({', '.join(ancestors) or 'none'}) produces one; add a stage that produces it "
                    "before this one or list it in 'needs'"
                )

    index_of = {spec.name: i for i, spec in enumerate(stages)}
    return list(nx.lexicographical_topological_sort(graph, key=index_of.__getitem__))


def _ancestors_by_distance(graph: nx.DiGraph, name: str) -> list[list[str]]:
    """Return ancestors grouped by distance, nearest first, later stages first."""
    levels: list[list[str]] = []
    seen = {name}
    frontier = [name]
    while frontier:
        level = sorted(
            {pred for node in frontier for pred in graph.predecessors(node)} - seen,
            key=lambda n: -graph.nodes[n]["index"],
        )
        if not level:
            break
        seen.update(level)
        levels.append(level)
        frontier = level
    return levels


def dependents(pipeline: Pipeline, names: set[str]) -> set[str]:
    """Return ``names`` and every stage that depends on one of them."""
    result = set(names)
    changed = True
    while changed:
        changed = False
        for spec in pipeline.stages:
            if spec.name not in result and any(need in result for need in spec.needs):
                result.add(spec.name)
                changed = True
    return result


def ancestors(pipeline: Pipeline, names: set[str]) -> set[str]:
    """Return ``names`` and every stage they depend on."""
    by_name = {spec.name: spec for spec in pipeline.stages}
    result = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in result:
            continue
        result.add(name)
        stack.extend(by_name[name].needs)
    return result


def render_text(pipeline: Pipeline) -> str:
    lines = []
    for name in pipeline.order:
        spec = pipeline.stage(name)
        needs = ", ".join(spec.needs) or "-"
        inputs = ", ".join(
            f"{key}<-{','.join(value) if isinstance(value, list) else value}" for key, value in spec.bindings.items()
        )
        lines.append(f"{name} ({spec.kind})  needs: {needs}" + (f"  inputs: {inputs}" if inputs else ""))
    return "\n".join(lines)


def render_dot(pipeline: Pipeline) -> str:
    lines = [f'digraph "{pipeline.name}" {{', "  rankdir=LR;"]
    for spec in pipeline.stages:
        lines.append(f'  "{spec.name}" [label="{spec.name}\\n({spec.kind})"];')
    for spec in pipeline.stages:
        for need in spec.needs:
            lines.append(f'  "{need}" -> "{spec.name}";')
    lines.append("}")
    return "\n".join(lines)


def render_mermaid(pipeline: Pipeline) -> str:
    lines = ["flowchart LR"]
    ids = {spec.name: f"s{i}" for i, spec in enumerate(pipeline.stages)}
    for spec in pipeline.stages:
        lines.append(f'  {ids[spec.name]}["{spec.name} ({spec.kind})"]')
    for spec in pipeline.stages:
        for need in spec.needs:
            lines.append(f"  {ids[need]} --> {ids[spec.name]}")
    return "\n".join(lines)


def as_json(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "stages": [
            {"name": spec.name, "kind": spec.kind, "needs": spec.needs, "inputs": spec.bindings, "outputs": spec.outputs}
            for spec in pipeline.stages
        ],
        "order": pipeline.order,
    }
