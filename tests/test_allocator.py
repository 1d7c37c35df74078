"""Freed host memory is reused, not page-faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from se3pyg.allocator import GLIBC_TUNABLES

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

MEASURE = """
import resource, sys
from se3pyg.allocator import exec_keeping_freed_memory, keep_freed_memory
if sys.argv[1] == "keep":  # as the se3pyg command and its workers start
    exec_keeping_freed_memory()
    assert keep_freed_memory()
import torch
for _ in range(4):  # a training step's warm-up: the heap grows to its working size
    torch.ones(1 << 26)  # 256 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(1 << 26)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(code: str, *args: str, tunables: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env)
    return done.stdout


@pytest.mark.slow
def test_freed_large_blocks_are_reused_without_page_faults() -> None:
    """Every process, not most: with mallopt alone, glibc's tcache made 6 of 12 such processes fault again."""
    pages = 4 * (1 << 28) // 4096
    default = int(_run(MEASURE, "default"))
    assert default > pages // 2  # glibc's default: fresh pages every time
    for _ in range(4):
        assert int(_run(MEASURE, "keep")) < pages // 100


@pytest.mark.slow
def test_the_restart_keeps_arguments_and_the_users_own_tunables() -> None:
    code = (
        "import os, sys; from se3pyg.allocator import exec_keeping_freed_memory; exec_keeping_freed_memory();"
        "print(os.environ['GLIBC_TUNABLES']); print(sys.argv[1:])"
    )
    tunables, args = _run(code, "a b", "--c", tunables="glibc.malloc.arena_max=2").splitlines()
    assert tunables == f"glibc.malloc.arena_max=2:{GLIBC_TUNABLES}"
    assert args == "['a b', '--c']"
    again = _run(code, tunables=GLIBC_TUNABLES).splitlines()[0]
    assert again == GLIBC_TUNABLES  # set already: no restart, nothing appended
