"""Lookup tables from fx node targets to the functions that emit ONNX for them.

A handler takes the graph under construction and one fx node (plus the
called module for ``call_module`` nodes), adds ONNX nodes and binds the fx
node's value to an ONNX tensor name. The op-family modules register their
handlers with the decorators below when they are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from stages.fx_emit import HandlerRegistry

if TYPE_CHECKING:
    import torch.fx

    from stages.onnx.emitter import OnnxGraph

Handler = Callable[["OnnxGraph", "torch.fx.Node", Any], None]

HANDLERS: HandlerRegistry[Handler] = HandlerRegistry()
register_module = HANDLERS.register_module
register_function = HANDLERS.register_function
register_method = HANDLERS.register_method
