"""Validation of pipeline files: one line naming file, line, field and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import ConfigError
from pipeline.source_map import load_with_lines

from pipeline_files import HEADER, write_pipeline


def load_error(folder: Path, stages: str, header: str = HEADER) -> str:
    path = write_pipeline(folder, textwrap.dedent(header) + textwrap.dedent(stages))
    with pytest.raises(ConfigError) as excinfo:
        config.load(path)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_valid_file_fills_defaults(workdir: Path) -> None:
    path = write_pipeline(workdir, HEADER + "stages:\n  - {name: trace, kind: trace}\n")
    pipeline = config.load(path)
    assert pipeline.stage("trace").params == {"leaf_modules": [], "concrete_args": {}}
    assert pipeline.document["output"] == "out"
    assert pipeline.document["data"]["rand"]["seed"] == 0
    assert pipeline.order == ["trace"]


def test_unknown_param_names_line_and_allowed(workdir: Path) -> None:
    message = load_error(workdir, """
        stages:
          - name: trace
            kind: trace
            leaf_modulez: []
        """)
    assert "p.yaml:16:" in message
    assert "unknown field 'leaf_modulez'" in message
    assert "allowed: concrete_args, leaf_modules" in message


def test_bad_type_names_value(workdir: Path) -> None:
    header = HEADER.replace("input_shape: [1, 1, 8, 8]", "input_shape: [1, x]")
    message = load_error(workdir, "stages:\n  - {name: trace, kind: trace}\n", header=header)
    assert "p.yaml:5:" in message
    assert "model.input_shape[1]" in message
    assert "'x'" in message


def test_unknown_kind_lists_kinds(workdir: Path) -> None:
    message = load_error(workdir, "stages:\n  - {name: t, kind: tracer}\n")
    assert "'tracer' is not allowed" in message
    assert "stages[0] (t).kind:" in message
    assert "trace, prepare-qconfig" in message


def test_unknown_needs_named(workdir: Path) -> None:
    message = load_error(workdir, "stages:\n  - {name: trace, kind: trace, needs: [nope]}\n")
    assert "unknown stage 'nope'" in message


def test_duplicate_stage_name(workdir: Path) -> None:
    message = load_error(workdir, "stages:\n  - {name: t, kind: trace}\n  - {name: t, kind: trace}\n")
    assert "duplicate stage name 't'" in message


def test_duplicate_yaml_key(workdir: Path) -> None:
    message = load_error(workdir, "stages:\n  - name: t\n    name: u\n    kind: trace\n")
    assert "duplicate key 'name'" in message


def test_cycle_named(workdir: Path) -> None:
    message = load_error(workdir, """
        stages:
          - {name: a, kind: trace, needs: [b]}
          - {name: b, kind: trace, needs: [a]}
        """)
    assert "form a cycle" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message


def test_yaml_syntax_error_has_line(workdir: Path) -> None:
    message = load_error(workdir, "stages:\n  - {name: t, kind: trace\n")
    assert "invalid YAML" in message
    # The file as given (relative to the working folder), the line where parsing failed, and where the '{' opened.
    assert message.startswith(f"{workdir / 'p.yaml'}:") or message.startswith("p.yaml:")
    assert f"that starts at line {HEADER.count(chr(10)) + 1}" in message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="pipeline file not found"):
        config.load(Path("/nonexistent/p.yaml"))


def test_parse_override_reads_yaml_scalar() -> None:
    assert config.parse_override("calibrate.max_batches=4") == ("calibrate", "max_batches", 4)
    assert config.parse_override("evaluate.data=holdout") == ("evaluate", "data", "holdout")
    with pytest.raises(ConfigError, match="STAGE.PARAM=VALUE"):
        config.parse_override("calibrate=4")


def test_exponent_without_dot_is_a_number() -> None:
    assert config.parse_override("onnx.max_rel_diff=1e-12") == ("onnx", "max_rel_diff", 1e-12)
    assert config.parse_override("onnx.max_rel_diff=2E+3") == ("onnx", "max_rel_diff", 2000.0)
    assert config.parse_override("onnx.file_name=e5") == ("onnx", "file_name", "e5")

    data, _ = load_with_lines("limit: 1e-12\nname: 1e\n", Path("p.yaml"))
    assert data == {"limit": 1e-12, "name": "1e"}


def test_bad_override_names_option(workdir: Path) -> None:
    path = write_pipeline(workdir, HEADER + "stages:\n  - {name: trace, kind: trace}\n")
    with pytest.raises(ConfigError, match=r"--set trace.leaf_modules"):
        config.load(path, {"trace": {"leaf_modules": 3}})
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        config.load(path, {"nope": {"x": 1}})
