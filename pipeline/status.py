"""``pipe status``: which stages are cached, which are stale, and why.

Computes each stage's key the way a run would, without running anything and
without importing torch. A stage whose upstream is stale is stale too: its
key cannot be known before the upstream runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import config as config_module
from pipeline import lock as lock_module
from pipeline.hashing import FileDigests
from pipeline.keys import explain_change, key_from_parts, key_parts
from pipeline.runner import cache_for


def pipeline_status(path: Path, overrides: dict[str, dict[str, Any]], cache_dir: Path | None) -> dict[str, Any]:
    from stages import load_stage

    cache = cache_for(path, cache_dir)
    cache.ensure()
    pipeline = config_module.load(Path(path), overrides, cache.plans_dir)
    old_lock = lock_module.read(pipeline.lock_path)
    file_digests = FileDigests(cache.root / "file-digests.json")

    outputs: dict[str, dict[str, str]] = {}
    stale_names: set[str] = set()
    rows = []
    for name in pipeline.order:
        spec = pipeline.stage(name)
        stage = load_stage(spec.kind)
        row: dict[str, Any] = {"name": name, "kind": spec.kind}
        rows.append(row)

        stale_upstream = [producer for producer in _producers(spec) if producer in stale_names]
        if stale_upstream:
            row.update(status="stale", reason=f"upstream stage '{stale_upstream[0]}' is stale")
            stale_names.add(name)
            continue

        digests: dict[str, Any] = {}
        for input_name, bound in spec.bindings.items():
            artifact = next(i.artifact for i in stage.inputs(spec.params) if i.name == input_name)
            producers = bound if isinstance(bound, list) else [bound]
            values = []
            for producer in producers:
                producer_spec = pipeline.stage(producer)
                output_name = next(o for o, kind in producer_spec.outputs.items() if kind == artifact)
                values.append(outputs[producer][output_name])
            digests[input_name] = values if isinstance(bound, list) else values[0]

        parts = key_parts(spec, stage, pipeline, digests, file_digests)
        key = key_from_parts(parts)
        row["key"] = key
        record = cache.read_record(key)
        if record is not None and all(cache.check_artifact(d, quick=True) for d in record.outputs.values()):
            row["status"] = "cached"
            outputs[name] = record.outputs
            previous = old_lock.get(name)
            if previous is not None and previous.get("key") != key:
                row["note"] = "cached, but the lock file records another key; run to update the lock"
            continue

        stale_names.add(name)
        row["status"] = "stale"
        previous = old_lock.get(name)
        if previous is None:
            row["reason"] = "not run before"
        elif previous.get("key") == key:
            row["reason"] = "recorded in the lock file but not in the cache"
        else:
            old_record = cache.read_record(previous.get("key", ""))
            row["reason"] = explain_change(old_record.parts, parts) if old_record and old_record.parts else "key changed"
    file_digests.save()

    return {
        "pipeline": pipeline.name,
        "stages": rows,
        "stale": [row["name"] for row in rows if row["status"] == "stale"],
    }


def _producers(spec: Any) -> list[str]:
    names = []
    for bound in spec.bindings.values():
        names.extend(bound if isinstance(bound, list) else [bound])
    return names + [need for need in spec.needs if need not in names]
