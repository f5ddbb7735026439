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


def _share_while_other_process_spins() -> float | None:
    watch = CpuWatch()
    code = f"import time\nend = time.time() + {SPIN_SECONDS}\nwhile time.time() < end: pass"
    # The shell exits at once and leaves the spinner to init, so its CPU time is not a child's of this process.
    subprocess.run(["sh", "-c", f"'{sys.executable}' -c '{code}' &"], check=True, timeout=30)
    watch.start()
    time.sleep(SPIN_SECONDS)
    return watch.others_percent()


def _share_while_child_spins() -> float | None:
    watch = CpuWatch()
    code = f"import time\nend = time.time() + {SPIN_SECONDS}\nwhile time.time() < end: pass"
    watch.start()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    return watch.others_percent()


def _share_while_this_process_spins() -> float | None:
    watch = CpuWatch()
    watch.start()
    end = time.perf_counter() + SPIN_SECONDS
    while time.perf_counter() < end:
        pass
    return watch.others_percent()


def test_other_process_counts_and_own_work_does_not() -> None:
    other = _share_while_other_process_spins()
    own = _share_while_this_process_spins()
    child = _share_while_child_spins()
    one_core = 100 / (os.cpu_count() or 1)

    # A spinning process uses about one core. The same work in this process, or in a
    # child process it waits for (a timing worker), is not "other". Background jobs
    # add the same amount to every measurement.
    assert other is not None
    assert own is not None
    assert child is not None
    assert other >= 0.6 * one_core
    assert other - own >= 0.5 * one_core
    assert other - child >= 0.5 * one_core
