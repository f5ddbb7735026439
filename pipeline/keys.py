"""Stage cache keys.

A stage key is the digest of everything that decides its outputs:

- the key scheme version :data:`KEY_SCHEME`,
- the stage kind, its implementation version and the digest of its source,
- its params (schema defaults filled in, ``--set`` overrides applied),
- the parts of the pipeline file it reads (model section, data sets),
- the content digests of its input artifacts,
- the digests of the files it reads (checkpoint, data, user code),
- the versions of the packages it declares.

The stage name is not part of the key, so pipelines that share a cache and
a stage prefix share entries. The parts are kept next to the key so that
``pipe status`` can say which one changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Pipeline, StageSpec, display_path
from pipeline.contract import Stage
from pipeline.errors import ConfigError, StageError
from pipeline.hashing import FileDigests, canonical_json, package_version, sha256_bytes, source_digest

KEY_SCHEME = 1
STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"


def key_parts(
    spec: StageSpec,
    stage: Stage,
    pipeline: Pipeline,
    input_digests: dict[str, str | list[str]],
    file_digests: FileDigests,
) -> dict[str, Any]:
    """Return the named parts of ``spec``'s key, each already a digest or a small value."""
    config = stage.config(spec.params, pipeline.document)
    files = {}
    for relative, path in read_files(spec, stage, pipeline).items():
        try:
            files[relative] = file_digests.digest(path)
        except FileNotFoundError as exc:
            raise _missing(relative, spec, pipeline) from exc
    return {
        "scheme": KEY_SCHEME,
        "kind": f"{spec.kind}@{stage.version}",
        "source": source_digest(STAGES_DIR, tuple(stage.sources)),
        "params": spec.params,
        "config": config,
        "inputs": dict(sorted(input_digests.items())),
        "files": dict(sorted(files.items())),
        "packages": {name: package_version(name) for name in sorted(stage.packages(spec.params))},
    }


def read_files(spec: StageSpec, stage: Stage, pipeline: Pipeline) -> dict[str, Path]:
    """Return the files ``spec`` reads, keyed by their path relative to the pipeline folder.

    Raises ConfigError naming the stage when a file is missing or the stage
    cannot tell which files it reads (a model module that does not exist).
    """
    try:
        paths = stage.files(spec.params, pipeline.document, pipeline.root)
    except StageError as exc:
        raise ConfigError(f"{display_path(pipeline.path)}: stage '{spec.name}': {exc}") from exc
    files = {}
    for path in map(Path, paths):
        try:
            relative = path.resolve().relative_to(pipeline.root).as_posix()
        except ValueError:
            relative = str(path)
        if not path.is_file():
            raise _missing(relative, spec, pipeline)
        files[relative] = path
    return files


def check_files(pipeline: Pipeline) -> None:
    """Raise ConfigError for the first stage, in file order, that reads a missing file."""
    from stages import load_stage

    for spec in pipeline.stages:
        read_files(spec, load_stage(spec.kind), pipeline)


def _missing(relative: str, spec: StageSpec, pipeline: Pipeline) -> ConfigError:
    return ConfigError(f"{relative}: file read by stage '{spec.name}' not found; fix the path in {pipeline.path.name}")


def key_from_parts(parts: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(parts))


def explain_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Name the parts that differ between two key part sets, in words."""
    reasons = []
    if old.get("scheme") != new.get("scheme"):
        reasons.append("the key scheme changed")
    if old.get("kind") != new.get("kind"):
        reasons.append(f"implementation version {old.get('kind')} -> {new.get('kind')}")
    if old.get("source") != new.get("source"):
        reasons.append("stage code changed")
    reasons += _dict_changes("param", old.get("params", {}), new.get("params", {}))
    reasons += _dict_changes("section", old.get("config", {}), new.get("config", {}))
    for name in sorted(set(old.get("inputs", {})) | set(new.get("inputs", {}))):
        if old.get("inputs", {}).get(name) != new.get("inputs", {}).get(name):
            reasons.append(f"input '{name}' changed")
    for name in sorted(set(old.get("files", {})) | set(new.get("files", {}))):
        if old.get("files", {}).get(name) != new.get("files", {}).get(name):
            reasons.append(f"file {name} changed")
    for name in sorted(set(old.get("packages", {})) | set(new.get("packages", {}))):
        before, after = old.get("packages", {}).get(name), new.get("packages", {}).get(name)
        if before != after:
            reasons.append(f"{name} {before} -> {after}")
    return "; ".join(reasons) or "unknown change"


def _dict_changes(label: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(f"{label} {name} added ({new[name]!r})")
        elif name not in new:
            changes.append(f"{label} {name} removed")
        elif old[name] != new[name]:
            before, after = repr(old[name]), repr(new[name])
            if len(before) + len(after) > 80:
                changes.append(f"{label} {name} changed")
            else:
                changes.append(f"{label} {name} {before} -> {after}")
    return changes
