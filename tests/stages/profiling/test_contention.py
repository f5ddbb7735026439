"""The CPU share of other processes, measured against a real busy child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from stages.profiling.contention import CpuWatch

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux /proc/stat")

SPIN_SECONDS = 1.5


def _share_while_child_spins() -> float | None:
    watch = CpuWatch()
    code = f"import time\nend = time.time() + {SPIN_SECONDS}\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    watch.start()
    spinner.wait(timeout=30)
    return watch.others_percent()


def _share_while_this_process_spins() -> float | None:
    watch = CpuWatch()
    watch.start()
    end = time.perf_counter() + SPIN_SECONDS
    while time.perf_counter() < end:
        pass
    return watch.others_percent()


def test_child_counts_and_own_work_does_not() -> None:
    child = _share_while_child_spins()
    own = _share_while_this_process_spins()
    one_core = 100 / (os.cpu_count() or 1)

    # A spinning child uses about one core; the same work in this process is not "other".
    # Background jobs add the same amount to both measurements.
    assert child is not None
    assert own is not None
    assert child >= 0.6 * one_core
    assert child - own >= 0.5 * one_core
