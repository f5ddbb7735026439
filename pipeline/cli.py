"""The `pipe` command line.

Exit status: 0 success, 1 a stage failed, 2 bad usage or an invalid file,
130 interrupted. With ``--json`` every command prints exactly one JSON object
on stdout, also on failure; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from pipeline.errors import ConfigError, PipeError

log = logging.getLogger(__name__)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _fail(message: str, code: int, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        _emit_json({**(extra or {}), "error": message, "exit_code": code})
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _guard(as_json: bool, extra: Callable[[], dict[str, Any]] | None = None) -> Any:
    """Decorator body: turn PipeErrors into a one-line error and an exit status."""

    class _Guard:
        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
            if exc is None or not isinstance(exc, PipeError):
                return False
            _fail(str(exc), exc.exit_code, as_json, extra() if extra else None)
            return True

    return _Guard()


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("-q", "--quiet", is_flag=True, help="Log errors only.")(func)
    func = click.option("-v", "--verbose", count=True, help="Log decisions (-v) and reasons (-vv).")(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="brocolli", prog_name="pipe")
def main() -> None:
    """Declarative, cached pipelines that quantize and export PyTorch models."""


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--set", "sets", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override a param for this run; the lock file is left alone.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache folder (default: .pipe/ beside the file, or $PIPE_CACHE_DIR).")
@click.option("--from", "from_stage", metavar="STAGE", help="Run this stage and the stages after it.")
@click.option("--to", "to_stage", metavar="STAGE", help="Run this stage and the stages it needs.")
@click.option("--only", metavar="STAGE", help="Run this stage alone; its inputs must be cached.")
@click.option("--force", multiple=True, metavar="STAGE", help="Rerun this stage and its dependents even if cached.")
@click.option("--force-all", is_flag=True, help="Rerun every stage.")
@click.option("--dry-run", is_flag=True, help="Print what would run and why; write nothing.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Stages run at the same time.")
@_common
def run(pipeline_file: Path, as_json: bool, sets: tuple[str, ...], cache_dir: Path | None, from_stage: str | None,
        to_stage: str | None, only: str | None, force: tuple[str, ...], force_all: bool, dry_run: bool, jobs: int,
        verbose: int, quiet: bool) -> None:
    """Run PIPELINE_FILE, reusing every cached stage."""
    _setup_logging(verbose, quiet)
    from pipeline.config import parse_override
    from pipeline.runner import RunOptions
    from pipeline.runner import run as run_pipeline

    empty = {"pipeline": str(pipeline_file), "stages": [], "metrics": {}}
    with _guard(as_json, lambda: empty):
        overrides: dict[str, dict[str, Any]] = {}
        for text in sets:
            stage, param, value = parse_override(text)
            overrides.setdefault(stage, {})[param] = value
        options = RunOptions(
            overrides=overrides, cache_dir=cache_dir, force=force, force_all=force_all, from_stage=from_stage,
            to_stage=to_stage, only=only, dry_run=dry_run, jobs=jobs,
        )
        listener = _listener(as_json)
        try:
            result = run_pipeline(pipeline_file, options, listener)
        finally:
            if hasattr(listener, "close"):
                listener.close()

    if as_json:
        _emit_json(result.to_json())
        sys.exit(result.exit_code)

    from pipeline.render import summary_lines

    for line in summary_lines(result):
        click.echo(line)
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.error:
        click.echo(f"error: {result.error}", err=True)
    sys.exit(result.exit_code)


def _listener(as_json: bool) -> Any:
    from pipeline.runner import Listener

    if as_json:
        return Listener()
    if sys.stdout.isatty():
        from pipeline.render import LiveRenderer

        return LiveRenderer()
    from pipeline.render import PlainRenderer

    return PlainRenderer()


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def validate(pipeline_file: Path, as_json: bool, verbose: int, quiet: bool) -> None:
    """Check PIPELINE_FILE against the schemas and the DAG rules, and that the files it reads exist; run nothing."""
    _setup_logging(verbose, quiet)
    from pipeline import config, keys

    with _guard(as_json, lambda: {"valid": False}):
        pipeline = config.load(pipeline_file)
        keys.check_files(pipeline)
    if as_json:
        _emit_json({"valid": True, "pipeline": pipeline.name, "stages": [spec.name for spec in pipeline.stages]})
    else:
        click.echo(f"{pipeline_file}: valid ({len(pipeline.stages)} stages)")


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid"]), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def dag(pipeline_file: Path, fmt: str, as_json: bool, verbose: int, quiet: bool) -> None:
    """Print the stage DAG of PIPELINE_FILE with each input's producer."""
    _setup_logging(verbose, quiet)
    from pipeline import config
    from pipeline import dag as dag_module

    with _guard(as_json):
        pipeline = config.load(pipeline_file)
    if as_json:
        _emit_json(dag_module.as_json(pipeline))
        return
    render = {"text": dag_module.render_text, "dot": dag_module.render_dot, "mermaid": dag_module.render_mermaid}[fmt]
    click.echo(render(pipeline))


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--set", "sets", multiple=True, metavar="STAGE.PARAM=VALUE", help="Show the status with this override.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache folder (default: .pipe/ beside the file, or $PIPE_CACHE_DIR).")
@_common
def status(pipeline_file: Path, as_json: bool, sets: tuple[str, ...], cache_dir: Path | None, verbose: int, quiet: bool) -> None:
    """Show which stages are cached and which are stale, with the reason."""
    _setup_logging(verbose, quiet)
    from pipeline.config import parse_override
    from pipeline.status import pipeline_status

    with _guard(as_json, lambda: {"stages": []}):
        overrides: dict[str, dict[str, Any]] = {}
        for text in sets:
            stage, param, value = parse_override(text)
            overrides.setdefault(stage, {})[param] = value
        data = pipeline_status(pipeline_file, overrides, cache_dir)
    if as_json:
        _emit_json(data)
        return
    width = max(len(row["name"]) for row in data["stages"])
    for row in data["stages"]:
        detail = row.get("reason") or row.get("note") or ""
        click.echo(f"{row['name']:<{width}}  {row['kind']:<16}  {row['status']:<6}  {detail}".rstrip())


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache folder (default: .pipe/ beside the file, or $PIPE_CACHE_DIR).")
@_common
def show(pipeline_file: Path, as_json: bool, cache_dir: Path | None, verbose: int, quiet: bool) -> None:
    """Print the metrics in the lock file and the last run's timings."""
    _setup_logging(verbose, quiet)
    from pipeline.show import show_data, show_lines

    with _guard(as_json, lambda: {"stages": []}):
        data = show_data(pipeline_file, cache_dir)
    if as_json:
        _emit_json(data)
        return
    for line in show_lines(data):
        click.echo(line)


@main.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("rev_a", required=False)
@click.argument("rev_b", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def diff(pipeline_file: Path, rev_a: str | None, rev_b: str | None, as_json: bool, verbose: int, quiet: bool) -> None:
    """Compare the lock file's metrics and keys between git revisions.

    No revision: HEAD against the working tree. One: REV_A against the
    working tree. Two: REV_A against REV_B.
    """
    _setup_logging(verbose, quiet)
    from pipeline.diff import diff_lines, pipeline_diff

    with _guard(as_json, lambda: {"stages": []}):
        data = pipeline_diff(pipeline_file, rev_a, rev_b)
    if as_json:
        _emit_json(data)
        return
    for line in diff_lines(data):
        click.echo(line)


@main.command()
@click.argument("folder", required=False, default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Cache folder (default: FOLDER/.pipe, or $PIPE_CACHE_DIR).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common
def gc(folder: Path, cache_dir: Path | None, dry_run: bool, as_json: bool, verbose: int, quiet: bool) -> None:
    """Remove cache entries that no lock file under FOLDER references."""
    _setup_logging(verbose, quiet)
    from pipeline.gc import collect
    from pipeline.runner import cache_for

    with _guard(as_json):
        cache = cache_for(folder.resolve() / "pipeline.yaml", cache_dir)
        data = collect(cache, folder.resolve(), dry_run)
    if as_json:
        _emit_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(data['removed_records'])} records and {len(data['removed_artifacts'])} artifacts "
        f"({data['freed_bytes'] / 1e6:.1f} MB) from {data['cache']}; kept what {len(data['lock_files'])} lock files reference"
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stages(as_json: bool) -> None:
    """List the stage kinds with their params and defaults."""
    from pipeline.schema import load_schema, stage_schema_path
    from stages import KINDS

    kinds = {}
    for kind in KINDS:
        path = stage_schema_path(kind)
        kinds[kind] = load_schema(path) if path.exists() else {}
    if as_json:
        _emit_json({
            "kinds": [
                {
                    "kind": kind,
                    "description": schema.get("description", ""),
                    "params": {
                        name: {key: spec[key] for key in ("default", "description", "type", "enum") if key in spec}
                        for name, spec in schema.get("properties", {}).items()
                    },
                    "required": schema.get("required", []),
                }
                for kind, schema in kinds.items()
            ]
        })
        return
    for kind, schema in kinds.items():
        click.echo(f"{kind}: {schema.get('description', '')}")
        required = set(schema.get("required", []))
        for name, spec in schema.get("properties", {}).items():
            if name in required:
                default = "required"
            elif "default" in spec:
                default = f"default {json.dumps(spec['default'])}"
            else:
                default = "optional"
            click.echo(f"  {name} ({default}): {spec.get('description', '')}")


if __name__ == "__main__":
    main()
