"""The `pipe` engine: config, DAG, cache, lock, runner and CLI.

Public API for scripts and notebooks; each function returns the same data as
the matching command's ``--json`` output::

    import pipeline
    result = pipeline.run("examples/resnet_int8.yaml", overrides={"calibrate": {"max_batches": 4}})
    result["metrics"]["evaluate"]["top1_int8"]

The engine imports no torch; stages do, when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run", "status"]


def run(
    path: str | Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    cache_dir: str | Path | None = None,
    force: tuple[str, ...] = (),
    force_all: bool = False,
    from_stage: str | None = None,
    to_stage: str | None = None,
    only: str | None = None,
    dry_run: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run a pipeline file and return the ``pipe run --json`` object.

    Raises :class:`pipeline.errors.ConfigError` for an invalid file or option.
    """
    from pipeline.runner import RunOptions
    from pipeline.runner import run as run_pipeline

    options = RunOptions(
        overrides=overrides or {},
        cache_dir=Path(cache_dir) if cache_dir else None,
        force=tuple(force),
        force_all=force_all,
        from_stage=from_stage,
        to_stage=to_stage,
        only=only,
        dry_run=dry_run,
        jobs=jobs,
    )
    return run_pipeline(Path(path), options).to_json()


def status(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None, *, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Return the ``pipe status --json`` object: each stage cached or stale, and why."""
    from pipeline.status import pipeline_status

    return pipeline_status(Path(path), overrides or {}, Path(cache_dir) if cache_dir else None)
