"""Lookup tables from fx node targets to the functions that emit Caffe layers for them.

A handler takes the net under construction and one fx node (plus the called
module for ``call_module`` nodes), appends layers and binds the fx node's
value to a blob. The op-family modules register their handlers with the
decorators below when they are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from stages.fx_emit import HandlerRegistry

if TYPE_CHECKING:
    import torch.fx

    from stages.caffe.emitter import CaffeGraph

Handler = Callable[["CaffeGraph", "torch.fx.Node", Any], None]

HANDLERS: HandlerRegistry[Handler] = HandlerRegistry()
register_module = HANDLERS.register_module
register_function = HANDLERS.register_function
register_method = HANDLERS.register_method

# Ops without a Caffe layer in this build (matched without case: GELU and F.gelu), and what to use instead.
KNOWN_ALTERNATIVES: dict[str, str] = {
    "GELU": "the build has no GELU or Erf layer; use ReLU, SiLU or Hardswish",
    "Hardtanh": "the build has no Clip layer; Hardtanh(0, 6) is ReLU6, use nn.ReLU6",
    "clamp": "the build has no Clip layer; clamp(0, 6) is ReLU6, use nn.ReLU6 or F.relu6",
    "clip": "the build has no Clip layer; clamp(0, 6) is ReLU6, use nn.ReLU6 or F.relu6",
    "Mish": "the build has no Mish or Softplus layer; use SiLU or Hardswish",
    "LayerNorm": "the build has no LayerNorm; use BatchNorm2d",
    "GroupNorm": "the build has no GroupNorm; use BatchNorm2d",
}


def alternatives(node_op: str, op: str) -> str:
    """Say what to use instead of an unsupported op, and list the supported ones of its kind."""
    short = op.rsplit(".", 1)[-1].lower()
    specific = next((text for name, text in KNOWN_ALTERNATIVES.items() if name.lower() == short), None)
    if node_op == "call_module":
        names = sorted({cls.__name__ for cls in HANDLERS.modules})
        listing = f"supported modules: {', '.join(names)}"
    elif node_op == "call_function":
        names = sorted({getattr(target, "__name__", str(target)) for target in HANDLERS.functions})
        listing = f"supported functions: {', '.join(names)}"
    else:
        listing = f"supported Tensor methods: {', '.join(sorted(HANDLERS.methods))}"
    return f"{specific}; {listing}" if specific else f"replace it with one of the supported ops ({listing})"
