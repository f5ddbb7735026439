"""Helpers the int8 module families share."""

from __future__ import annotations

from stages.quant.arithmetic import QParams, to_float32


def pair(value: int | tuple[int, ...] | list[int] | None) -> tuple[int, int]:
    """Return an int or a one- or two-element sequence as a pair of ints."""
    if value is None:
        raise ValueError("expected an int or a pair of ints, got None")
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    return (int(value[0]), int(value[1]))


def repr_qparams(label: str, qparams: QParams) -> str:
    """Return ``label=(scale=..., zero_point=..., dtype)`` for a module's extra_repr."""
    return f"{label}=(scale={to_float32(qparams.scale):.6g}, zero_point={qparams.zero_point}, {qparams.dtype})"
