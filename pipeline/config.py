"""Loading and validating a pipeline file into a :class:`Pipeline`.

Validation happens before anything runs: the file against
``schemas/pipeline.schema.json``, each stage's params against its kind's
schema, ``needs`` names, data set names, ``--set`` overrides, and the input
bindings of the DAG. Every problem is a ConfigError naming the file, line,
field, bad value and what is allowed.

A validated pipeline is cached in the cache folder under a digest of the file
bytes, the overrides and the schemas, so a run of an unchanged file skips
jsonschema and networkx entirely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import schema as schemas
from pipeline.errors import ConfigError
from pipeline.source_map import display_path, line_of, load_with_lines

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
RESERVED = ("name", "kind", "needs")


@dataclass
class StageSpec:
    """One stage of the file: identity, dependencies and filled-in params."""

    name: str
    kind: str
    needs: list[str]
    params: dict[str, Any]
    line: int
    # input name -> producing stage name (or names, for a `many` input)
    bindings: dict[str, str | list[str]] = field(default_factory=dict)
    # output name -> artifact type
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Pipeline:
    """A validated pipeline file."""

    path: Path
    document: dict[str, Any]
    stages: list[StageSpec]
    order: list[str]
    overrides: dict[str, dict[str, Any]]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.document["name"]

    @property
    def output_dir(self) -> Path:
        return self.root / self.document.get("output", "out")

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        names = ", ".join(spec.name for spec in self.stages)
        raise ConfigError(f"{self.path}: no stage named '{name}'; stages: {names}")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``STAGE.PARAM=VALUE``; the value is read as a YAML scalar."""
    import yaml

    from pipeline.source_map import PipelineLoader

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected STAGE.PARAM=VALUE, e.g. --set calibrate.max_batches=4")
    target, raw = text.split("=", 1)
    stage, param = target.split(".", 1)
    try:
        value = yaml.load(raw, Loader=PipelineLoader) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value {raw!r} is not valid YAML") from exc
    return stage, param, value


def load(path: Path, overrides: dict[str, dict[str, Any]] | None = None, plan_dir: Path | None = None) -> Pipeline:
    """Load and validate ``path``, reusing a cached plan when the file is unchanged."""
    path = Path(path).resolve()
    overrides = overrides or {}
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{display_path(path)}: pipeline file not found; check the path") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file: {exc.strerror}") from exc

    plan_file = None
    if plan_dir is not None:
        plan_file = plan_dir / f"{_plan_digest(path, raw, overrides)}.json"
        cached = _read_plan(plan_file, path)
        if cached is not None:
            log.debug("plan: reused validated plan %s", plan_file.name)
            return cached

    pipeline = _validate(path, raw.decode("utf-8", errors="replace"), overrides)
    if plan_file is not None:
        _write_plan(plan_file, pipeline)
    return pipeline


def _plan_digest(path: Path, raw: bytes, overrides: dict[str, dict[str, Any]]) -> str:
    from stages import KINDS

    digest = hashlib.sha256()
    digest.update(f"plan-format={PLAN_FORMAT}\n{path}\n".encode())
    digest.update(raw)
    digest.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    digest.update(schemas.schemas_digest(KINDS).encode())
    return digest.hexdigest()


def _read_plan(plan_file: Path, path: Path) -> Pipeline | None:
    try:
        data = json.loads(plan_file.read_text())
        if data.get("format") != PLAN_FORMAT:
            return None
        stages = [StageSpec(**spec) for spec in data["stages"]]
        return Pipeline(path, data["document"], stages, data["order"], data["overrides"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_plan(plan_file: Path, pipeline: Pipeline) -> None:
    data = {
        "format": PLAN_FORMAT,
        "document": pipeline.document,
        "stages": [asdict(spec) for spec in pipeline.stages],
        "order": pipeline.order,
        "overrides": pipeline.overrides,
    }
    try:
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan_file.with_name(f".{plan_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, plan_file)
    except OSError as exc:
        log.debug("plan: not cached (%s)", exc)


def _validate(path: Path, text: str, overrides: dict[str, dict[str, Any]]) -> Pipeline:
    from pipeline import dag
    from stages import KINDS, load_stage

    document, lines = load_with_lines(text, path)
    if not isinstance(document, dict):
        raise ConfigError(f"{display_path(path)}:1: expected a mapping with version, name, model, data, output and stages")

    top_schema = schemas.load_schema(schemas.PIPELINE_SCHEMA)
    errors = schemas.validation_errors(top_schema, document)
    if errors:
        field_path, message = schemas.describe_error(errors[0])
        raise _error_at(path, lines, field_path, _with_stage_name(document, field_path, message))

    document = _fill_section_defaults(top_schema, document)

    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(document["stages"]):
        name, kind = entry["name"], entry["kind"]
        where = ("stages", index)
        if name in seen:
            raise _error_at(path, lines, where + ("name",), f"stages[{index}].name: duplicate stage name '{name}'; the first is stages[{seen[name]}], rename one")
        seen[name] = index

        if "needs" in entry:
            needs = list(entry["needs"])
        else:
            needs = [document["stages"][index - 1]["name"]] if index > 0 else []

        params = {key: value for key, value in entry.items() if key not in RESERVED}
        params.update(overrides.get(name, {}))
        params = _validate_params(path, lines, index, name, kind, params, document, set(overrides.get(name, {})))
        stages.append(StageSpec(name=name, kind=kind, needs=needs, params=params, line=line_of(lines, where) or 1))

    unknown_override = sorted(set(overrides) - set(seen))
    if unknown_override:
        raise ConfigError(f"--set {unknown_override[0]}.…: no stage named '{unknown_override[0]}'; stages: {', '.join(seen)}")

    for index, spec in enumerate(stages):
        for need in spec.needs:
            if need not in seen:
                raise _error_at(
                    path, lines, ("stages", index, "needs"),
                    f"stages[{index}] ({spec.name}).needs: unknown stage '{need}'; stages: {', '.join(seen)}",
                )

    order = dag.resolve(path, lines, stages, KINDS)
    for spec in stages:
        for field_path, message in load_stage(spec.kind).problems(spec.params, document, path.parent):
            raise _error_at(path, lines, field_path, message)
    return Pipeline(path, document, stages, order, overrides)


def _fill_section_defaults(top_schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    document = schemas.fill_defaults(top_schema, document)
    defs = top_schema["$defs"]
    document["model"] = schemas.fill_defaults(defs["model"], document["model"])
    document["data"] = {
        name: schemas.fill_defaults(defs["dataset"], spec) for name, spec in (document.get("data") or {}).items()
    }
    return document


def _validate_params(
    path: Path,
    lines: dict,
    index: int,
    name: str,
    kind: str,
    params: dict[str, Any],
    document: dict[str, Any],
    overridden: set[str],
) -> dict[str, Any]:
    schema_path = schemas.stage_schema_path(kind)
    if not schema_path.exists():
        raise ConfigError(f"{schema_path}: schema of stage kind '{kind}' is missing; reinstall brocolli")
    kind_schema = schemas.load_schema(schema_path)

    errors = schemas.validation_errors(kind_schema, params)
    if errors:
        error_path, message = schemas.describe_error(errors[0])
        field_name = error_path[0] if error_path else None
        if field_name in overridden:
            raise ConfigError(f"--set {name}.{field_name}: {message}")
        prefix = f"stages[{index}] ({name})"
        message = f"{prefix}.{message}" if not message.startswith("unknown") and not message.startswith("missing") else f"{prefix}: {message}"
        raise _error_at(path, lines, ("stages", index) + tuple(error_path), message)

    params = schemas.fill_defaults(kind_schema, params)
    data_name = params.get("data")
    if isinstance(data_name, str) and data_name not in document["data"]:
        known = ", ".join(document["data"]) or "none defined"
        raise _error_at(
            path, lines, ("stages", index, "data"),
            f"stages[{index}] ({name}).data: unknown data set '{data_name}'; data sets: {known}",
        )
    return params


def _with_stage_name(document: dict[str, Any], field_path: tuple[Any, ...], message: str) -> str:
    """Return ``message`` with ``stages[i]`` followed by that stage's name, when the file gives one."""
    if len(field_path) < 2 or field_path[0] != "stages" or not isinstance(field_path[1], int):
        return message
    try:
        name = document["stages"][field_path[1]]["name"]
    except (IndexError, KeyError, TypeError):
        return message
    prefix = f"stages[{field_path[1]}]"
    if not isinstance(name, str) or not message.startswith(prefix):
        return message
    return f"{prefix} ({name})" + message[len(prefix):]


def _error_at(path: Path, lines: dict, field_path: tuple[Any, ...], message: str) -> ConfigError:
    line = line_of(lines, field_path)
    location = f"{display_path(path)}:{line}" if line else display_path(path)
    return ConfigError(f"{location}: {message}")
