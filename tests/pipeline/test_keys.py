"""Stage keys notice every change: code, params, files, packages."""

from __future__ import annotations

from pathlib import Path

from pipeline.hashing import FileDigests, source_digest
from pipeline.keys import explain_change


def make_package(folder: Path) -> Path:
    (folder / "quant").mkdir(parents=True)
    (folder / "kind.py").write_text("VALUE = 1\n")
    (folder / "quant" / "observers.py").write_text("SCALE = 2\n")
    (folder / "unrelated.py").write_text("X = 0\n")
    return folder


def test_source_digest_follows_stage_files(tmp_path: Path) -> None:
    package = make_package(tmp_path / "stages_a")
    sources = ("kind.py", "quant")
    before = source_digest(package, sources)

    (package / "unrelated.py").write_text("X = 1\n")
    source_digest.cache_clear()
    assert source_digest(package, sources) == before

    (package / "quant" / "observers.py").write_text("SCALE = 3\n")
    source_digest.cache_clear()
    after = source_digest(package, sources)
    assert after != before


def test_explain_change_names_parts() -> None:
    old = {"scheme": 1, "kind": "calibrate@1", "source": "a", "params": {"data": "calib"}, "config": {},
           "inputs": {"model": "d1"}, "files": {"ckpt.pt": "f1"}, "packages": {"torch": "2.14.1"}}
    new = {"scheme": 1, "kind": "calibrate@1", "source": "b", "params": {"data": "calib", "max_batches": 4},
           "config": {}, "inputs": {"model": "d2"}, "files": {"ckpt.pt": "f2"}, "packages": {"torch": "2.15.0"}}
    reason = explain_change(old, new)
    assert "stage code changed" in reason
    assert "param max_batches added (4)" in reason
    assert "input 'model' changed" in reason
    assert "file ckpt.pt changed" in reason
    assert "torch 2.14.1 -> 2.15.0" in reason


def test_file_digest_reused_until_file_changes(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"a" * 1000)
    store = tmp_path / "digests.json"
    digests = FileDigests(store)
    first = digests.digest(checkpoint)
    digests.save()

    # Same size, mtime and inode: the remembered digest is reused.
    remembered = FileDigests(store)
    assert remembered.digest(checkpoint) == first
    assert remembered._dirty is False

    checkpoint.write_bytes(b"b" * 1001)
    assert FileDigests(store).digest(checkpoint) != first
