"""Freed host memory is reused, not page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

MEASURE = """
import resource, sys, torch
from se3pyg.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(4):  # a training step's warm-up: the heap grows to its working size
    torch.ones(1 << 26)  # 256 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(1 << 26)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_four_allocations(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_large_blocks_are_reused_without_page_faults() -> None:
    pages = 4 * (1 << 28) // 4096
    default, keep = _faults_of_four_allocations("default"), _faults_of_four_allocations("keep")
    assert keep < pages // 100 and keep * 10 <= default  # glibc's default: fresh pages every time
