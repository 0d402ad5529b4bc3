"""The mount's read-reply settings (``bftfs/fuse/readreplies.py``) and the pyfuse3 build
that honours them (``scripts/pyfuse3-locks.patch`` version 3, issue 63)."""

from __future__ import annotations

import pyfuse3
import trio

from bftfs.fuse.readreplies import READ_REPLY_THREAD_MIN, READ_REPLY_THREADS, configure


def test_the_installed_pyfuse3_writes_read_replies_without_the_gil() -> None:
    """The patch's version 3 is what ``scripts/pyfuse3-locks.sh`` checks; released
    pyfuse3 has neither the reply function nor the attributes (they would be ignored)."""
    assert pyfuse3.LOCKS_PATCH >= 3
    assert callable(pyfuse3._reply_buf_nogil)  # type: ignore[attr-defined]
    assert pyfuse3.Operations.read_reply_thread_min == 0  # released behaviour by default


def test_configure_gives_each_mount_its_threshold_and_own_limiter() -> None:
    a, b = pyfuse3.Operations(), pyfuse3.Operations()
    configure(a)
    configure(b, thread_min=0)
    assert a.read_reply_thread_min == READ_REPLY_THREAD_MIN > 0
    assert b.read_reply_thread_min == 0
    assert isinstance(a.read_reply_limiter, trio.CapacityLimiter)
    assert a.read_reply_limiter.total_tokens == READ_REPLY_THREADS
    assert a.read_reply_limiter is not b.read_reply_limiter
