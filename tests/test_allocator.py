"""cocoseg.engine.allocator: freed activations stay in the process, so the next step's
allocation of the same size costs no page faults (counted by the kernel, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# One process: five steps with glibc's defaults, then the setting, then five more steps. A step
# allocates and frees a step's worth of activations (8 x 64 MiB); the kernel counts its faults.
PROBE = r"""
import resource, torch
from cocoseg.engine.allocator import retain_freed_memory
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(16 << 20) for _ in range(8)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
plain = [step() for _ in range(5)]
assert retain_freed_memory(), "mallopt refused"
retained = [step() for _ in range(5)]
print(plain[-1], retained[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    plain, retained = (int(v) for v in out.stdout.split()[-2:])  # the fifth step of each
    pages = 8 * (64 << 20) // 4096  # 131,072 pages of 4 KiB
    assert plain > pages // 2, f"glibc reused freed 64 MiB blocks without the setting ({plain} faults)"
    assert retained < pages // 20, f"{retained} page faults on the fifth step with retained memory"
