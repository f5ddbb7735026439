"""The base class of stage kinds that read the data set named by their ``data`` param."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.contract import Stage

# The data set's source is not known from params alone, so a stage that
# reads one lists every package a source may read.
DATASET_PACKAGES = ("torch", "numpy", "scikit-learn", "torchvision", "pillow", "scikit-image", "matplotlib")


class DatasetStage(Stage):
    """A stage whose ``data`` param names an entry of the pipeline's data section.

    Its key covers that entry (``config``), the entry's files and the
    packages that load them. ``run`` loads it with ``load_dataset(ctx.config["data"], ...)``.
    """

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return DATASET_PACKAGES

    def config(self, params: Mapping[str, Any], pipeline: Mapping[str, Any]) -> dict[str, Any]:
        return {"data": pipeline["data"][params["data"]]}

    def files(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[Path]:
        from stages.data import dataset_files

        return dataset_files(pipeline["data"][params["data"]], root, params["data"])
