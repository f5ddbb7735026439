"""Deterministic train/test splits and sample limits.

The test side of a split has ``test_size`` samples (a share below 1 or a
count of 1 or more). With labels the split is stratified: each class keeps
its share of the test side, with leftover places given to the classes of
largest remainder. Everything depends only on the seed, the labels and the
number of samples, so the calibration, evaluation and training code that ask
for the same split get the same indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import StageError

if TYPE_CHECKING:
    import numpy as np

# Streams derived from the one ``seed`` of a data set, so that the split, the
# limit and the random crops do not reuse the same random numbers.
SPLIT_STREAM = 0
LIMIT_STREAM = 1
CROP_STREAM = 2


def rng_for(seed: int, stream: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng([seed, stream])


def held_out_count(test_size: float, total: int, name: str) -> int:
    """Number of held-out samples for a share (below 1) or a count (1 or more)."""
    if test_size < 1:
        count = int(round(test_size * total))
    else:
        count = int(test_size)
    if not 1 <= count <= total - 1:
        raise StageError(
            f"data set '{name}': test_size {test_size} leaves {count} of {total} samples on "
            f"the test side; choose a test_size that keeps at least one sample on each side"
        )
    return count


def split_indices(
    total: int,
    labels: np.ndarray | None,
    split: str,
    test_size: float,
    seed: int,
    name: str,
) -> np.ndarray:
    """Return the sorted indices of one side (``train``, ``test`` or ``all``)."""
    import numpy as np

    if split == "all":
        return np.arange(total)

    count = held_out_count(test_size, total, name)
    rng = rng_for(seed, SPLIT_STREAM)
    if labels is None:
        test = rng.permutation(total)[:count]
    else:
        test = _stratified_test(labels, count, rng)

    is_test = np.zeros(total, dtype=bool)
    is_test[test] = True
    if split == "test":
        return np.flatnonzero(is_test)
    if split == "train":
        return np.flatnonzero(~is_test)
    raise StageError(f"data set '{name}': unknown split '{split}'; use train, test or all")


def limit_indices(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Keep a seeded random subset of at most ``limit`` indices, in their order."""
    import numpy as np

    if limit is None or limit >= len(indices):
        return indices
    chosen = rng_for(seed, LIMIT_STREAM).permutation(len(indices))[:limit]
    return indices[np.sort(chosen)]


def _stratified_test(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    classes, class_sizes = np.unique(labels, return_counts=True)
    ideal = count * class_sizes / len(labels)
    per_class = np.floor(ideal).astype(np.int64)

    # Largest remainder: the places that rounding down left free go to the
    # classes whose ideal share lost most; ties go to the smaller label.
    remainder = ideal - per_class
    order = np.lexsort((classes, -remainder))
    for class_index in order[: count - int(per_class.sum())]:
        per_class[class_index] += 1

    test = []
    for label, take in zip(classes, per_class):
        members = np.flatnonzero(labels == label)
        test.append(members[rng.permutation(len(members))[:take]])
    return np.concatenate(test)
