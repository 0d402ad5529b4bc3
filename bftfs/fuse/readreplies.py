"""How a read's answer reaches the kernel (issue 63): a big one from a worker thread,
without the GIL.

Writing a read reply to ``/dev/fuse`` is where the kernel copies it into fresh page-cache
pages: for the 1 MiB requests of a sequential reader (``fuse/mount.py``'s read-ahead) a
few hundred microseconds per request, which released pyfuse3 spends on the loop's thread
with the GIL held.  The project's pyfuse3 (``scripts/pyfuse3-locks.patch``, version 3)
writes a reply of at least ``Operations.read_reply_thread_min`` bytes from a worker
thread without the GIL (libfuse's ``fuse_reply_*`` are thread-safe: a reply is one
``writev`` and a request-list update under the session's lock), so the loop takes the
next request, and the blocks' frames, meanwhile.

Smaller replies stay on the loop's thread, the GIL held, as released pyfuse3 writes them:
a hop to a worker thread and back costs the loop about 45 us of CPU here (60 us in all),
more than the kernel's copy of 128 KiB; and a loop that gives the GIL up around a short
call may wait to take it back behind a worker thread running Python.

What a reply from a thread asks of :meth:`Operations.read`: the buffer it returns must not
change until the reply is written, while other tasks run.  It is a fresh ``bytes``, or a
view of a clean block, which nothing changes in place (``OpenFile.reply``).  A page-cache
invalidation racing the reply (a lease recall, ``fuse/leasecache.py``) is ordered by the
kernel: the read's pages stay locked until its reply arrives, and the invalidation waits
for them, so what it drops includes what the reply filled.
"""

from __future__ import annotations

from typing import Any

import trio

#: Replies of at least this many bytes are written from a worker thread.
READ_REPLY_THREAD_MIN = 256 * 1024
#: Worker threads writing replies at once (the machine of the benchmarks has two cores;
#: more only queue in the kernel's copy).
READ_REPLY_THREADS = 2


def configure(ops: Any, *, thread_min: int = READ_REPLY_THREAD_MIN) -> None:
    """Set pyfuse3's read-reply attributes on the mount's ``Operations`` ``ops`` (each
    mount its own limiter).  ``thread_min`` 0 writes every reply on the loop's thread."""
    ops.read_reply_thread_min = thread_min
    ops.read_reply_limiter = trio.CapacityLimiter(READ_REPLY_THREADS)
