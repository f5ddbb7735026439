"""The content-addressed cache: artifact folders and stage records.

Layout of a cache folder (format :data:`CACHE_FORMAT`)::

    artifacts/<d[:2]>/<d>/manifest.json   digest, file list with sizes and digests
    artifacts/<d[:2]>/<d>/files/...       the artifact folder a stage wrote
    records/<k[:2]>/<k>.json              one finished stage: key -> output digests, metrics
    tmp/                                  stage outputs being written
    plans/, runs/, file-digests.json      validated plans, run history, file digest memo

Every write goes to a temporary path in the same file system and is renamed
into place, so a crash leaves either the old state or the new one. An entry
whose manifest is missing or disagrees with its files is a warning and a
miss; it is never unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import CacheError
from pipeline.hashing import canonical_json, folder_digest, sha256_file, tree_files

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST_FORMAT = 1
RECORD_FORMAT = 1


@dataclass
class Record:
    """A finished stage, stored under its key."""

    key: str
    kind: str
    outputs: dict[str, str]
    metrics: dict[str, Any]
    measurements: dict[str, Any]
    publish: dict[str, str]
    message: str
    seconds: float
    # The named parts of the key (see pipeline.keys), to explain a change.
    parts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, **self.__dict__}


class Cache:
    """A cache folder shared by any number of pipelines and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout --------------------------------------------------------------

    def ensure(self) -> None:
        marker = self.root / "CACHE_FORMAT"
        try:
            for sub in ("artifacts", "records", "tmp", "runs", "plans"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if marker.exists():
                found = marker.read_text().strip()
                if found != str(CACHE_FORMAT):
                    raise CacheError(
                        f"{self.root}: cache format {found}, this pipe uses {CACHE_FORMAT}; "
                        "use another --cache-dir or delete this folder"
                    )
            else:
                _write_atomic(marker, f"{CACHE_FORMAT}\n".encode())
        except OSError as exc:
            raise CacheError(f"{self.root}: cannot use the cache folder: {exc.strerror}; check permissions or pass --cache-dir") from exc

    def artifact_dir(self, digest: str) -> Path:
        return self.root / "artifacts" / digest[:2] / digest

    def artifact_files(self, digest: str) -> Path:
        return self.artifact_dir(digest) / "files"

    def record_path(self, key: str) -> Path:
        return self.root / "records" / key[:2] / f"{key}.json"

    @property
    def plans_dir(self) -> Path:
        return self.root / "plans"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    # -- records -------------------------------------------------------------

    def read_record(self, key: str) -> Record | None:
        path = self.record_path(key)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cache: unreadable record %s (%s); treating it as a miss", path, exc)
            return None
        if data.pop("format", None) != RECORD_FORMAT:
            log.warning("cache: record %s has an unknown format; treating it as a miss", path)
            return None
        try:
            return Record(**data)
        except TypeError:
            log.warning("cache: record %s is incomplete; treating it as a miss", path)
            return None

    def write_record(self, record: Record) -> None:
        path = self.record_path(record.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(record.to_json(), indent=1, sort_keys=True).encode())

    # -- artifacts -----------------------------------------------------------

    def new_workspace(self) -> Path:
        """Return a fresh folder under ``tmp/`` for a running stage."""
        path = self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    def store(self, files_dir: Path) -> str:
        """Move a finished artifact folder into the cache; return its digest.

        ``files_dir`` is ``<workspace>/<output>/files``; its parent becomes
        the entry. An identical artifact already stored is kept as it is.
        """
        entries = {}
        sizes = {}
        for file in tree_files(files_dir):
            relative = file.relative_to(files_dir).as_posix()
            entries[relative] = sha256_file(file)
            sizes[relative] = file.stat().st_size
        digest = folder_digest(entries)

        target = self.artifact_dir(digest)
        if self.check_artifact(digest, quick=True):
            return digest
        if target.exists():
            self._discard(target)

        entry = files_dir.parent
        manifest = {
            "format": MANIFEST_FORMAT,
            "digest": digest,
            "files": {name: {"sha256": entries[name], "size": sizes[name]} for name in entries},
        }
        _write_atomic(entry / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, target)
        except OSError:
            # Another process stored the same artifact first.
            if not self.check_artifact(digest, quick=True):
                raise
        return digest

    def check_artifact(self, digest: str, quick: bool = False) -> bool:
        """Return whether the entry is complete and matches its manifest.

        ``quick`` compares file sizes only; a full check hashes every file.
        """
        entry = self.artifact_dir(digest)
        manifest_path = entry / "manifest.json"
        if not manifest_path.exists():
            return False
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != MANIFEST_FORMAT or manifest.get("digest") != digest:
                raise ValueError("manifest does not match the entry")
            files = entry / "files"
            found = {file.relative_to(files).as_posix() for file in tree_files(files)} if files.exists() else set()
            if found != set(manifest["files"]):
                raise ValueError("file list differs from the manifest")
            for name, info in manifest["files"].items():
                path = files / name
                if path.stat().st_size != info["size"]:
                    raise ValueError(f"{name} has {path.stat().st_size} bytes, expected {info['size']}")
                if not quick and sha256_file(path) != info["sha256"]:
                    raise ValueError(f"{name} does not match its digest")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: corrupt artifact %s (%s); treating it as a miss", digest[:12], exc)
            return False
        return True

    def _discard(self, entry: Path) -> None:
        """Move a bad entry out of the way, then delete it."""
        trash = self.root / "tmp" / f"discard-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            log.warning("cache: could not remove %s: %s", entry, exc)

    def discard_artifact(self, digest: str) -> None:
        if self.artifact_dir(digest).exists():
            self._discard(self.artifact_dir(digest))

    def remove_workspace(self, workspace: Path) -> None:
        shutil.rmtree(workspace, ignore_errors=True)

    def clean_stale_workspaces(self, max_age_s: float = 24 * 3600) -> None:
        """Remove ``tmp/`` folders of processes that no longer run."""
        tmp = self.root / "tmp"
        if not tmp.exists():
            return
        now = time.time()
        for path in tmp.iterdir():
            pid_text = path.name.split("-", 1)[0]
            alive = pid_text.isdigit() and _pid_alive(int(pid_text))
            if not alive or now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)

    # -- locks -------------------------------------------------------------------

    def key_lock(self, key: str, on_wait: Callable[[str], None] | None = None) -> Any:
        """Hold the lock of one stage key while computing it.

        Another process computing the same key makes this wait; ``on_wait``
        is called first with that process's id. The lock is an OS file lock
        (``fcntl``), so the lock of a killed process is released by the
        kernel and taken over at once.
        """
        return _KeyLock(self.root / "locks", key, on_wait)

    def file_lock(self, name: str) -> Any:
        """Return an inter-process lock named ``name``, e.g. for the lock file of a pipeline."""
        from filelock import FileLock

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{name}.lock"))

    # -- history ---------------------------------------------------------------

    def append_history(self, pipeline_path: Path, entry: dict[str, Any]) -> None:
        """Append one run's timings and measurements to the run history."""
        name = f"{canonical_digest(str(pipeline_path))[:16]}.jsonl"
        path = self.runs_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def last_run(self, pipeline_path: Path) -> dict[str, Any] | None:
        path = self.runs_dir / f"{canonical_digest(str(pipeline_path))[:16]}.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return None


class _KeyLock:
    def __init__(self, folder: Path, key: str, on_wait: Callable[[str], None] | None) -> None:
        from filelock import FileLock

        folder.mkdir(parents=True, exist_ok=True)
        self.owner_file = folder / f"{key}.owner"
        self.lock = FileLock(str(folder / f"{key}.lock"))
        self.on_wait = on_wait

    def __enter__(self) -> "_KeyLock":
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            try:
                owner = self.owner_file.read_text().strip() or "another process"
            except OSError:
                owner = "another process"
            log.info("cache: waiting for pid %s, which is computing the same stage", owner)
            if self.on_wait is not None:
                self.on_wait(owner)
            self.lock.acquire()
        try:
            self.owner_file.write_text(f"{os.getpid()}\n")
        except OSError:
            pass
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.lock.release()


def canonical_digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(value)).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
