"""The state of the machine's free memory before a timed phase (``seqio.py --memory``).

On the virtual machines these figures come from (Firecracker, a virtio balloon whose
driver reports free pages, ``/sys/module/page_reporting``), memory left free for some
seconds goes back to the host, and the next process to touch it pays the host's fault:
2.2-2.7 ms of system CPU a MiB on this machine, against 0.4 ms for memory freed a moment
before (touching 2 GiB of anonymous memory).  A write allocates
page-cache pages for everything it stores (each GlusterFS brick its replica, 3 MiB a MiB
written; bftfs's six nodes their fragments, 2 MiB), so the kind of free memory a target
meets moves its write rate: GlusterFS replica 3's 200 MiB write with fsync ran at 112 MB/s
on memory left free 12 s and at 191 on memory just freed, in one hour; bftfs's nodes spent
1.1-1.2 s of system CPU storing it on the one and 0.2-0.3 s on the other.  Interleaved
targets used to meet whatever the one before left: GlusterFS, mounted a second after the
local disk's run freed its pages, wrote into them; bftfs, whose six nodes start in seven
seconds, often into memory gone back to the host.  How long the host takes is its own
affair (a 15 s wait left GlusterFS at 200 MB/s on another day), so no wait makes memory
reliably cold; touching it makes it reliably hot.  So each timed phase now starts from
one stated state:

- ``hot`` (the default): ``sync``, drop the page cache, then this process touches
  :func:`hot_mib` of memory and frees it right before the phase: the target's new pages
  are ones the guest just held, as on a machine whose memory is full of page cache that
  a write reclaims;
- ``as-is``: nothing (results before 2026-12-06).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

STATES = ("hot", "as-is")
REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")
PAGE = mmap.PAGESIZE
MiB = 1 << 20


def reporting() -> bool:
    """Whether this kernel reports free pages to a host (recorded beside the results)."""
    return REPORTED.exists()


def drop_caches() -> str | None:
    """Write dirty pages and drop the page cache, dentries and inodes; None when done,
    else why not (without root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        return f"page cache not dropped: {e.strerror or e}"
    return None


def hot_mib(size_mib: int) -> int:
    """Memory to hold and free before a phase that stores ``size_mib``: room for three
    replicas' page cache and the daemons' buffers, at most half of what is available."""
    want = max(2048, 4 * size_mib)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(want, int(line.split()[1]) // 1024 // 2)
    except (OSError, ValueError):
        pass
    return want


def touch_and_free(mib: int) -> None:
    """Touch ``mib`` MiB of anonymous memory page by page, then give it back."""
    with mmap.mmap(-1, mib * MiB) as m:
        for off in range(0, mib * MiB, PAGE):
            m[off] = 1


def prepare(state: str, size_mib: int, *, dropped: bool = False) -> str | None:
    """Bring free memory into ``state`` (:data:`STATES`); None when done, else why not.
    ``dropped``: the caller has just dropped the page cache itself."""
    if state == "as-is":
        return None
    why = None if dropped else drop_caches()
    if why:
        return why
    touch_and_free(hot_mib(size_mib))
    return None
