"""The lock file, ``<pipeline stem>.lock``, committed beside the pipeline file.

It records, for each stage that last ran or was cached, the stage key, the
digests of its output artifacts and its deterministic metrics, in file
order with sorted keys, so ``git diff`` of two commits shows what changed.
Machine-dependent values (timings, the CPU) never go here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.cache import write_atomic
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FORMAT = 1
HEADER = "# Written by `pipe run`. Commit it with the pipeline file; do not edit by hand.\n"


def read(path: Path) -> dict[str, Any]:
    """Return the lock's ``stages`` mapping, or ``{}`` when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return parse(text, str(path))


def parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: lock file is not valid YAML; restore it from git or delete it") from exc
    if data.get("format") != LOCK_FORMAT:
        raise ConfigError(
            f"{source}: lock format {data.get('format')!r}, this pipe writes {LOCK_FORMAT}; "
            "delete the lock file to rebuild it"
        )
    return data.get("stages") or {}


def render(pipeline_name: str, stages: dict[str, Any]) -> str:
    body = {"format": LOCK_FORMAT, "pipeline": pipeline_name, "stages": stages}
    return HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True)


def entry(kind: str, key: str, outputs: dict[str, str], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "key": key,
        "outputs": dict(sorted(outputs.items())),
        "metrics": _sorted(metrics),
    }


def differs(path: Path, pipeline_name: str, order: list[str], stages: dict[str, Any]) -> bool:
    """Return whether writing these stages would change the lock file."""
    ordered = {name: stages[name] for name in order if name in stages}
    try:
        return path.read_text() != render(pipeline_name, ordered)
    except OSError:
        # No lock yet: write one only when a stage has something to record.
        return bool(ordered)


def write(path: Path, pipeline_name: str, order: list[str], stages: dict[str, Any]) -> bool:
    """Write the lock if its content changed; return whether it was written."""
    ordered = {name: stages[name] for name in order if name in stages}
    text = render(pipeline_name, ordered)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    write_atomic(path, text.encode())
    log.debug("lock: wrote %s", path)
    return True


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(item) for item in value]
    return value
