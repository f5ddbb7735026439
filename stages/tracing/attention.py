"""Inline nn.MultiheadAttention self-attention as linear, matmul and softmax nodes.

The tracer keeps ``nn.MultiheadAttention`` as a leaf, so it reaches later
stages as one node that an int8 model runs in float. The form of
torchvision's ViT encoder is self-attention without masks whose attention
weights are unused. For that form, :func:`inline_self_attention` replaces the
node with the same computation written with ``nn.Linear``, ``chunk``,
``reshape``, ``transpose``, ``matmul`` and ``softmax``. The quantization
patterns and the ONNX emitter cover each of those. Other uses keep the leaf node.

The query rows of the input projection are multiplied by
``head_dim ** -0.5`` once, so the attention needs no scaling node. When
``head_dim`` is a power of 4 (64 in ViT-B), the factor is a power of 2 and
the product is exact.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from typing import Any

import torch
from torch import fx, nn

from stages.tracing.graph_copy import copy_graph_before

log = logging.getLogger(__name__)

# nn.MultiheadAttention.forward's parameters after query, key and value, by position.
_OPTIONAL_ARGUMENTS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


class SelfAttention(nn.Module):
    """Multi-head self-attention with its input projection as one nn.Linear.

    Built from an ``nn.MultiheadAttention``: ``in_proj`` is the packed
    query, key and value projection (query rows pre-scaled), ``out_proj``
    the output projection. ``forward(x)`` returns the attention output
    only, as ``mha(x, x, x)[0]`` does.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        embed = attention.embed_dim
        self.num_heads = attention.num_heads
        self.head_dim = embed // attention.num_heads
        self.batch_first = attention.batch_first
        scale = self.head_dim**-0.5

        self.in_proj = nn.Linear(embed, 3 * embed, bias=attention.in_proj_bias is not None)
        self.out_proj = nn.Linear(embed, embed, bias=attention.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(attention.in_proj_weight)
            self.in_proj.weight[:embed] *= scale
            if attention.in_proj_bias is not None:
                self.in_proj.bias.copy_(attention.in_proj_bias)
                self.in_proj.bias[:embed] *= scale
            self.out_proj.weight.copy_(attention.out_proj.weight)
            if attention.out_proj.bias is not None:
                self.out_proj.bias.copy_(attention.out_proj.bias)
        self.train(attention.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, length, embed = x.shape[0], x.shape[1], x.shape[2]
        query, key, value = self.in_proj(x).chunk(3, dim=-1)
        query = query.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        scores = torch.matmul(query, key.transpose(-2, -1))
        probabilities = torch.softmax(scores, dim=-1)
        context = torch.matmul(probabilities, value).transpose(1, 2).reshape(batch, length, embed)
        output = self.out_proj(context)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return output


def inline_self_attention(graph_module: fx.GraphModule, tracer: fx.Tracer) -> int:
    """Replace each eligible nn.MultiheadAttention node with its SelfAttention nodes; return the count.

    ``tracer`` traces the SelfAttention block, so nn.Linear stays a leaf.
    The module at the node's path becomes the SelfAttention block, and the
    new nodes are named after the attention node (``..._self_attention_in_proj``).
    """
    graph = graph_module.graph
    calls: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module" and type(graph_module.get_submodule(str(node.target))) is nn.MultiheadAttention:
            calls[str(node.target)].append(node)

    inlined = 0
    for target, nodes in calls.items():
        module = graph_module.get_submodule(target)
        # The block replaces the module, so every call of a shared module must be eligible.
        if not all(_eligible(node, module) for node in nodes):
            continue
        block = SelfAttention(module)
        block_graph = tracer.trace(block)
        graph_module.add_submodule(target, block)
        for node in nodes:
            output = copy_graph_before(graph, node, block_graph, [node.args[0]], target)
            for user in list(node.users):
                if user.args[1] == 0:
                    user.replace_all_uses_with(output)
                graph.erase_node(user)
            graph.erase_node(node)
            inlined += 1
    if inlined:
        graph.lint()
        graph_module.recompile()
        log.info("inlined %d nn.MultiheadAttention self-attention nodes", inlined)
    return inlined


def _eligible(node: fx.Node, module: nn.MultiheadAttention) -> bool:
    """Check the module settings and call arguments that SelfAttention reproduces."""
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        return False
    if len(node.args) < 3 or not (node.args[0] is node.args[1] is node.args[2]):
        return False
    arguments: dict[str, Any] = dict(zip(_OPTIONAL_ARGUMENTS, node.args[3:]))
    arguments.update(node.kwargs)
    if set(arguments) - set(_OPTIONAL_ARGUMENTS):
        return False
    if any(arguments.get(name) is not None for name in ("key_padding_mask", "attn_mask")) or arguments.get("is_causal"):
        return False
    # Users may read the output (element 0). The attention weights (element 1) must be unused.
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem or user.args[1] not in (0, 1):
            return False
        if user.args[1] == 1 and user.users:
            return False
    return True
