"""Inline torchvision's Swin shifted-window attention as linear, matmul and softmax nodes.

torchvision wraps ``shifted_window_attention`` with ``torch.fx.wrap``, so a
traced Swin Transformer calls it as one function node that an int8 model
runs in float. :func:`inline_window_attention` replaces each call with a
:class:`WindowAttention` block traced into the graph: roll, window
partition, the qkv ``nn.Linear``, the two attention products, softmax, the
output ``nn.Linear`` and the reverse. Its pads, windows and shift mask
depend on the input's height and width, so the pass needs the shapes of an
example run (``tensor_meta`` from ShapeProp). Swin V2 calls (cosine
attention with ``logit_scale``) and calls in training mode keep the
function node.

In shifted windows the mask adds -100 to the scores of token pairs from
different regions. Quantized with that range, the real scores would get only
a few levels. So :func:`masked_softmax` keeps mask and softmax together as
one node, which the quantizer turns into
``stages.quant.modules.QuantMaskedSoftmax``: the masked sum gets the scores'
range extended just far enough down that a masked pair's probability rounds
to 0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models import swin_transformer

from stages.tracing.graph_copy import copy_graph_before

log = logging.getLogger(__name__)

_ARGUMENTS = (
    "input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads", "shift_size",
    "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training",
)  # fmt: skip
# Value added to the scores of token pairs from different regions of a shifted window, as torchvision does.
MASK_VALUE = -100.0


@fx.wrap
def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, windows: int) -> torch.Tensor:
    """Return softmax over the last dim of scores plus the shift mask, per window.

    ``scores`` is (batch * windows, heads, L, L) and ``mask`` (windows, 1, L, L).
    """
    heads, length = scores.shape[1], scores.shape[2]
    masked = scores.view(-1, windows, heads, length, length) + mask.unsqueeze(0)
    return F.softmax(masked.view(-1, heads, length, length), dim=-1)


class WindowAttention(nn.Module):
    """Shifted-window multi-head self-attention for an input of fixed height and width.

    Built from the arguments of one ``shifted_window_attention`` call:
    ``qkv`` and ``proj`` are nn.Linear copies of its weights (query rows of
    ``qkv`` pre-scaled by head_dim ** -0.5), ``position_bias`` is the
    relative position bias and ``mask`` the shift mask (shifted windows only).
    """

    def __init__(self, arguments: dict[str, Any], position_bias: torch.Tensor, height: int, width: int) -> None:
        super().__init__()
        qkv_weight, proj_weight = arguments["qkv_weight"], arguments["proj_weight"]
        channels = qkv_weight.shape[1]
        self.window = [int(size) for size in arguments["window_size"]]
        self.num_heads = int(arguments["num_heads"])
        self.head_dim = channels // self.num_heads
        self.height, self.width = height, width
        self.padded = (
            height + (self.window[0] - height % self.window[0]) % self.window[0],
            width + (self.window[1] - width % self.window[1]) % self.window[1],
        )
        # A window as large as the padded map needs no shift, as in torchvision.
        self.shift = [
            0 if self.window[axis] >= self.padded[axis] else int(arguments["shift_size"][axis]) for axis in range(2)
        ]
        self.rows = self.padded[0] // self.window[0]
        self.columns = self.padded[1] // self.window[1]

        self.qkv = nn.Linear(channels, 3 * channels, bias=arguments["qkv_bias"] is not None)
        self.proj = nn.Linear(channels, channels, bias=arguments["proj_bias"] is not None)
        scale = self.head_dim**-0.5
        with torch.no_grad():
            self.qkv.weight.copy_(qkv_weight)
            self.qkv.weight[:channels] *= scale
            if arguments["qkv_bias"] is not None:
                self.qkv.bias.copy_(arguments["qkv_bias"])
                self.qkv.bias[:channels] *= scale
            self.proj.weight.copy_(proj_weight)
            if arguments["proj_bias"] is not None:
                self.proj.bias.copy_(arguments["proj_bias"])
        self.register_buffer("position_bias", position_bias.detach().clone())
        if sum(self.shift) > 0:
            self.register_buffer("mask", shift_mask(self.padded, self.window, self.shift))
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.qkv.in_features
        length = self.window[0] * self.window[1]
        windows = self.rows * self.columns
        if self.padded != (self.height, self.width):
            x = F.pad(x, (0, 0, 0, self.padded[1] - self.width, 0, self.padded[0] - self.height))
        if sum(self.shift) > 0:
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        x = x.reshape(-1, self.rows, self.window[0], self.columns, self.window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, length, channels)

        query, key, value = self.qkv(x).chunk(3, dim=-1)
        query = query.reshape(-1, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.reshape(-1, length, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.reshape(-1, length, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-2, -1)) + self.position_bias
        if self.mask is not None:
            probabilities = masked_softmax(scores, self.mask, windows)
        else:
            probabilities = torch.softmax(scores, dim=-1)
        x = torch.matmul(probabilities, value).transpose(1, 2).reshape(-1, length, channels)
        x = self.proj(x)

        x = x.reshape(-1, self.rows, self.columns, self.window[0], self.window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.padded[0], self.padded[1], channels)
        if sum(self.shift) > 0:
            x = torch.roll(x, shifts=(self.shift[0], self.shift[1]), dims=(1, 2))
        if self.padded != (self.height, self.width):
            x = x[:, : self.height, : self.width, :]
        return x


def shift_mask(padded: tuple[int, int], window: list[int], shift: list[int]) -> torch.Tensor:
    """Return the additive mask of shifted windows, (windows, 1, L, L), as torchvision builds it."""
    regions = torch.zeros(padded)
    count = 0
    for rows in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for columns in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[rows[0] : rows[1], columns[0] : columns[1]] = count
            count += 1
    windows = (padded[0] // window[0]) * (padded[1] // window[1])
    regions = regions.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(windows, window[0] * window[1])
    difference = regions.unsqueeze(1) - regions.unsqueeze(2)
    mask = torch.where(difference != 0, torch.tensor(MASK_VALUE), torch.tensor(0.0))
    return mask.unsqueeze(1)


def has_window_attention(graph_module: fx.GraphModule) -> bool:
    """Check whether the graph calls torchvision's shifted_window_attention."""
    return any(node.op == "call_function" and node.target is swin_transformer.shifted_window_attention for node in graph_module.graph.nodes)


def inline_window_attention(graph_module: fx.GraphModule, tracer: fx.Tracer) -> int:
    """Replace each eligible shifted_window_attention call with WindowAttention nodes; return the count.

    Needs ``tensor_meta`` on the calls' inputs. The block is registered as
    a submodule named after the call node, and the new nodes are named
    after it too.
    """
    graph = graph_module.graph
    inlined = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not swin_transformer.shifted_window_attention:
            continue
        arguments = _arguments(graph_module, node)
        if arguments is None:
            continue
        _, height, width, _ = arguments["input"].meta["tensor_meta"].shape
        block = WindowAttention(arguments, arguments["relative_position_bias"], int(height), int(width))
        graph_module.add_submodule(node.name, block)
        output = copy_graph_before(graph, node, tracer.trace(block), [arguments["input"]], node.name)
        node.replace_all_uses_with(output)
        graph.erase_node(node)
        inlined += 1
    if inlined:
        graph.eliminate_dead_code()
        graph.lint()
        graph_module.delete_all_unused_submodules()
        graph_module.recompile()
        log.info("inlined %d shifted_window_attention calls", inlined)
    return inlined


def _arguments(graph_module: fx.GraphModule, node: fx.Node) -> dict[str, Any] | None:
    """Return the call's arguments with tensors fetched, or None when the call is not inlined."""
    arguments: dict[str, Any] = dict(zip(_ARGUMENTS, node.args))
    arguments.update(node.kwargs)
    arguments.setdefault("qkv_bias", None)
    arguments.setdefault("proj_bias", None)
    if arguments.get("logit_scale") is not None or arguments.get("training", True):
        return None
    source = arguments["input"]
    if not isinstance(source, fx.Node) or "tensor_meta" not in source.meta:
        return None
    for name in ("qkv_weight", "proj_weight", "qkv_bias", "proj_bias", "relative_position_bias"):
        value = _constant(graph_module, arguments[name])
        if arguments[name] is not None and value is None:
            return None
        arguments[name] = value
    return arguments


def _constant(graph_module: fx.GraphModule, value: Any) -> torch.Tensor | None:
    """Return the tensor a get_attr node reads, or the relative position bias a call computes from them."""
    if not isinstance(value, fx.Node):
        return value if isinstance(value, torch.Tensor) else None
    if value.op == "get_attr":
        tensor: Any = graph_module
        for part in str(value.target).split("."):
            tensor = getattr(tensor, part)
        return tensor
    if value.op == "call_function" and value.target is swin_transformer._get_relative_position_bias:
        table, index = (_constant(graph_module, arg) for arg in value.args[:2])
        if table is None or index is None:
            return None
        with torch.no_grad():
            return swin_transformer._get_relative_position_bias(table, index, list(value.args[2]))
    return None
