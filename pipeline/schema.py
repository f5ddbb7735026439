"""The JSON Schemas in ``schemas/``: loading, defaults and readable errors.

``schemas/pipeline.schema.json`` defines the file; ``schemas/stages/<kind>
.schema.json`` defines each kind's params. They are the only definition of
both: stage code reads its defaults from the params the engine fills here.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import schemas

# The schemas package sits next to `pipeline` and `stages` in a checkout and
# in an installed wheel.
SCHEMA_DIR = Path(schemas.__file__).resolve().parent
PIPELINE_SCHEMA = SCHEMA_DIR / "pipeline.schema.json"


def stage_schema_path(kind: str) -> Path:
    return SCHEMA_DIR / "stages" / f"{kind}.schema.json"


@lru_cache(maxsize=None)
def load_schema(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def schemas_digest(kinds: Iterable[str]) -> str:
    """Digest of the pipeline schema and of the given kinds' schemas."""
    digest = hashlib.sha256()
    for path in [PIPELINE_SCHEMA, *(stage_schema_path(kind) for kind in sorted(set(kinds)))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()


def fill_defaults(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` with the top-level defaults of ``schema`` added."""
    filled = dict(values)
    for key, spec in schema.get("properties", {}).items():
        if key not in filled and "default" in spec:
            filled[key] = json.loads(json.dumps(spec["default"]))
    return filled


def validation_errors(schema: dict[str, Any], instance: Any) -> list[Any]:
    """Return jsonschema errors, most relevant first."""
    import jsonschema
    from jsonschema.exceptions import relevance

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    return sorted(validator.iter_errors(instance), key=relevance)


def describe_error(error: Any) -> tuple[tuple[Any, ...], str]:
    """Turn a jsonschema error into ``(path, message)`` for one line.

    The message names the field, the bad value and what is allowed.
    """
    path = tuple(error.absolute_path)
    field = _format_path(path)
    value = error.instance
    validator = error.validator
    spec = error.schema if isinstance(error.schema, dict) else {}

    if validator == "additionalProperties":
        allowed = sorted(spec.get("properties", {}))
        extra = sorted(set(value) - set(allowed)) if isinstance(value, dict) else []
        unknown = extra[0] if extra else "?"
        where = f"{field}: " if field else ""
        return path + (unknown,), f"{where}unknown field '{unknown}'; allowed: {', '.join(allowed)}"
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        where = f"{field}: " if field else ""
        return path, f"{where}missing required field '{missing}'"
    if validator == "enum":
        allowed = ", ".join(str(item) for item in error.validator_value)
        return path, f"{field}: {value!r} is not allowed; allowed: {allowed}"
    if validator == "const":
        return path, f"{field}: {value!r} is not allowed; expected {error.validator_value!r}"
    if validator == "type":
        return path, f"{field}: {value!r} is not of type {error.validator_value}"
    if validator == "pattern":
        hint = spec.get("description") or f"a string matching {error.validator_value}"
        return path, f"{field}: {value!r} is not valid; expected {hint}"
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[validator]
        return path, f"{field}: {value!r} is out of range; expected {bound} {error.validator_value}"
    return path, f"{field}: {error.message}"


def _format_path(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
