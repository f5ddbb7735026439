"""Rendering a run for a person: a live table on a terminal, plain lines elsewhere.

Both renderers are :class:`pipeline.runner.Listener` implementations. The
live one uses rich and is imported only when stdout is a terminal.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from pipeline.runner import Listener, Outcome, RunResult
from stages.profiling.report import TINY_LATENCY_MS, busy_note

STATUS_STYLE = {
    "waiting": "dim",
    "running": "bold yellow",
    "cached": "cyan",
    "ran": "green",
    "failed": "bold red",
    "skipped": "magenta",
    "interrupted": "bold red",
    "would run": "yellow",
}


class PlainRenderer(Listener):
    """One line per event, no control codes: for pipes, files and CI logs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def stage_started(self, outcome: Outcome) -> None:
        self._print(f"{outcome.name}: running ({outcome.kind}; {outcome.reason})")

    def stage_waiting(self, outcome: Outcome) -> None:
        self._print(f"{outcome.name}: {outcome.reason}")

    def stage_finished(self, outcome: Outcome) -> None:
        self._print(_finished_line(outcome))

    def progress(self, stage: str, description: str, total: int) -> Callable[[int], None]:
        state = {"done": 0, "next": 0.25}

        def advance(n: int) -> None:
            state["done"] += n
            fraction = state["done"] / max(total, 1)
            if fraction >= state["next"] or state["done"] >= total:
                self._print(f"{stage}: {description} {state['done']}/{total}")
                while state["next"] <= fraction:
                    state["next"] += 0.25

        return advance


class LiveRenderer(Listener):
    """A live stage table with progress bars, for a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.outcomes: list[Outcome] = []
        self.live: Any = None
        self.progress_bars: Any = None
        self.started: dict[str, float] = {}

    def plan(self, pipeline: Any, outcomes: list[Outcome]) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.outcomes = outcomes
        self.progress_bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console,
        )
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
        self.live.__enter__()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("stage")
        table.add_column("kind")
        table.add_column("status")
        table.add_column("seconds", justify="right")
        table.add_column("note", overflow="fold")
        for outcome in self.outcomes:
            seconds = outcome.seconds
            if outcome.status == "running":
                seconds = time.perf_counter() - self.started.get(outcome.name, time.perf_counter())
            style = STATUS_STYLE.get(outcome.status, "")
            note = outcome.error or outcome.message or (outcome.reason if outcome.status != "cached" else "")
            table.add_row(
                outcome.name, outcome.kind, f"[{style}]{outcome.status}[/]",
                f"{seconds:.1f}" if outcome.status in ("running", "ran", "failed") else "", note,
            )
        return Group(table, self.progress_bars) if self.progress_bars else table

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def stage_started(self, outcome: Outcome) -> None:
        self.started[outcome.name] = time.perf_counter()
        self._refresh()

    def stage_waiting(self, outcome: Outcome) -> None:
        self._refresh()

    def stage_finished(self, outcome: Outcome) -> None:
        if self.progress_bars is not None:
            for task in list(self.progress_bars.tasks):
                if task.description.startswith(f"{outcome.name}:"):
                    self.progress_bars.remove_task(task.id)
        self._refresh()

    def progress(self, stage: str, description: str, total: int) -> Callable[[int], None]:
        task = self.progress_bars.add_task(f"{stage}: {description}", total=total)

        def advance(n: int) -> None:
            self.progress_bars.advance(task, n)
            self._refresh()

        return advance

    def close(self) -> None:
        if self.live is not None:
            self._refresh()
            self.live.__exit__(None, None, None)
            self.live = None


def _finished_line(outcome: Outcome) -> str:
    if outcome.status == "ran":
        line = f"{outcome.name}: ran in {outcome.seconds:.1f} s"
        return line + (f"; {outcome.message}" if outcome.message else "")
    if outcome.status == "failed":
        return f"{outcome.name}: failed: {outcome.error}"
    if outcome.status == "cached":
        return f"{outcome.name}: cached"
    return f"{outcome.name}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")


def summary_lines(result: RunResult) -> list[str]:
    """Return the lines a person reads after a run: checks, accuracies, speed-up, files."""
    lines = []
    for outcome in result.outcomes:
        if "accuracy test" in outcome.message and outcome.status in ("ran", "cached"):
            lines.append(f"{outcome.name}: {outcome.message}")
    for outcome in result.outcomes:
        metrics = outcome.metrics if outcome.status in ("ran", "cached", "failed") else {}
        if "top1_fp32" in metrics and "top1_int8" in metrics:
            lines.append(
                f"accuracy ({outcome.name}): fp32 {metrics['top1_fp32']:.2f}%, int8 {metrics['top1_int8']:.2f}% "
                f"top-1, agreement {metrics.get('top1_agreement', float('nan')):.2f}%"
            )
        elif "top1_agreement" in metrics:
            lines.append(f"int8 vs fp32 ({outcome.name}): top-1 agreement {metrics['top1_agreement']:.2f}%")
        measurements = outcome.measurements if outcome.status in ("ran", "cached") else {}
        if "latency_fp32_ms" in measurements and "latency_int8_ms" in measurements:
            fp32, int8 = measurements["latency_fp32_ms"], measurements["latency_int8_ms"]
            line = (
                f"speed ({outcome.name}): onnxruntime fp32 {fp32:.3f} ms, int8 {int8:.3f} ms, "
                f"speed-up {fp32 / int8:.2f}x on {measurements.get('cpu', 'this CPU')}"
            )
            if max(fp32, int8) < TINY_LATENCY_MS:
                line += f" (both under {TINY_LATENCY_MS} ms: per-run overhead dominates, so the speed-up says little)"
            busy = busy_note(measurements)
            if busy:
                line += f"; NOTE: {busy}"
            lines.append(line)
    compared = [outcome for outcome in result.outcomes if outcome.reproduced is not None]
    if compared:
        differing = [outcome.name for outcome in compared if not outcome.reproduced]
        line = f"lock: {len(compared) - len(differing)} of {len(compared)} recomputed stages reproduce the lock file's output digests"
        lines.append(line + (f"; differing: {', '.join(differing)}" if differing else ""))
    from pipeline.config import display_path

    exports = []
    for outcome in result.outcomes:
        if outcome.status not in ("ran", "cached") or "path" not in outcome.metrics:
            continue
        path = outcome.metrics["path"]
        location = display_path(result.root / path) if result.root else path
        # The other files of the export: the Caffe prototxt, input contract, calibration table.
        others = [name for name in outcome.published if name != Path(path).name]
        exports.append(location + (f" (with {', '.join(others)})" if others else ""))
    if exports:
        lines.append("exports: " + ", ".join(exports))
    if result.report:
        lines.append(f"report: {display_path(result.report)}")
    return lines
