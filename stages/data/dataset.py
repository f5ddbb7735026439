"""The in-memory data set every stage reads: preprocessed inputs, labels, batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Dataset:
    """A preprocessed data set held in memory.

    ``inputs`` is float32, N x C x H x W, already scaled and normalized the way
    the model expects. ``labels`` is int64 of shape N, or None for data without
    classes (photos, random inputs).
    """

    name: str
    inputs: np.ndarray
    labels: np.ndarray | None
    batch_size: int

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.inputs.shape[1:])

    def batches(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(inputs, labels)`` tensors in order; labels are None without labels."""
        import torch

        count = self.num_batches if max_batches is None else min(self.num_batches, max_batches)
        for index in range(count):
            start = index * self.batch_size
            stop = start + self.batch_size
            inputs = torch.from_numpy(self.inputs[start:stop])
            labels = None if self.labels is None else torch.from_numpy(self.labels[start:stop])
            yield inputs, labels


def normalize(inputs: np.ndarray, mean: Any, std: Any, name: str) -> np.ndarray:
    """Subtract the per-channel ``mean`` and divide by ``std`` (channel axis 1).

    Either may be None (skipped). A list of one value applies to every channel.
    """
    import numpy as np

    from pipeline.errors import StageError

    channels = inputs.shape[1]
    for field, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise StageError(
                f"data set '{name}': {field} has {len(values)} values but the inputs have "
                f"{channels} channels; give 1 or {channels} values"
            )

    shape = (1, -1) + (1,) * (inputs.ndim - 2)
    if mean is not None:
        inputs = inputs - np.asarray(mean, dtype=np.float32).reshape(shape)
    if std is not None:
        inputs = inputs / np.asarray(std, dtype=np.float32).reshape(shape)
    return inputs.astype(np.float32, copy=False)
