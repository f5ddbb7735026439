"""Environment of the Python processes that time and measure a model apart from the stage's own process."""

from __future__ import annotations

import os
from pathlib import Path

# The folder that contains the ``stages`` package.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def worker_env(*extra_paths: Path) -> dict[str, str]:
    """Return this process's environment with PYTHONPATH starting at the package root, then ``extra_paths``.

    A worker runs ``python -m stages.profiling.<module>``, so it must import
    this package (and a pipeline's own model code) from a checkout that is
    not installed.
    """
    entries = [str(PACKAGE_ROOT), *(str(path) for path in extra_paths), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, entries))}
