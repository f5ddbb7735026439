"""Each stage kind's ``sources`` cover the stages code it imports, so a code change invalidates its key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stages import KINDS, load_stage

STAGES_DIR = Path(__file__).resolve().parents[2] / "stages"
# The kind registry: importing it runs no stage code.
REGISTRY = STAGES_DIR / "__init__.py"


def _module_file(module: str) -> Path | None:
    """Return the file of a ``stages.*`` module, or None for other modules."""
    parts = module.split(".")
    if parts[0] != "stages":
        return None
    base = STAGES_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_files(file: Path) -> set[Path]:
    """Return the files of the ``stages.*`` modules that ``file`` imports, at any depth of the code."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # A name may be a submodule (from stages.onnx import parity) or an attribute.
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for module in modules:
            path = _module_file(module)
            if path is not None:
                found.add(path)
    return found


def _reachable(start: Path) -> set[Path]:
    seen: set[Path] = set()
    pending = [start]
    while pending:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        pending.extend(_imported_files(file) - seen)
    return seen - {REGISTRY}


def _covered(file: Path, sources: tuple[str, ...]) -> bool:
    relative = file.relative_to(STAGES_DIR)
    return any(relative == Path(source) or Path(source) in relative.parents for source in sources)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sources_cover_imported_code(kind: str) -> None:
    stage = load_stage(kind)
    module_file = _module_file(type(stage).__module__)
    assert module_file is not None

    uncovered = sorted(str(file.relative_to(STAGES_DIR)) for file in _reachable(module_file) if not _covered(file, stage.sources))

    assert uncovered == []
