"""Tier 1: a server process keeps the memory of its big buffers (issue 34).

Nodes and the mount daemon allocate and free frames and fragments of 0.1-6 MB by the
thousand while a big file streams; glibc mapped each above its threshold with fresh
pages and unmapped it when freed (a page fault and a zeroed page per 4 KiB).
``proc.keep_big_buffers`` fixes the thresholds so freed buffers are reused.  Each
measurement runs in a process of its own: the setting is for the whole process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bftfs import proc

#: Allocates buffers of 1-5 MiB, keeping up to three alive as frames in flight are, and
#: prints the page faults that cost.
_CHURN = """
import resource, sys
from bftfs import proc
if sys.argv[1] == "keep":
    assert proc.keep_big_buffers()
held = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(60):
    held.append(bytearray((1 + i % 5) * 1024 * 1024))
    if len(held) > 3:
        held.pop(i % 3)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_big_buffers_are_reused_not_mapped_anew() -> None:
    default, kept = _faults("default"), _faults("keep")
    # 180 MiB allocated in all: about 46 000 pages if each buffer were mapped anew.
    assert kept < default / 2, (default, kept)
    assert proc.MMAP_THRESHOLD > 8 * 1024 * 1024  # above the largest frame (net/frames.py)
