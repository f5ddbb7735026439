"""Fixtures of the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_files import TINY_MODEL


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A temporary folder holding the tiny model module the pipelines use."""
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL)
    return tmp_path
