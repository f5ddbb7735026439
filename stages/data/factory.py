"""The ``module:callable`` source: a user's function that returns arrays.

The module is imported from the pipeline file's folder and the callable is
called with the entry's ``kwargs``. It returns ``(inputs, labels)`` with
``labels`` None for unlabelled data; inputs are used as returned, then
normalized by ``mean`` and ``std`` when the entry gives them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from pipeline.errors import StageError
from stages.data.arrays import dataset_from_arrays
from stages.data.dataset import Dataset
from stages.data.spec import DatasetSpec


def module_file(module_name: str, root: Path) -> Path | None:
    """Return the source file of ``module_name`` under ``root``, or None."""
    base = root.joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def load(spec: DatasetSpec, root: Path) -> Dataset:
    module_name, callable_name = spec.source.split(":")
    module = _import(module_name, root, spec.name)

    factory = module
    for attribute in callable_name.split("."):
        factory = getattr(factory, attribute, None)
    if not callable(factory):
        raise StageError(
            f"data set '{spec.name}': {module_name} has no callable '{callable_name}'; "
            f"define it in {module.__file__}"
        )

    result = factory(**spec.kwargs)
    if not isinstance(result, tuple) or len(result) != 2:
        raise StageError(
            f"data set '{spec.name}': {spec.source} returned {type(result).__name__}; "
            f"expected a tuple (inputs, labels) with labels None when there are none"
        )
    inputs, labels = result
    return dataset_from_arrays(spec, inputs, labels, spec.source)


def _import(module_name: str, root: Path, name: str) -> ModuleType:
    # The pipeline folder goes on sys.path so the module can import its
    # neighbours. A module of the same name imported from another folder
    # (another pipeline in the same process) is dropped so this one loads.
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    path = module_file(module_name, root)
    loaded = sys.modules.get(module_name)
    if path is not None and loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        del sys.modules[module_name]

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not module_name.startswith(exc.name):
            raise StageError(
                f"data set '{name}': module '{module_name}' imports '{exc.name}', which is not "
                f"installed; install it or remove the import"
            ) from exc
        raise StageError(
            f"data set '{name}': module '{module_name}' not found in {root} or on sys.path; "
            f"put {module_name.replace('.', '/')}.py next to the pipeline file"
        ) from exc
