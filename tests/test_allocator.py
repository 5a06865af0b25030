"""cocoseg.engine.allocator: freed activations stay in the process, so the next step's
allocation of the same size costs no page faults (counted by the kernel, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
if sys.argv[1] == "retain":
    from cocoseg.engine.allocator import retain_freed_memory
    assert retain_freed_memory(), "mallopt refused"
def step():  # allocate and free a step's worth of activations: 8 x 64 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(16 << 20) for _ in range(8)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[step() for _ in range(5)])
"""


def _steady_step_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])  # the fifth step's: the heap has reached its high-water mark


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_reused_without_page_faults():
    pages = 8 * (64 << 20) // 4096  # 131,072 pages of 4 KiB
    plain = _steady_step_faults("plain")
    retained = _steady_step_faults("retain")
    assert plain > pages // 2, f"glibc reused freed 64 MiB blocks without the setting ({plain} faults)"
    assert retained < pages // 20, f"{retained} page faults on the fifth step with retained memory"
