"""Run an example pipeline in a copy of its files and find its artifacts.

The copy keeps the example's lock file and output folder in the repository
untouched. The copy's cache persists between benchmark runs, so a second
run only recomputes what changed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import pipeline
from pipeline.errors import PipeError
from pipeline.runner import cache_for

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# Files each example pipeline needs besides its pipeline file.
EXAMPLE_FILES = {
    "resnet_int8": ("digits_resnet.py", "digits_resnet.pt"),
    "mobilenet_v2_int8": ("imagenet_mobilenet_v2.py",),
}


@dataclass
class ExampleRun:
    """A finished run of an example pipeline in a work folder."""

    name: str
    path: Path
    result: dict[str, Any]
    lock: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def spec(self) -> dict[str, Any]:
        return yaml.safe_load(self.path.read_text())

    def artifact(self, stage: str, output: str) -> Path:
        """Return the cache folder of one stage output, such as ``("trace", "fp32_model")``."""
        digest = self.lock["stages"][stage]["outputs"][output]
        return cache_for(self.path, None).artifact_files(digest)

    def metrics(self, stage: str) -> dict[str, Any]:
        return self.result["metrics"][stage]

    def published(self, stage: str) -> Path:
        """Return the file an export stage published in the output folder."""
        return self.folder / self.result["metrics"][stage]["path"]


def copy_example(name: str, work_dir: Path) -> Path:
    """Copy the example's pipeline file and its companions into ``work_dir/name``; return the pipeline file."""
    target = work_dir / name
    target.mkdir(parents=True, exist_ok=True)
    for file_name in (f"{name}.yaml", *EXAMPLE_FILES[name]):
        source = EXAMPLES / file_name
        if not source.is_file():
            raise FileNotFoundError(f"benchmark example {name}: {source} not found")
        if not (target / file_name).is_file() or (target / file_name).read_bytes() != source.read_bytes():
            shutil.copy2(source, target / file_name)
    return target / f"{name}.yaml"


def run_example(name: str, work_dir: Path) -> ExampleRun:
    """Run the example pipeline in its work copy and return its result; raise when a stage fails.

    Runs without overrides, because the lock file (where the artifact
    digests are read from) records only runs without them.
    """
    path = copy_example(name, work_dir)
    result = pipeline.run(path)
    if result["exit_code"] != 0:
        raise PipeError(f"benchmark example {name}: pipe run failed: {result.get('error')}")
    lock = yaml.safe_load(path.with_suffix(".lock").read_text())
    return ExampleRun(name, path, result, lock)
