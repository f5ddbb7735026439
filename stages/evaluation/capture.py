"""Record the values of chosen fx nodes while a GraphModule runs.

Integer values (quantized uint8 or int8 tensors) are dequantized with the
node's entry in the int8 GraphModule's ``qparams``:
real = scale * (q - zero_point).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.fx

log = logging.getLogger(__name__)

QUANTIZED_DTYPES = (torch.uint8, torch.int8)


class NodeRecorder(torch.fx.Interpreter):
    """Run a GraphModule and keep the float value of each node in ``wanted``.

    ``qparams`` maps node names to ``{"scale", "zero_point", ...}`` for nodes
    whose output is an integer tensor. After :meth:`run`, ``values`` maps
    each wanted node that produced a tensor to its float32 value. A wanted
    integer node without qparams is skipped and named in ``skipped``.
    """

    def __init__(self, module: torch.fx.GraphModule, wanted: set[str], qparams: Mapping[str, Any] | None = None) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.wanted = wanted
        self.qparams = dict(qparams or {})
        self.values: dict[str, torch.Tensor] = {}
        self.skipped: set[str] = set()

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        if node.name in self.wanted and isinstance(result, torch.Tensor):
            value = self._as_float(node.name, result)
            if value is not None:
                self.values[node.name] = value
        return result

    def _as_float(self, name: str, value: torch.Tensor) -> torch.Tensor | None:
        # A copy, because a later in-place op (ReLU(inplace=True)) would
        # otherwise change the recorded value.
        if value.is_floating_point():
            return value.detach().to(torch.float32, copy=True)
        if value.dtype not in QUANTIZED_DTYPES:
            self.skipped.add(name)
            return None

        qparams = self.qparams.get(name)
        if qparams is None:
            self.skipped.add(name)
            return None
        scale, zero_point = qparams_scale_zero_point(qparams)
        return (value.to(torch.float32) - zero_point) * scale


def qparams_scale_zero_point(qparams: Any) -> tuple[float, int]:
    """Return ``(scale, zero_point)`` of a qparams dict or record."""
    if isinstance(qparams, Mapping):
        return float(qparams["scale"]), int(qparams["zero_point"])
    return float(qparams.scale), int(qparams.zero_point)


def first_tensor(output: Any, model_name: str) -> torch.Tensor:
    """Return the model's output tensor: the output itself or the first of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        # NOTE: Models with several outputs are compared on the first one only.
        log.debug("%s returns %d outputs; comparing the first", model_name, len(output))
        return output[0]
    raise TypeError(f"{model_name} returns {type(output).__name__}; expected a tensor of logits")
