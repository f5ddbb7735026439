"""``pipe gc``: remove cache entries that no lock file references.

Every lock file under a folder names stage keys and artifact digests; a
record or artifact in the cache that none of them names is garbage. Entries
being written (``tmp/`` of live processes) are left alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline import lock as lock_module
from pipeline.cache import Cache
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def referenced(folder: Path) -> tuple[set[str], set[str], list[Path]]:
    """Return (keys, artifact digests, lock files) named by lock files under ``folder``."""
    keys: set[str] = set()
    digests: set[str] = set()
    locks = []
    for lock_path in sorted(folder.rglob("*.lock")):
        if any(part in (".pipe", ".git", ".venv") for part in lock_path.parts):
            continue
        try:
            stages = lock_module.read(lock_path)
        except ConfigError:
            continue
        locks.append(lock_path)
        for entry in stages.values():
            keys.add(entry.get("key", ""))
            digests.update((entry.get("outputs") or {}).values())
    return keys, digests, locks


def collect(cache: Cache, folder: Path, dry_run: bool) -> dict[str, Any]:
    if not (cache.root / "CACHE_FORMAT").exists():
        raise ConfigError(f"{cache.root}: not a pipe cache folder; pass --cache-dir")
    keys, digests, locks = referenced(folder)
    if not locks:
        raise ConfigError(f"{folder}: no lock files found; gc keeps only what lock files name, so it would delete everything")

    removed_records, removed_artifacts, freed = [], [], 0
    for record_path in sorted((cache.root / "records").glob("*/*.json")):
        key = record_path.stem
        if key in keys:
            record = cache.read_record(key)
            if record is not None:
                digests.update(record.outputs.values())
            continue
        removed_records.append(key)
        if not dry_run:
            record_path.unlink(missing_ok=True)

    for entry in sorted((cache.root / "artifacts").glob("*/*")):
        if entry.name in digests:
            continue
        size = sum(file.stat().st_size for file in entry.rglob("*") if file.is_file())
        freed += size
        removed_artifacts.append(entry.name)
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True)

    log.info("gc: %d records and %d artifacts %s", len(removed_records), len(removed_artifacts),
             "would be removed" if dry_run else "removed")
    return {
        "cache": str(cache.root),
        "lock_files": [str(path) for path in locks],
        "dry_run": dry_run,
        "removed_records": removed_records,
        "removed_artifacts": removed_artifacts,
        "freed_bytes": freed,
    }
