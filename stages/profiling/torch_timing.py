"""Model size, MACs and latency of GraphModules in PyTorch."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from stages.profiling.stats import Latency

# Seed of the random input that timing runs use; values do not change speed.
INPUT_SEED = 0


# Buffer names that hold a layer's weights in int8 modules (int8 weight, int32 bias).
WEIGHT_BUFFERS = ("weight", "bias")


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of weights: parameters plus the weight and bias buffers of int8 modules.

    Scales, zero points, multipliers and BatchNorm running statistics are
    not counted.
    """
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for name, buffer in model.named_buffers() if name.rsplit(".", 1)[-1] in WEIGHT_BUFFERS)
    return parameters + buffers


def count_macs(model: torch.nn.Module, input_shape: list[int]) -> int:
    """Return multiply-accumulates of one forward pass: torch's FLOP count / 2.

    torch.utils.flop_counter counts 2 FLOPs per multiply-accumulate of
    convolutions and matrix products; element-wise ops are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    example = random_input(input_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return int(counter.get_total_flops()) // 2


def random_input(shape: list[int]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(INPUT_SEED))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_torch(model: torch.nn.Module, input_shape: list[int], threads: int, warmup: int, repeats: int) -> Latency:
    """Time ``repeats`` forward passes after ``warmup`` untimed ones."""
    example = random_input(input_shape)
    samples = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(example)
        for _ in range(repeats):
            started = time.perf_counter()
            model(example)
            samples.append(time.perf_counter() - started)
    return Latency.from_seconds(samples)
