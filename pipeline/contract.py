"""The stage contract: what the engine knows about a stage kind.

A stage kind is a subclass of :class:`Stage` in its own module under
``stages/``. The engine reads the class attributes and methods below to build
the DAG, compute cache keys and run the stage; it never looks inside.

NOTE: [Import cost] Stage modules are imported for every run, cached or not,
so they must not import torch, onnx or onnxruntime at module level. Heavy
imports go inside :meth:`Stage.run` or into the subpackages it calls.

Artifacts are folders. A stage reads each input artifact from a read-only
folder and writes each output artifact into an empty folder the engine gives
it; the engine hashes the folder, stores it content-addressed and renames it
into place. The files inside an artifact are the stage kinds' business: the
engine only sees bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping


@dataclass(frozen=True)
class Input:
    """A named input of a stage, bound to artifacts of one type.

    ``many=False`` binds the nearest ancestor that produces ``artifact``;
    ``many=True`` binds every ancestor that produces it (possibly none).
    """

    name: str
    artifact: str
    many: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Output:
    """A named output artifact of a stage and its artifact type."""

    name: str
    artifact: str


@dataclass
class StageResult:
    """What a stage returns after it wrote its outputs.

    ``metrics`` reproduce on any machine with the same package versions and
    go to the lock file. ``measurements`` depend on the machine (timings, the
    CPU) and go to the run history and the report. ``publish`` maps a file
    name in the pipeline's output folder to ``"<output name>/<file in that
    artifact>"``; the engine copies those files there after the run and
    restores them from the cache when they are missing. ``message`` is one
    line for a person, such as ``accuracy test passed: ...``.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    publish: dict[str, str] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[int], None]


@dataclass
class StageContext:
    """Everything a running stage may use.

    ``inputs`` maps each input name to its artifact folder, or to a list of
    folders for ``many`` inputs. ``outputs`` maps each output name to an
    empty folder to fill. ``config`` is what :meth:`Stage.config` selected
    from the pipeline file. ``root`` is the folder of the pipeline file,
    against which relative paths in it resolve; ``output_dir`` is the
    pipeline's output folder (the engine publishes into it, a stage only
    names files there).
    """

    stage_name: str
    kind: str
    params: dict[str, Any]
    config: dict[str, Any]
    inputs: dict[str, Path | list[Path]]
    outputs: dict[str, Path]
    root: Path
    output_dir: Path
    progress_factory: Callable[[str, int], ProgressCallback] | None = None
    input_names: dict[str, str | list[str]] = field(default_factory=dict)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"stages.{self.kind}")

    def progress(self, description: str, total: int) -> ProgressCallback:
        """Return a callable that advances a progress bar by ``n`` steps."""
        if self.progress_factory is None:
            return lambda n: None
        return self.progress_factory(description, total)


class Stage:
    """Base class of every stage kind.

    Subclasses set the class attributes and implement :meth:`run`. Methods
    that take ``params`` receive them with schema defaults filled in.
    """

    kind: ClassVar[str]
    # Bump when the artifact format or the meaning of a param changes; the
    # source of the files in ``sources`` is part of the key anyway.
    version: ClassVar[int] = 1
    # Files and folders, relative to the ``stages`` package, whose source is
    # part of the cache key (the stage module itself and the subpackages it
    # calls into).
    sources: ClassVar[tuple[str, ...]] = ()

    def inputs(self, params: Mapping[str, Any]) -> tuple[Input, ...]:
        return ()

    def outputs(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        return ()

    def packages(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """Distribution names whose installed versions are part of the key."""
        return ()

    def config(self, params: Mapping[str, Any], pipeline: Mapping[str, Any]) -> dict[str, Any]:
        """Select the parts of the pipeline file this stage reads.

        ``pipeline`` is the whole validated file. The selection is part of
        the key and is passed to :meth:`run` as ``ctx.config``.
        """
        return {}

    def files(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[Path]:
        """Files this stage reads whose content is part of the key.

        Checkpoints, data files and the source file of a user's
        ``module:callable``. Hashed before the stage runs.
        """
        return []

    def problems(self, params: Mapping[str, Any], pipeline: Mapping[str, Any], root: Path) -> list[tuple[tuple[Any, ...], str]]:
        """Return the problems found without running: (field path in the pipeline file, message).

        ``pipe validate`` and ``pipe run`` report the first one with its line
        in the file. Checks here must be fast and import neither torch nor
        the user's code.
        """
        return []

    def run(self, ctx: StageContext) -> StageResult:
        raise NotImplementedError

    def report(self, name: str, record: Mapping[str, Any]) -> str:
        """Return a Markdown section for ``report.md``, or ``""``.

        ``record`` has ``metrics``, ``measurements`` and ``published`` (the
        output-folder file names, relative to the output folder).
        """
        return ""
