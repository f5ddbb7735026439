"""Build the ``nn.Module`` that a pipeline's ``model`` section describes.

Sources are ``torchvision:<name>`` (built by ``torchvision.models.get_model``
with random weights, never downloaded) or ``module:callable``, where
``module`` is imported from the pipeline file's folder.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import StageError

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision"
# Keys under which training scripts commonly nest a state_dict.
STATE_DICT_KEYS = ("state_dict", "model")


def split_source(source: str) -> tuple[str, str]:
    """Split ``module:callable`` into its two parts."""
    module_name, _, attribute = source.partition(":")
    return module_name, attribute


def model_source_file(source: str, root: Path) -> Path | None:
    """Return the user's Python file for a ``module:callable`` source.

    Returns None for torchvision sources. Resolves ``pkg.mod`` to
    ``root/pkg/mod.py`` or ``root/pkg/mod/__init__.py`` without importing it.
    """
    module_name, _ = split_source(source)
    if module_name == TORCHVISION_PREFIX:
        return None

    base = root.joinpath(*module_name.split("."))
    candidates = [base.with_suffix(".py"), base / "__init__.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StageError(
        f"model source '{source}': module file not found, expected {candidates[0]} or {candidates[1]}; "
        f"put the module next to the pipeline file"
    )


def source_problems(model_spec: Mapping[str, Any], root: Path) -> list[tuple[tuple[Any, ...], str]]:
    """Return the problems of a ``model`` section found without importing anything.

    The module file must exist and define the callable at its top level
    (read from its syntax tree), and the checkpoint file must exist.
    """
    problems: list[tuple[tuple[Any, ...], str]] = []
    source = model_spec["source"]
    module_name, attribute = split_source(source)
    if module_name != TORCHVISION_PREFIX:
        try:
            source_file = model_source_file(source, root)
        except StageError as exc:
            problems.append((("model", "source"), f"model.source: {str(exc).removeprefix('model source ')}"))
        else:
            defined = _top_level_names(source_file)
            first = attribute.split(".")[0]
            if defined is not None and first not in defined:
                problems.append((
                    ("model", "source"),
                    f"model.source: '{source}': {source_file.name} defines no '{first}' at its top level; "
                    f"defined there: {', '.join(sorted(defined)) or 'nothing'}",
                ))
    checkpoint = model_spec.get("checkpoint")
    if checkpoint and not (root / checkpoint).is_file():
        problems.append((
            ("model", "checkpoint"),
            f"model.checkpoint: file '{checkpoint}' not found in {root}; give its path relative to the pipeline file",
        ))
    return problems


def _top_level_names(source_file: Path) -> set[str] | None:
    """Return the names a Python file binds at its top level, or None when they cannot be known statically."""
    import ast

    try:
        tree = ast.parse(source_file.read_text(), filename=str(source_file))
    except (OSError, SyntaxError, ValueError):
        return None  # The import at run time reports the error with its line.
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(element.id for element in ast.walk(target) if isinstance(element, ast.Name))
        elif not isinstance(node, ast.Expr):
            # Names bound inside if, try, for or with blocks are not followed, so no name is reported missing.
            return None
    return None if "__getattr__" in names else names


def build_model(model_spec: Mapping[str, Any], root: Path) -> Any:
    """Build the model of a ``model`` section in eval mode, with its checkpoint loaded."""
    source = model_spec["source"]
    kwargs = dict(model_spec.get("kwargs") or {})
    module_name, attribute = split_source(source)

    if module_name == TORCHVISION_PREFIX:
        model = _build_torchvision(attribute, kwargs)
    else:
        model = _build_user_callable(source, root, kwargs)

    checkpoint = model_spec.get("checkpoint")
    if checkpoint:
        _load_checkpoint(model, root / checkpoint)

    model.eval()
    return model


def _build_torchvision(name: str, kwargs: dict[str, Any]) -> Any:
    import torchvision

    if "weights" in kwargs or "pretrained" in kwargs:
        raise StageError(
            f"model source 'torchvision:{name}': kwargs 'weights'/'pretrained' are not supported because "
            f"nothing is downloaded at run time; pass a state_dict file as model.checkpoint instead"
        )
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError as exc:
        raise StageError(
            f"model source 'torchvision:{name}': {exc}; see torchvision.models.list_models() for valid names"
        ) from exc


def _build_user_callable(source: str, root: Path, kwargs: dict[str, Any]) -> Any:
    import torch

    module_name, attribute = split_source(source)
    _prepare_import(module_name, model_source_file(source, root), root)

    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise StageError(f"model source '{source}': import of module '{module_name}' from {root} failed: {exc}") from exc

    for part in attribute.split("."):
        if not hasattr(target, part):
            raise StageError(f"model source '{source}': module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)

    model = target(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise StageError(
            f"model source '{source}': the callable returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _prepare_import(module_name: str, source_file: Path | None, root: Path) -> None:
    """Put ``root`` first on sys.path and drop a same-named module imported from elsewhere.

    NOTE: a module already imported from ``source_file`` is reused, so edits
    to it within one process are not seen.
    """
    root_entry = str(root)
    if root_entry in sys.path:
        sys.path.remove(root_entry)
    sys.path.insert(0, root_entry)

    loaded = sys.modules.get(module_name)
    loaded_file = getattr(loaded, "__file__", None)
    if loaded is not None and source_file is not None and (loaded_file is None or Path(loaded_file).resolve() != source_file.resolve()):
        log.debug("re-importing %s from %s instead of %s", module_name, source_file, loaded_file)
        del sys.modules[module_name]
        importlib.invalidate_caches()


def _load_checkpoint(model: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise StageError(f"model checkpoint not found: {path}; model.checkpoint is relative to the pipeline file")

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or OSError here
        raise StageError(f"model checkpoint {path} could not be read as a state_dict: {exc}") from exc

    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise StageError(f"model checkpoint {path} holds {type(state).__name__}, expected a state_dict")

    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise StageError(
            f"model checkpoint {path} does not match the model: {detail}; check model.source and model.kwargs"
        ) from exc
    log.info("loaded checkpoint %s", path)
