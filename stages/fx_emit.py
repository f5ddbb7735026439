"""Graph-walk pieces shared by the ONNX and Caffe exporters.

Each exporter keeps a :class:`HandlerRegistry`: tables from fx node targets
(module class, function, Tensor method name) to the handler that emits the
node. Op-family modules register their handlers with its decorators when
they are imported. :class:`RecordingShapeProp` runs the example input
through the graph and keeps the values of nodes that are not tensors
(``x.size(0)``), which the exporters fold into constants.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

Handler = TypeVar("Handler", bound=Callable[..., None])


class HandlerRegistry(Generic[Handler]):
    """Handlers by ``call_module`` class, ``call_function`` target and ``call_method`` name."""

    def __init__(self) -> None:
        self.modules: dict[type, Handler] = {}
        self.functions: dict[Any, Handler] = {}
        self.methods: dict[str, Handler] = {}

    def register_module(self, *classes: type) -> Callable[[Handler], Handler]:
        """Register a handler for ``call_module`` nodes of these module classes."""
        return _registrar(self.modules, classes)

    def register_function(self, *targets: Any) -> Callable[[Handler], Handler]:
        """Register a handler for ``call_function`` nodes with these targets."""
        return _registrar(self.functions, targets)

    def register_method(self, *names: str) -> Callable[[Handler], Handler]:
        """Register a handler for ``call_method`` nodes with these method names."""
        return _registrar(self.methods, names)

    def module_handler(self, module: torch.nn.Module) -> Handler | None:
        """Return the handler of the module's class or of its nearest registered base class."""
        for cls in type(module).__mro__:
            if cls in self.modules:
                return self.modules[cls]
        return None

    def find(self, node: torch.fx.Node, module: torch.nn.Module | None) -> Handler | None:
        """Return the handler of a call node (``module``: the called module of a ``call_module`` node)."""
        if node.op == "call_module" and module is not None:
            return self.module_handler(module)
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(str(node.target))
        return None


def _registrar(table: dict[Any, Handler], keys: tuple[Any, ...]) -> Callable[[Handler], Handler]:
    """Return a decorator that files its handler in ``table`` under each of ``keys``."""

    def decorate(handler: Handler) -> Handler:
        for key in keys:
            table[key] = handler
        return handler

    return decorate


class RecordingShapeProp(ShapeProp):
    """ShapeProp that also keeps the value of every node that is not a tensor, as ``meta["constant_value"]``."""

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if "tensor_meta" not in n.meta:
            n.meta["constant_value"] = result
        return result


def claim_name(names: set[str], base: str) -> str:
    """Return ``base``, or ``base_1``, ``base_2`` ... when taken, and add it to ``names``."""
    name = base
    index = 1
    while name in names:
        name = f"{base}_{index}"
        index += 1
    names.add(name)
    return name


def argument(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Return a call's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
