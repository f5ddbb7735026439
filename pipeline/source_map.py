"""YAML loading that remembers the line of every value.

Validation errors must name the line of the offending value, which plain
``yaml.safe_load`` forgets. :func:`load_with_lines` composes the node tree
once and builds both the Python data and a map from each value's path (a
tuple of keys and list indices) to its 1-based line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

Path_ = tuple[Any, ...]

try:
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader


class PipelineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loader that also reads ``1e-12`` as a float.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-12``), so
    ``1e-12`` would load as a string; YAML 1.2 and JSON read it as a number.
    """


PipelineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)
_Loader = PipelineLoader


def display_path(path: Path) -> str:
    """Return ``path`` relative to the working folder when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_with_lines(text: str, file: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse ``text`` and return ``(data, lines)``.

    Raises ConfigError with the file and line on a YAML syntax error or on a
    duplicate mapping key (which plain PyYAML silently overwrites).
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        # The context names where the construct that the parser was reading began, e.g. an unclosed '{'.
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
            problem += f" ({context} that starts at line {context_mark.line + 1})"
        raise ConfigError(f"{display_path(file)}{line}: invalid YAML: {problem}; fix the syntax") from exc

    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    _record_lines(node, (), lines, file)
    data = yaml.load(text, Loader=_Loader)
    return data, lines


def _record_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: Path) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"{file}:{key_node.start_mark.line + 1}: duplicate key '{key}'; "
                    "each key may appear once in a mapping"
                )
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _record_lines(value_node, path + (key,), lines, file)
            # A key's own line is more useful than its value's for scalars.
            if isinstance(value_node, yaml.ScalarNode):
                lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), lines, file)


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """Return the line of ``path`` or of its nearest ancestor that has one."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
