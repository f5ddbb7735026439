"""Running a pipeline: decide per stage whether it is cached, run it, record it.

For each stage in dependency order the runner computes its key from its
inputs' digests, looks the key up in the cache, and either reuses the record
(``cached``) or runs the stage in a fresh workspace, stores its outputs and
writes the record (``ran``). A stage that fails stores nothing; the stages
that need it are ``skipped``. The lock file is updated after each finished
stage, so a run killed at any moment leaves the lock and the cache
consistent with each other.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline import config as config_module
from pipeline import lock as lock_module
from pipeline.cache import Cache, Record, write_atomic
from pipeline.config import Pipeline, StageSpec
from pipeline.contract import Stage, StageContext, StageResult
from pipeline.errors import CacheError, PipeError, StageFailed
from pipeline.hashing import FileDigests
from pipeline.keys import explain_change, key_from_parts, key_parts

log = logging.getLogger(__name__)

RAN, CACHED, FAILED, SKIPPED, INTERRUPTED, WOULD_RUN = "ran", "cached", "failed", "skipped", "interrupted", "would run"


@dataclass
class Outcome:
    """Result of one stage in one run: its status, timing, metrics and messages."""

    name: str
    kind: str
    status: str = "waiting"
    seconds: float = 0.0
    key: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    reason: str = ""
    error: str | None = None
    reproduced: bool | None = None
    published: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = {"name": self.name, "kind": self.kind, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.reason:
            data["reason"] = self.reason
        if self.message:
            data["message"] = self.message
        if self.error:
            data["error"] = self.error
        if self.reproduced is not None:
            data["reproduced"] = self.reproduced
        return data


class Listener:
    """Receives run events; the CLI renders them. Every method is optional."""

    def plan(self, pipeline: Pipeline, outcomes: list[Outcome]) -> None: ...

    def stage_started(self, outcome: Outcome) -> None: ...

    def stage_waiting(self, outcome: Outcome) -> None: ...

    def stage_finished(self, outcome: Outcome) -> None: ...

    def progress(self, stage: str, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class RunOptions:
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_dir: Path | None = None
    force: tuple[str, ...] = ()
    force_all: bool = False
    from_stage: str | None = None
    to_stage: str | None = None
    only: str | None = None
    dry_run: bool = False
    jobs: int = 1


@dataclass
class RunResult:
    pipeline: str
    outcomes: list[Outcome]
    exit_code: int = 0
    error: str | None = None
    lock_written: bool = False
    notes: list[str] = field(default_factory=list)
    report: str | None = None
    root: Path | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pipeline": self.pipeline,
            "stages": [outcome.summary() for outcome in self.outcomes],
            "metrics": {o.name: o.metrics for o in self.outcomes if o.status in (RAN, CACHED)},
            "measurements": {o.name: o.measurements for o in self.outcomes if o.status in (RAN, CACHED) and o.measurements},
            "exit_code": self.exit_code,
        }
        if self.report:
            data["report"] = self.report
        if self.notes:
            data["notes"] = self.notes
        if self.error:
            data["error"] = self.error
        return data


def cache_for(path: Path, cache_dir: Path | None) -> Cache:
    """Return the cache for a pipeline file: ``--cache-dir``, ``PIPE_CACHE_DIR`` or ``.pipe/`` beside it."""
    if cache_dir is None and os.environ.get("PIPE_CACHE_DIR"):
        cache_dir = Path(os.environ["PIPE_CACHE_DIR"])
    return Cache(Path(cache_dir) if cache_dir else Path(path).resolve().parent / ".pipe")


def select(pipeline: Pipeline, options: RunOptions) -> set[str]:
    """Return the names of the stages this run may run."""
    from pipeline.dag import ancestors, dependents

    for name in [options.from_stage, options.to_stage, options.only, *options.force]:
        if name is not None:
            pipeline.stage(name)
    selected = {spec.name for spec in pipeline.stages}
    if options.only:
        selected = {options.only}
    if options.from_stage:
        selected &= dependents(pipeline, {options.from_stage})
    if options.to_stage:
        selected &= ancestors(pipeline, {options.to_stage})
    return selected


def run(path: Path, options: RunOptions | None = None, listener: Listener | None = None) -> RunResult:
    """Run the pipeline file at ``path``; see :class:`RunOptions`."""
    options = options or RunOptions()
    listener = listener or Listener()
    path = Path(path).resolve()
    cache = cache_for(path, options.cache_dir)
    cache.ensure()
    pipeline = config_module.load(path, options.overrides, cache.plans_dir)
    return _Run(pipeline, cache, options, listener).execute()


class _Run:
    def __init__(self, pipeline: Pipeline, cache: Cache, options: RunOptions, listener: Listener) -> None:
        from stages import load_stage

        self.pipeline = pipeline
        self.cache = cache
        self.options = options
        self.listener = listener
        self.file_digests = FileDigests(cache.root / "file-digests.json")
        self.stages = {spec.name: load_stage(spec.kind) for spec in pipeline.stages}
        self.selected = select(pipeline, options)
        forced = set(options.force)
        if options.force_all:
            forced = {spec.name for spec in pipeline.stages}
        from pipeline.dag import dependents

        self.forced = dependents(pipeline, forced) if forced else set()
        self.outcomes = {spec.name: Outcome(spec.name, spec.kind) for spec in pipeline.stages}
        self.records: dict[str, Record] = {}
        self.old_lock = lock_module.read(pipeline.lock_path)
        self.new_lock = dict(self.old_lock)
        self.write_lock = not options.overrides and not options.dry_run
        self.thread_lock = threading.RLock()
        # One stage at a time runs in this process; with several jobs, the others run in child processes.
        self.in_process_slot = threading.Lock()

    # -- the loop --------------------------------------------------------------

    def execute(self) -> RunResult:
        ordered = [self.outcomes[name] for name in self.pipeline.order]
        self.listener.plan(self.pipeline, ordered)
        result = RunResult(self.pipeline.name, ordered, root=self.pipeline.root)
        self.cache.clean_stale_workspaces()
        try:
            for attempt in range(MAX_RESTARTS + 1):
                try:
                    self._schedule()
                    break
                except _CorruptInput as exc:
                    if attempt == MAX_RESTARTS:
                        raise CacheError(f"{self.cache.root}: artifacts keep failing their digest check ({exc}); check the disk") from exc
                    log.warning("cache: %s; recomputing it", exc)
                    self._reset(ordered)
        except KeyboardInterrupt:
            for outcome in ordered:
                if outcome.status in ("waiting", "running"):
                    outcome.status = INTERRUPTED if outcome.status == "running" else SKIPPED
                    self.listener.stage_finished(outcome)
            result.exit_code = 130
            result.error = f"interrupted; finished stages are cached, resume with: {self._resume_command(None)}"
        finally:
            self.file_digests.save()

        failed = [o for o in ordered if o.status == FAILED]
        if failed and result.exit_code == 0:
            first = failed[0]
            result.exit_code = 1
            result.error = f"stage '{first.name}' failed: {first.error}; after fixing it, resume with: {self._resume_command(first.name)}"

        if self.write_lock:
            result.lock_written = self._write_lock()
        elif self.options.overrides:
            result.notes.append(
                "lock file not updated: this run used --set overrides; the output folder now holds this run's files, "
                "and a run without --set puts back the ones the lock file describes"
            )
        if not self.options.dry_run:
            result.report = self._write_report()
            self._append_history(ordered)
        return result

    def _reset(self, ordered: list[Outcome]) -> None:
        """Forget this run's outcomes before starting over after a corrupt input."""
        for outcome in ordered:
            fresh = Outcome(outcome.name, outcome.kind)
            outcome.__dict__.update(fresh.__dict__)
        self.records.clear()
        self.listener.plan(self.pipeline, ordered)

    def _schedule(self) -> None:
        """Visit stages in dependency order, up to ``jobs`` at the same time."""
        if self.options.jobs <= 1:
            for name in self.pipeline.order:
                self._visit(self.pipeline.stage(name))
            return

        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        pending = list(self.pipeline.order)
        running: dict[Any, str] = {}
        pool = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="stage")
        try:
            while pending or running:
                for name in list(pending):
                    if len(running) >= self.options.jobs:
                        break
                    spec = self.pipeline.stage(name)
                    upstream = set(spec.needs) | set(_producers(spec))
                    if all(self.outcomes[up].status not in ("waiting", "running") for up in upstream):
                        pending.remove(name)
                        running[pool.submit(self._visit, spec)] = name
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    future.result()
        except KeyboardInterrupt:
            # Running stages are abandoned: nothing of theirs is recorded,
            # and the next run removes their workspaces.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _visit(self, spec: StageSpec) -> None:
        outcome = self.outcomes[spec.name]
        stage = self.stages[spec.name]

        blocked = self._blocking_input(spec)
        if blocked:
            outcome.status, outcome.reason = SKIPPED, blocked
            self.listener.stage_finished(outcome)
            return

        recomputed = [producer for producer in _producers(spec) if self.outcomes[producer].status == WOULD_RUN]
        if recomputed:
            # Only a dry run gets here: the input's new digest, and so this stage's key, is unknown.
            if spec.name in self.selected:
                outcome.status, outcome.reason = WOULD_RUN, f"input from '{recomputed[0]}' would be computed in this run"
            else:
                outcome.status, outcome.reason = SKIPPED, f"outside the selection, and its input from '{recomputed[0]}' would be computed in this run"
            self.listener.stage_finished(outcome)
            return

        input_digests = self._input_digests(spec)
        parts = key_parts(spec, stage, self.pipeline, input_digests, self.file_digests)
        outcome.key = key_from_parts(parts)

        forced = spec.name in self.forced
        record = None if forced else self._lookup(outcome.key)
        if record is not None:
            self._finish_cached(spec, outcome, record)
            return

        if spec.name not in self.selected:
            outcome.status, outcome.reason = SKIPPED, "outside the selection, and not cached"
            self.listener.stage_finished(outcome)
            return

        outcome.reason = "forced" if forced else self._why_stale(spec, parts)
        if self.options.dry_run:
            outcome.status = WOULD_RUN
            self.listener.stage_finished(outcome)
            return

        def waiting(owner: str) -> None:
            outcome.reason = f"waiting for pid {owner}, which is computing it"
            self.listener.stage_waiting(outcome)

        with self.cache.key_lock(outcome.key, on_wait=waiting):
            record = None if forced else self._lookup(outcome.key)
            if record is not None:
                self._finish_cached(spec, outcome, record)
                return
            self._run_stage(spec, outcome, parts)

    def _blocking_input(self, spec: StageSpec) -> str | None:
        for producer in _producers(spec):
            status = self.outcomes[producer].status
            if status not in (RAN, CACHED, WOULD_RUN):
                return f"needs '{producer}', which {'failed' if status == FAILED else 'was not available'}"
        for need in spec.needs:
            if self.outcomes[need].status == FAILED:
                return f"needs '{need}', which failed"
        return None

    def _input_digests(self, spec: StageSpec) -> dict[str, str | list[str]]:
        digests: dict[str, str | list[str]] = {}
        for input_name, bound in spec.bindings.items():
            if isinstance(bound, list):
                digests[input_name] = [self._output_digest(spec, input_name, producer) for producer in bound]
            else:
                digests[input_name] = self._output_digest(spec, input_name, bound)
        return digests

    def _output_digest(self, spec: StageSpec, input_name: str, producer: str) -> str:
        stage = self.stages[spec.name]
        artifact = next(i.artifact for i in stage.inputs(spec.params) if i.name == input_name)
        producer_spec = self.pipeline.stage(producer)
        output_name = next(name for name, kind in producer_spec.outputs.items() if kind == artifact)
        return self.outcomes[producer].outputs[output_name]

    def _lookup(self, key: str) -> Record | None:
        record = self.cache.read_record(key)
        if record is None:
            return None
        for digest in record.outputs.values():
            if not self.cache.check_artifact(digest, quick=True):
                self.cache.discard_artifact(digest)
                return None
        return record

    def _why_stale(self, spec: StageSpec, parts: dict[str, Any]) -> str:
        previous = self.old_lock.get(spec.name)
        if previous is None:
            return "not run before"
        if previous.get("key") == key_from_parts(parts):
            return "in the lock file but not in the cache"
        old_record = self.cache.read_record(previous.get("key", ""))
        if old_record is not None and old_record.parts:
            return explain_change(old_record.parts, parts)
        return "key changed"

    # -- results -----------------------------------------------------------------

    def _finish_cached(self, spec: StageSpec, outcome: Outcome, record: Record) -> None:
        outcome.status = CACHED
        self._adopt(spec, outcome, record)
        log.info("%s: cached", spec.name)
        self.listener.stage_finished(outcome)

    def _adopt(self, spec: StageSpec, outcome: Outcome, record: Record) -> None:
        outcome.outputs = dict(record.outputs)
        outcome.metrics = dict(record.metrics)
        outcome.measurements = dict(record.measurements)
        outcome.message = record.message
        self.records[spec.name] = record
        outcome.published = self._publish(record, force=outcome.status == RAN)
        if self.write_lock:
            self.new_lock[spec.name] = lock_module.entry(spec.kind, record.key, record.outputs, record.metrics)
            self._write_lock()

    def _execute(self, stage: Stage, ctx: StageContext) -> StageResult:
        """Run a stage in this process, or in a child process while another stage runs here."""
        if not self.in_process_slot.acquire(blocking=False):
            return _run_in_process(ctx.kind, ctx)
        try:
            return stage.run(ctx) or StageResult()
        finally:
            self.in_process_slot.release()

    def _write_lock(self) -> bool:
        """Write the lock file; one process and one thread at a time."""
        from pipeline.cache import canonical_digest

        with self.thread_lock:
            if not lock_module.differs(self.pipeline.lock_path, self.pipeline.name, self.pipeline.order, self.new_lock):
                return False
            name = f"lockfile-{canonical_digest(str(self.pipeline.lock_path))[:16]}"
            with self.cache.file_lock(name):
                return lock_module.write(self.pipeline.lock_path, self.pipeline.name, self.pipeline.order, self.new_lock)

    def _run_stage(self, spec: StageSpec, outcome: Outcome, parts: dict[str, Any]) -> None:
        stage = self.stages[spec.name]
        inputs = self._input_folders(spec)

        workspace = self.cache.new_workspace()
        outputs = {}
        for output in stage.outputs(spec.params):
            outputs[output.name] = workspace / output.name / "files"
            outputs[output.name].mkdir(parents=True)
        ctx = StageContext(
            stage_name=spec.name,
            kind=spec.kind,
            params=spec.params,
            config=stage.config(spec.params, self.pipeline.document),
            inputs=inputs,
            outputs=outputs,
            root=self.pipeline.root,
            output_dir=self.pipeline.output_dir,
            progress_factory=lambda description, total: self.listener.progress(spec.name, description, total),
            input_names=dict(spec.bindings),
        )

        outcome.status = "running"
        self.listener.stage_started(outcome)
        started = time.perf_counter()
        try:
            result = self._execute(stage, ctx)
            digests = {name: self.cache.store(folder) for name, folder in outputs.items()}
        except KeyboardInterrupt:
            outcome.seconds = time.perf_counter() - started
            self.cache.remove_workspace(workspace)
            raise
        except StageFailed as exc:
            self._fail(outcome, started, str(exc), exc.metrics)
            self.cache.remove_workspace(workspace)
            return
        except PipeError as exc:
            self._fail(outcome, started, str(exc), {})
            self.cache.remove_workspace(workspace)
            return
        except Exception as exc:  # a bug in a stage: report it, keep the run going
            log.debug("%s: traceback", spec.name, exc_info=True)
            self._fail(outcome, started, f"{type(exc).__name__}: {exc} (rerun with -v for the traceback)", {})
            self.cache.remove_workspace(workspace)
            return
        seconds = time.perf_counter() - started
        self.cache.remove_workspace(workspace)

        record = Record(
            key=outcome.key or "",
            kind=spec.kind,
            outputs=digests,
            metrics=_plain(result.metrics),
            measurements=_plain(result.measurements),
            publish=dict(result.publish),
            message=result.message,
            seconds=round(seconds, 3),
            parts=parts,
        )
        self.cache.write_record(record)

        previous = self.old_lock.get(spec.name)
        if previous and previous.get("key") == outcome.key:
            outcome.reproduced = previous.get("outputs") == digests
            if not outcome.reproduced:
                log.warning("%s: outputs differ from the digests in the lock file", spec.name)

        outcome.status = RAN
        outcome.seconds = seconds
        self._adopt(spec, outcome, record)
        log.info("%s: ran in %.1f s", spec.name, seconds)
        self.listener.stage_finished(outcome)

    def _fail(self, outcome: Outcome, started: float, message: str, metrics: dict[str, Any]) -> None:
        outcome.status = FAILED
        outcome.seconds = time.perf_counter() - started
        outcome.error = message
        outcome.metrics = _plain(metrics)
        log.info("%s: failed: %s", outcome.name, message)
        self.listener.stage_finished(outcome)

    def _input_folders(self, spec: StageSpec) -> dict[str, Path | list[Path]]:
        """Return the input folders after a full digest check of each.

        A corrupt input is discarded with the records that name it, and the
        run starts over, so the stage that produced it runs again.
        """
        folders: dict[str, Path | list[Path]] = {}
        digests = self._input_digests(spec)
        for name, value in digests.items():
            values = value if isinstance(value, list) else [value]
            for digest in values:
                if not self.cache.check_artifact(digest, quick=False):
                    self.cache.discard_artifact(digest)
                    raise _CorruptInput(f"input '{name}' of stage '{spec.name}' (artifact {digest[:12]}) is corrupt")
            paths = [self.cache.artifact_files(digest) for digest in values]
            folders[name] = paths if isinstance(value, list) else paths[0]
        return folders

    def _publish(self, record: Record, force: bool) -> list[str]:
        published = []
        for target_name, source in sorted(record.publish.items()):
            output_name, _, relative = source.partition("/")
            digest = record.outputs.get(output_name)
            if digest is None:
                log.warning("publish: %s names unknown output '%s'", target_name, output_name)
                continue
            source_path = self.cache.artifact_files(digest) / relative
            target = self.pipeline.output_dir / target_name
            published.append(target_name)
            if not force and _same_file(source_path, target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copy2(source_path, tmp)
            os.replace(tmp, target)
        return published

    # -- after the run -----------------------------------------------------------

    def _write_report(self) -> str | None:
        from pipeline.report import render_report

        sections = []
        without_result = []
        for name in self.pipeline.order:
            record = self.records.get(name)
            if record is None:
                outcome = self.outcomes[name]
                detail = outcome.error or outcome.reason
                without_result.append(f"{name}: {outcome.status}" + (f" ({detail})" if detail else ""))
                continue
            outcome = self.outcomes[name]
            section = self.stages[name].report(
                name,
                {"metrics": record.metrics, "measurements": record.measurements, "published": outcome.published},
            )
            if section:
                sections.append(section)
        if not sections:
            return None
        overrides = [f"{stage}.{param}={value}" for stage, params in self.options.overrides.items() for param, value in params.items()]
        text = render_report(self.pipeline, sections, overrides, without_result)
        target = self.pipeline.output_dir / "report.md"
        try:
            if target.read_text() == text:
                return str(target)
        except OSError:
            pass
        write_atomic(target, text.encode())
        return str(target)

    def _append_history(self, ordered: list[Outcome]) -> None:
        ran = [o for o in ordered if o.status in (RAN, FAILED, INTERRUPTED)]
        if not ran:
            return
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pipeline": str(self.pipeline.path),
            "overrides": [f"{stage}.{param}={value}" for stage, params in self.options.overrides.items() for param, value in params.items()],
            "stages": {
                o.name: {"status": o.status, "seconds": round(o.seconds, 3), "measurements": o.measurements}
                for o in ordered
            },
        }
        try:
            self.cache.append_history(self.pipeline.path, entry)
        except OSError as exc:
            log.warning("history: not written (%s)", exc)

    def _resume_command(self, stage: str | None) -> str:
        command = f"pipe run {config_module.display_path(self.pipeline.path)}"
        for name, params in self.options.overrides.items():
            for param, value in params.items():
                command += f" --set {name}.{param}={value}"
        return command


MAX_RESTARTS = 3


def _run_in_process(kind: str, ctx: StageContext) -> StageResult:
    """Run one stage in a fresh process, while another stage runs in this one.

    NOTE: [Parallel stages] Stages that run at the same time must not share
    a process: unpickling or tracing a GraphModule patches
    ``torch.nn.Module.__call__`` for the whole process while it runs, which
    breaks module calls in every other thread. A child process costs a
    torch import and the model loads, so only stages that overlap another
    one use it. The child sends its progress through a queue, and this
    process drives the stage's progress bars.
    """
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    child_ctx = dataclasses.replace(ctx, progress_factory=None)
    advances: dict[int, Callable[[int], None]] = {}

    def forward(event: tuple[Any, ...]) -> None:
        if event[0] == "start":
            _, bar, description, total = event
            advances[bar] = ctx.progress(description, total)
        else:
            _, bar, steps = event
            advances[bar](steps)

    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_set_progress_queue, initargs=(events,)) as pool:
        future = pool.submit(_run_stage_here, kind, child_ctx)
        while not future.done():
            try:
                forward(events.get(timeout=0.1))
            except queue.Empty:
                continue
        result = future.result()
    while True:
        try:
            forward(events.get_nowait())
        except queue.Empty:
            break
    return result or StageResult()


# The queue a child process sends progress events to, set by the pool's
# initializer, and the ids of the child's progress bars.
_PROGRESS_QUEUE: Any = None
_BAR_IDS = itertools.count()


def _set_progress_queue(events: Any) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = events


def _queued_progress(description: str, total: int) -> Callable[[int], None]:
    """Return an ``advance`` function that sends its steps to the parent process."""
    bar = next(_BAR_IDS)
    _PROGRESS_QUEUE.put(("start", bar, description, total))
    return lambda steps=1: _PROGRESS_QUEUE.put(("advance", bar, steps))


def _run_stage_here(kind: str, ctx: StageContext) -> StageResult:
    from stages import load_stage

    if _PROGRESS_QUEUE is not None:
        ctx = dataclasses.replace(ctx, progress_factory=_queued_progress)
    return load_stage(kind).run(ctx)


class _CorruptInput(Exception):
    """An input artifact failed its digest check; the run starts over."""


def _producers(spec: StageSpec) -> list[str]:
    names = []
    for bound in spec.bindings.values():
        names.extend(bound if isinstance(bound, list) else [bound])
    return names


def _same_file(source: Path, target: Path) -> bool:
    try:
        a, b = source.stat(), target.stat()
    except OSError:
        return False
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def _plain(value: Any) -> Any:
    """Convert numpy scalars and tuples to plain JSON/YAML types."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
