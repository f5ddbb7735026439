"""``pipe diff``: metrics and stage keys between two revisions of a lock file.

Revisions are read with ``git show REV:PATH``. No revision compares HEAD
with the working tree; one compares that revision with the working tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pipeline import lock as lock_module
from pipeline.errors import ConfigError

WORKTREE = "workspace"


def lock_at(lock_path: Path, revision: str | None) -> dict[str, Any]:
    """Return the lock's stages at ``revision``, or in the working tree for None."""
    if revision is None:
        return lock_module.read(lock_path)
    folder = lock_path.parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(f"{lock_path}: not inside a git repository; pipe diff compares git revisions") from exc
    relative = lock_path.resolve().relative_to(Path(top).resolve()).as_posix()
    shown = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=folder, capture_output=True, text=True)
    if shown.returncode != 0:
        problem = shown.stderr.strip().splitlines()[-1] if shown.stderr.strip() else "unknown error"
        raise ConfigError(f"{relative} at {revision}: cannot read it from git ({problem}); check the revision name")
    return lock_module.parse(shown.stdout, f"{relative}@{revision}")


def diff_locks(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per stage that was added, removed or changed."""
    rows = []
    for name in list(old) + [name for name in new if name not in old]:
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        row: dict[str, Any] = {"stage": name}
        if before is None:
            row["change"] = "added"
        elif after is None:
            row["change"] = "removed"
        else:
            row["change"] = "changed"
            row["key_changed"] = before.get("key") != after.get("key")
            row["outputs_changed"] = before.get("outputs") != after.get("outputs")
        metrics_before = (before or {}).get("metrics", {})
        metrics_after = (after or {}).get("metrics", {})
        row["metrics"] = {
            metric: {"old": metrics_before.get(metric), "new": metrics_after.get(metric)}
            for metric in sorted(set(metrics_before) | set(metrics_after))
            if metrics_before.get(metric) != metrics_after.get(metric)
        }
        rows.append(row)
    return rows


def pipeline_diff(path: Path, rev_a: str | None, rev_b: str | None) -> dict[str, Any]:
    lock_path = Path(path).resolve().with_suffix(".lock")
    if rev_a is None:
        rev_a, rev_b = "HEAD", None
    old = lock_at(lock_path, rev_a)
    new = lock_at(lock_path, rev_b)
    return {"lock": lock_path.name, "old": rev_a, "new": rev_b or WORKTREE, "stages": diff_locks(old, new)}


def diff_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['lock']}: {data['old']} -> {data['new']}"]
    if not data["stages"]:
        lines.append("no changes")
    for row in data["stages"]:
        detail = row["change"]
        if row.get("key_changed"):
            detail += ", key changed"
        if row.get("outputs_changed"):
            detail += ", outputs changed"
        lines.append(f"{row['stage']}: {detail}")
        for metric, values in row["metrics"].items():
            lines.append(f"    {metric}: {_format(values['old'])} -> {_format(values['new'])}")
    return lines


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return "(changed)" if value else "-"
    return "-" if value is None else str(value)
