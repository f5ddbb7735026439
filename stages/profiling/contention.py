"""The CPU time that other processes used while this one timed models.

Latencies measured while other processes compete for the cores are
inflated, PyTorch's multi-threaded kernels most: their threads wait for
each other at every layer. The profile stage records the share of the
machine that other processes used during its timing, and the report
flags a busy machine (see ``stages.profiling.report.busy_note``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

class CpuWatch:
    """Stopwatch for the CPU share that other processes use between ``start()`` and ``others_percent()``."""

    def __init__(self) -> None:
        self._start: tuple[float, float, int] | None = None

    def start(self) -> None:
        busy = _machine_busy_seconds()
        self._start = None if busy is None else (time.perf_counter(), _own_seconds(), busy)

    def others_percent(self) -> float | None:
        """Return the share of all cores' time that other processes used since ``start()``, in percent.

        Returns None where /proc/stat is not readable (other systems than Linux).
        """
        busy = _machine_busy_seconds()
        if self._start is None or busy is None:
            return None
        wall_start, own_start, busy_start = self._start
        wall = time.perf_counter() - wall_start
        others = (busy - busy_start) - (_own_seconds() - own_start)
        capacity = wall * (os.cpu_count() or 1)
        return round(max(0.0, min(100.0, 100.0 * others / capacity)), 1) if capacity > 0 else None


def _own_seconds() -> float:
    """Return the CPU seconds of this process and of its finished child processes (timing workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _machine_busy_seconds() -> float | None:
    """Return the CPU seconds that all cores spent outside idle and I/O wait since boot."""
    try:
        first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    fields = first_line.split()
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal; guest time is already inside user.
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")
