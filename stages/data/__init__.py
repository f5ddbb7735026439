"""Data sets of the ``data:`` section: sources, splits and preprocessing.

Stages load data only through :func:`load_dataset`. Each source lives in its
own module (``digits``, ``synthetic`` for ``random``, ``npy``, ``images``,
``sample_photos``, ``factory`` for ``module:callable``); ``loader``
dispatches to them.
"""

from __future__ import annotations

from stages.data.dataset import Dataset
from stages.data.loader import dataset_files, dataset_packages, load_dataset
from stages.data.spec import DatasetSpec

__all__ = ["Dataset", "DatasetSpec", "dataset_files", "dataset_packages", "load_dataset"]
