"""One entry of the pipeline's ``data:`` section, with schema defaults filled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.schema import PIPELINE_SCHEMA, fill_defaults, load_schema


@dataclass(frozen=True)
class DatasetSpec:
    """A data set entry; field meanings are in ``$defs/dataset`` of the pipeline schema."""

    name: str
    source: str
    split: str
    test_size: float
    seed: int
    batch_size: int
    crops_per_image: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    limit: int | None = None
    image_size: int | None = None
    resize: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> DatasetSpec:
        """Build a spec from a ``data:`` entry, filling the schema's defaults.

        The engine fills them already; filling again lets scripts pass a
        hand-written entry such as ``{"source": "digits", "split": "test"}``.
        """
        values = fill_defaults(load_schema(PIPELINE_SCHEMA)["$defs"]["dataset"], dict(spec))
        values.pop("name", None)
        label = name or spec.get("name") or values["source"]
        return cls(name=str(label), **values)

    @property
    def is_factory(self) -> bool:
        """Whether the source is a user's ``module:callable``."""
        return ":" in self.source
