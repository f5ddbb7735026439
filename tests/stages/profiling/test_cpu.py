from __future__ import annotations

from pathlib import Path

import pytest

from stages.profiling.cpu import describe_cpu

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""

OLD_CORE = """model name\t: Intel(R) Core(TM) i7-6700 CPU @ 3.40GHz
flags\t\t: fpu sse avx2
"""

GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes asimddp i8mm
CPU part\t: 0xd4f
"""


def test_cpu_names_int8_features() -> None:
    assert describe_cpu(XEON) == "Intel(R) Xeon(R) Platinum 8480+ (avx512_vnni, amx_int8)"


def test_cpu_without_int8_features() -> None:
    assert describe_cpu(OLD_CORE) == "Intel(R) Core(TM) i7-6700 CPU @ 3.40GHz (no int8 dot-product instructions)"


def test_cpu_arm_features() -> None:
    assert describe_cpu(GRAVITON) == "0xd4f (asimddp, i8mm)"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpu_of_this_machine() -> None:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    description = describe_cpu()
    if model:
        assert description.startswith(" ".join(model.split()))
    assert description.endswith(")")
