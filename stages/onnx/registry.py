"""Lookup tables from fx node targets to the functions that emit ONNX for them.

A handler takes the graph under construction and one fx node (plus the
called module for ``call_module`` nodes), adds ONNX nodes and binds the fx
node's value to an ONNX tensor name. The op-family modules register their
handlers with the decorators below when they are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    import torch.fx

    from stages.onnx.emitter import OnnxGraph

Handler = Callable[["OnnxGraph", "torch.fx.Node", Any], None]

MODULE_HANDLERS: dict[type, Handler] = {}
FUNCTION_HANDLERS: dict[Any, Handler] = {}
METHOD_HANDLERS: dict[str, Handler] = {}


def register_module(*classes: type) -> Callable[[Handler], Handler]:
    """Register a handler for ``call_module`` nodes of these module classes."""

    def decorate(handler: Handler) -> Handler:
        for cls in classes:
            MODULE_HANDLERS[cls] = handler
        return handler

    return decorate


def register_function(*targets: Any) -> Callable[[Handler], Handler]:
    """Register a handler for ``call_function`` nodes with these targets."""

    def decorate(handler: Handler) -> Handler:
        for target in targets:
            FUNCTION_HANDLERS[target] = handler
        return handler

    return decorate


def register_method(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``call_method`` nodes with these method names."""

    def decorate(handler: Handler) -> Handler:
        for name in names:
            METHOD_HANDLERS[name] = handler
        return handler

    return decorate


def module_handler(module: "torch.nn.Module") -> Handler | None:
    """Return the handler of the module's class or of its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in MODULE_HANDLERS:
            return MODULE_HANDLERS[cls]
    return None
