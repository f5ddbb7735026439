"""Symbolic tracing with torch.fx, and trace failures a user can act on.

:class:`ModelTracer` keeps every module class defined in ``torch.nn`` as a
leaf (except the containers ``Sequential``, ``ModuleList`` and
``ModuleDict``, which are traced through) plus the classes a user lists in
``leaf_modules``. Self-attention through ``nn.MultiheadAttention`` is then
inlined as linear, matmul and softmax nodes (see stages.tracing.attention),
unless ``leaf_modules`` lists that class, and so is torchvision's Swin
window attention when the input shape is known. When tracing fails, :func:`trace_model` raises
:class:`TraceFailure` with the qualified name of the submodule being traced,
the ``file:line`` of user code where it failed, and what to try.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from stages.tracing.attention import inline_self_attention
from stages.tracing.window_attention import has_window_attention, inline_window_attention

log = logging.getLogger(__name__)

TORCH_DIR = Path(torch.__file__).resolve().parent
TRACING_DIR = Path(__file__).resolve().parent
CONTAINER_CLASSES = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def qualified_class_name(cls: type) -> str:
    """Return ``package.module.Class``, the form ``leaf_modules`` takes."""
    return f"{cls.__module__}.{cls.__qualname__}"


class TraceFailure(Exception):
    """Tracing failed; the message is one line naming module, line and fix."""

    def __init__(self, message: str, module: str, location: str) -> None:
        super().__init__(message)
        self.module = module
        self.location = location


class ModelTracer(torch.fx.Tracer):
    """An fx tracer with torch.nn modules and user-listed classes as leaves.

    ``leaf_modules`` holds qualified class names (``package.module.Class``).
    While tracing, the tracer records which submodule it is inside, so a
    failure can name it.
    """

    def __init__(self, leaf_modules: Sequence[str] = ()) -> None:
        super().__init__()
        self.leaf_class_names = frozenset(leaf_modules)
        self.submodule_path: list[tuple[str, type]] = []
        self.failed_module: tuple[str, type] | None = None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        cls = type(m)
        if qualified_class_name(cls) in self.leaf_class_names:
            return True
        if isinstance(m, CONTAINER_CLASSES):
            return False
        return cls.__module__.startswith(("torch.nn", "torch.ao.nn"))

    def call_module(
        self,
        m: torch.nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        self.submodule_path.append((self.path_of_module(m), type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # The innermost module sees the exception first.
            if self.failed_module is None:
                self.failed_module = self.submodule_path[-1]
            raise
        finally:
            self.submodule_path.pop()


def trace_model(
    model: torch.nn.Module,
    leaf_modules: Sequence[str] = (),
    concrete_args: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> torch.fx.GraphModule:
    """Trace ``model`` into a GraphModule in eval mode.

    With ``input_shape``, calls of torchvision's Swin ``shifted_window_attention``
    are inlined too, because their windows depend on the input's height and
    width (see stages.tracing.window_attention); the model then runs once on
    zeros of that shape.

    Raises:
        TraceFailure: tracing raised; the message names the submodule, the
            ``file:line`` of user code and the fix to try.
    """
    tracer = ModelTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=dict(concrete_args) if concrete_args else None)
    except Exception as exc:
        raise _describe_failure(exc, model, tracer) from exc

    name = type(model).__name__
    graph_module = torch.fx.GraphModule(tracer.root, graph, name)
    graph_module.eval()
    if qualified_class_name(torch.nn.MultiheadAttention) not in tracer.leaf_class_names:
        inline_self_attention(graph_module, ModelTracer(leaf_modules))
    if input_shape is not None and has_window_attention(graph_module):
        with torch.no_grad():
            ShapeProp(graph_module).propagate(torch.zeros(list(input_shape)))
        inline_window_attention(graph_module, ModelTracer(leaf_modules))
    graph_module.eval()
    log.info("traced %s: %d nodes", name, len(graph.nodes))
    return graph_module


def _describe_failure(exc: Exception, model: torch.nn.Module, tracer: ModelTracer) -> TraceFailure:
    if tracer.failed_module is not None:
        path, cls = tracer.failed_module
    else:
        path, cls = "", type(model)
    module = f"'{path}' ({cls.__name__})" if path else f"the root module ({cls.__name__})"
    location = _user_code_location(exc.__traceback__)
    reason = " ".join(str(exc).split()) or type(exc).__name__

    message = (
        f"tracing failed in module {module} at {location}: {reason}. "
        f"Add '{qualified_class_name(cls)}' to the trace stage's leaf_modules to keep it whole, "
        f"or pass concrete_args to fix the input that drives the control flow"
    )
    return TraceFailure(message, module=path, location=location)


def _user_code_location(tb: TracebackType | None) -> str:
    """Return ``file:line`` of the innermost frame outside torch and this package."""
    location = "an unknown line"
    for frame, line in traceback.walk_tb(tb):
        if frame.f_code.co_filename.startswith("<"):
            continue
        filename = Path(frame.f_code.co_filename).resolve()
        if filename.is_relative_to(TORCH_DIR) or filename.is_relative_to(TRACING_DIR):
            continue
        location = f"{filename}:{line}"
    return location
