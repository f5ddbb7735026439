"""Content digests: files, folders, source code and package versions.

All digests are SHA-256 hex strings. A file's digest is remembered in the
cache folder under its path, size, mtime and inode, so a large checkpoint is
read once per version of the file, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 1 << 20
STAT_CACHE_FORMAT = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` so that equal data gives equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def tree_files(folder: Path) -> list[Path]:
    """Return the regular files under ``folder``, sorted by relative path."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def folder_digest(entries: dict[str, str]) -> str:
    """Digest of a folder given ``{relative path: file digest}``."""
    return sha256_bytes(canonical_json(sorted(entries.items())))


class FileDigests:
    """File digests remembered by (size, mtime, inode) in a JSON file."""

    def __init__(self, store: Path | None) -> None:
        self.store = store
        self._entries: dict[str, list[Any]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = {}
            if self.store is not None:
                try:
                    data = json.loads(self.store.read_text())
                    if data.get("format") == STAT_CACHE_FORMAT:
                        self._entries = data["files"]
                except (OSError, ValueError, KeyError):
                    pass
        return self._entries

    def digest(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entries = self._load()
        cached = entries.get(str(path))
        if cached is not None and cached[:3] == signature:
            return cached[3]
        value = sha256_file(path)
        entries[str(path)] = [*signature, value]
        self._dirty = True
        return value

    def save(self) -> None:
        if not self._dirty or self.store is None:
            return
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.store.with_name(f".{self.store.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": STAT_CACHE_FORMAT, "files": self._entries}))
            os.replace(tmp, self.store)
            self._dirty = False
        except OSError as exc:
            log.debug("file digests not saved: %s", exc)


@lru_cache(maxsize=None)
def source_digest(package_dir: Path, sources: tuple[str, ...]) -> str:
    """Digest of the ``.py`` files named by ``sources`` under ``package_dir``.

    A source is a file or a folder (every ``.py`` file below it).
    """
    entries: dict[str, str] = {}
    for source in sources:
        target = package_dir / source
        files = [target] if target.is_file() else [p for p in tree_files(target) if p.suffix == ".py"]
        if not files:
            raise FileNotFoundError(f"stage source '{source}' not found under {package_dir}")
        for file in files:
            entries[file.relative_to(package_dir).as_posix()] = sha256_file(file)
    return folder_digest(entries)


@lru_cache(maxsize=None)
def package_version(distribution: str) -> str:
    """Installed version of ``distribution``, or ``"not installed"``."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
