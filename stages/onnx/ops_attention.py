"""ONNX mappings of attention: nn.MultiheadAttention and the Swin Transformer blocks.

torchvision's Swin Transformer wraps ``shifted_window_attention``,
``_get_relative_position_bias`` and ``_patch_merging_pad`` with
``torch.fx.wrap``, so they reach the exporter as single call_function nodes.
They are emitted here from their definitions with the shapes of the
example run: pads, window sizes and the shift mask are constants, the
batch axis is -1 in every Reshape so a dynamic batch passes through.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.fx
from torch import nn
from torchvision.models import swin_transformer

from stages.fx_emit import argument
from stages.onnx.emitter import EmitError, OnnxGraph, _fetch_attribute
from stages.onnx.ops_shape import REDUCE_AXES_INPUT_OPSET, roll
from stages.onnx.registry import register_function, register_module
from stages.tracing import window_attention


def _linear(graph: OnnxGraph, base: str, source: str, weight: str, bias: str | None) -> str:
    """x @ weight^T + bias for an (out, in) weight; the Transpose folds away in onnxruntime."""
    weight_t = graph.step("Transpose", [weight], f"{base}_weight_t", perm=[1, 0])
    product = graph.step("MatMul", [source, weight_t], f"{base}_matmul")
    if bias is None:
        return product
    return graph.step("Add", [product, bias], f"{base}_add")


def _reshape(graph: OnnxGraph, source: str, shape: Sequence[int], name: str) -> str:
    return graph.step("Reshape", [source, graph.add_constant(f"{name}_shape", list(shape), np.int64)], name)


def _attention(graph: OnnxGraph, name: str, query: str, key: str, value: str, scale: float) -> tuple[str, str]:
    """softmax(q @ k^T * scale) @ v on (batch, heads, length, head_dim); return output and probabilities."""
    key_t = graph.step("Transpose", [key], f"{name}/key_t", perm=[0, 1, 3, 2])
    scaled = graph.step("Mul", [query, graph.add_constant(f"{name}/scale", scale, np.float32)], f"{name}/query_scaled")
    scores = graph.step("MatMul", [scaled, key_t], f"{name}/scores")
    probabilities = graph.step("Softmax", [scores], f"{name}/probabilities", axis=-1)
    return graph.step("MatMul", [probabilities, value], f"{name}/context"), probabilities


@register_module(nn.MultiheadAttention)
def emit_multihead_attention(graph: OnnxGraph, node: torch.fx.Node, module: nn.MultiheadAttention) -> None:
    """Emit the projections, per-head scaled dot-product attention and the output projection.

    Binds the node to (output, head-averaged weights or None), as the module returns.
    """
    for index, label in ((3, "key_padding_mask"), (5, "attn_mask")):
        if argument(node, index, label) is not None:
            raise EmitError(f"ONNX export: node '{node.name}': MultiheadAttention with {label} is not supported")
    if graph.value(argument(node, 7, "is_causal", False)):
        raise EmitError(f"ONNX export: node '{node.name}': MultiheadAttention with is_causal=True is not supported")
    if module.bias_k is not None or module.add_zero_attn or not module._qkv_same_embed_dim:
        raise EmitError(
            f"ONNX export: node '{node.name}': MultiheadAttention with add_bias_kv, add_zero_attn or kdim/vdim "
            f"different from embed_dim is not supported"
        )

    name = node.name
    embed, heads = module.embed_dim, module.num_heads
    head_dim = embed // heads
    args = [argument(node, index, label) for index, label in enumerate(("query", "key", "value"))]
    sources = [graph.tensor(arg) for arg in args]
    if not module.batch_first:
        sources = [graph.step("Transpose", [source], f"{name}/batch_first", perm=[1, 0, 2]) for source in sources]
    query_length = graph.shape(args[0])[0 if not module.batch_first else 1]
    key_length = graph.shape(args[1])[0 if not module.batch_first else 1]

    if args[0] is args[1] is args[2]:
        # Self-attention: one product with the packed (3 * embed, embed) weight, then Split.
        weight = graph.add_tensor_initializer(f"{name}.in_proj_weight", module.in_proj_weight)
        bias = None
        if module.in_proj_bias is not None:
            bias = graph.add_tensor_initializer(f"{name}.in_proj_bias", module.in_proj_bias)
        packed = _linear(graph, f"{name}/in_proj", sources[0], weight, bias)
        split = graph.add_constant(f"{name}/split", [embed] * 3, np.int64)
        projected = [graph.unique_name(f"{name}/{label}") for label in ("query", "key", "value")]
        graph.add_node("Split", [packed, split], projected, f"{name}/split", axis=-1)
    else:
        projected = []
        for index, (label, source) in enumerate(zip(("query", "key", "value"), sources)):
            rows = slice(index * embed, (index + 1) * embed)
            part_weight = graph.add_tensor_initializer(f"{name}.{label}_weight", module.in_proj_weight[rows])
            part_bias = None
            if module.in_proj_bias is not None:
                part_bias = graph.add_tensor_initializer(f"{name}.{label}_bias", module.in_proj_bias[rows])
            projected.append(_linear(graph, f"{name}/{label}_proj", source, part_weight, part_bias))

    heads_first = []
    for label, tensor, length in zip(("query", "key", "value"), projected, (query_length, key_length, key_length)):
        split_heads = _reshape(graph, tensor, [-1, length, heads, head_dim], f"{name}/{label}_heads")
        heads_first.append(graph.step("Transpose", [split_heads], f"{name}/{label}_heads_first", perm=[0, 2, 1, 3]))
    context, probabilities = _attention(graph, name, *heads_first, scale=head_dim**-0.5)

    merged = graph.step("Transpose", [context], f"{name}/context_t", perm=[0, 2, 1, 3])
    merged = _reshape(graph, merged, [-1, query_length, embed], f"{name}/merged")
    out_weight = graph.add_tensor_initializer(f"{name}.out_proj.weight", module.out_proj.weight)
    out_bias = graph.add_tensor_initializer(f"{name}.out_proj.bias", module.out_proj.bias) if module.out_proj.bias is not None else None
    output = _linear(graph, f"{name}/out_proj", merged, out_weight, out_bias)
    if not module.batch_first:
        output = graph.step("Transpose", [output], f"{name}/sequence_first", perm=[1, 0, 2])

    weights = None
    if graph.value(argument(node, 4, "need_weights", True)):
        if graph.value(argument(node, 6, "average_attn_weights", True)):
            if graph.opset >= REDUCE_AXES_INPUT_OPSET:
                axes = graph.add_constant(f"{name}/head_axis", [1], np.int64)
                weights = graph.step("ReduceMean", [probabilities, axes], f"{name}/weights", keepdims=0)
            else:
                weights = graph.step("ReduceMean", [probabilities], f"{name}/weights", axes=[1], keepdims=0)
        else:
            weights = probabilities
    graph.sequences[node.name] = [output, weights]


@register_function(swin_transformer._get_relative_position_bias)
def emit_relative_position_bias(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """The bias depends on parameters only: compute it now and store it as an initializer."""
    table, index = (_fetch_attribute(graph.graph_module, str(arg.target)) for arg in node.args[:2])
    bias = swin_transformer._get_relative_position_bias(table, index, list(graph.value(node.args[2])))
    graph.bind(node, graph.add_tensor_initializer(node.name, bias))


def _pad_end(graph: OnnxGraph, source: str, ends: Sequence[int], name: str) -> str:
    """Zero-pad the end of each axis of a rank-4 tensor."""
    if not any(ends):
        return source
    pads = graph.add_constant(f"{name}_pads", [0] * len(ends) + list(ends), np.int64)
    return graph.step("Pad", [source, pads], name)


@register_function(swin_transformer.shifted_window_attention)
def emit_shifted_window_attention(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Window partition, attention with relative position bias and shift mask, and the reverse."""
    names = (
        "input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads", "shift_size",
        "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training",
    )  # fmt: skip
    args = {label: argument(node, index, label) for index, label in enumerate(names)}
    if args["logit_scale"] is not None:
        raise EmitError(f"ONNX export: node '{node.name}': Swin V2 cosine attention (logit_scale) is not supported")
    if graph.value(args["training"]) and (graph.value(args["dropout"]) or graph.value(args["attention_dropout"])):
        raise EmitError(f"ONNX export: node '{node.name}': shifted_window_attention with training=True; export in eval mode")

    name = node.name
    window = list(graph.value(args["window_size"]))
    heads = int(graph.value(args["num_heads"]))
    _, height, width, channels = graph.shape(args["input"])
    pad_h = height + (window[0] - height % window[0]) % window[0]
    pad_w = width + (window[1] - width % window[1]) % window[1]
    shift = list(graph.value(args["shift_size"]))
    if window[0] >= pad_h:
        shift[0] = 0
    if window[1] >= pad_w:
        shift[1] = 0
    rows, columns = pad_h // window[0], pad_w // window[1]
    length = window[0] * window[1]
    head_dim = channels // heads

    x = _pad_end(graph, graph.tensor(args["input"]), [0, pad_h - height, pad_w - width, 0], f"{name}/pad")
    x = roll(graph, x, [-shift[0], -shift[1]], [1, 2], [-1, pad_h, pad_w, channels], f"{name}/shift")
    x = _reshape(graph, x, [-1, rows, window[0], columns, window[1], channels], f"{name}/grid")
    x = graph.step("Transpose", [x], f"{name}/grid_t", perm=[0, 1, 3, 2, 4, 5])
    x = _reshape(graph, x, [-1, length, channels], f"{name}/windows")

    qkv_bias = graph.tensor(args["qkv_bias"]) if args["qkv_bias"] is not None else None
    qkv = _linear(graph, f"{name}/qkv", x, graph.tensor(args["qkv_weight"]), qkv_bias)
    qkv = _reshape(graph, qkv, [-1, length, 3, heads, head_dim], f"{name}/qkv_heads")
    qkv = graph.step("Transpose", [qkv], f"{name}/qkv_t", perm=[2, 0, 3, 1, 4])
    parts = []
    for position, label in enumerate(("query", "key", "value")):
        index = graph.add_constant(f"{name}/{label}_index", position, np.int64)
        parts.append(graph.step("Gather", [qkv, index], f"{name}/{label}", axis=0))

    key_t = graph.step("Transpose", [parts[1]], f"{name}/key_t", perm=[0, 1, 3, 2])
    scaled = graph.step("Mul", [parts[0], graph.add_constant(f"{name}/scale", head_dim**-0.5, np.float32)], f"{name}/query_scaled")
    attn = graph.step("MatMul", [scaled, key_t], f"{name}/scores")
    attn = graph.step("Add", [attn, graph.tensor(args["relative_position_bias"])], f"{name}/biased")
    if sum(shift) > 0:
        attn = _reshape(graph, attn, [-1, rows * columns, heads, length, length], f"{name}/per_window")
        mask = graph.add_initializer(f"{name}/shift_mask", window_attention.shift_mask((pad_h, pad_w), window, shift).unsqueeze(0).numpy())
        attn = graph.step("Add", [attn, mask], f"{name}/masked")
        attn = _reshape(graph, attn, [-1, heads, length, length], f"{name}/masked_flat")
    attn = graph.step("Softmax", [attn], f"{name}/probabilities", axis=-1)

    x = graph.step("MatMul", [attn, parts[2]], f"{name}/context")
    x = graph.step("Transpose", [x], f"{name}/context_t", perm=[0, 2, 1, 3])
    x = _reshape(graph, x, [-1, length, channels], f"{name}/merged")
    proj_bias = graph.tensor(args["proj_bias"]) if args["proj_bias"] is not None else None
    x = _linear(graph, f"{name}/proj", x, graph.tensor(args["proj_weight"]), proj_bias)

    x = _reshape(graph, x, [-1, rows, columns, window[0], window[1], channels], f"{name}/window_grid")
    x = graph.step("Transpose", [x], f"{name}/window_grid_t", perm=[0, 1, 3, 2, 4, 5])
    x = _reshape(graph, x, [-1, pad_h, pad_w, channels], f"{name}/image")
    x = roll(graph, x, shift, [1, 2], [-1, pad_h, pad_w, channels], f"{name}/unshift")
    if pad_h != height or pad_w != width:
        inputs = [x] + [
            graph.add_constant(f"{name}/crop_{key}", values, np.int64)
            for key, values in (("starts", [0, 0]), ("ends", [height, width]), ("axes", [1, 2]))
        ]
        x = graph.step("Slice", inputs, f"{name}/crop")
    graph.emit("Identity", node, [x])


@register_function(swin_transformer._patch_merging_pad)
def emit_patch_merging_pad(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Pad H and W to even, then concatenate the four 2x2 phases on the channel axis."""
    _, height, width, _ = graph.shape(node.args[0])
    x = _pad_end(graph, graph.tensor(node.args[0]), [0, height % 2, width % 2, 0], f"{node.name}/pad")
    phases = []
    for row, column in ((0, 0), (1, 0), (0, 1), (1, 1)):
        inputs = [x] + [
            graph.add_constant(f"{node.name}/phase{row}{column}_{key}", values, np.int64)
            for key, values in (("starts", [row, column]), ("ends", [np.iinfo(np.int64).max] * 2), ("axes", [1, 2]), ("steps", [2, 2]))
        ]
        phases.append(graph.step("Slice", inputs, f"{node.name}/phase{row}{column}"))
    graph.emit("Concat", node, phases, axis=-1)


@register_function(window_attention.masked_softmax)
def emit_masked_softmax(graph: OnnxGraph, node: torch.fx.Node, module: nn.Module | None) -> None:
    """Softmax over the last axis of the scores plus the shift mask, per window."""
    scores, mask = node.args[0], node.args[1]
    windows = int(graph.value(argument(node, 2, "windows")))
    _, heads, length, _ = graph.shape(scores)
    per_window = _reshape(graph, graph.tensor(scores), [-1, windows, heads, length, length], f"{node.name}/per_window")
    masked = graph.step("Add", [per_window, graph.tensor(mask)], f"{node.name}/masked")
    flat = _reshape(graph, masked, [-1, heads, length, length], f"{node.name}/masked_flat")
    graph.emit("Softmax", node, [flat], axis=-1)
