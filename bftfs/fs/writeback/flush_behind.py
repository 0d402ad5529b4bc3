"""Write-behind of big files: a sequential writer's flush runs in the background.

A write that takes a file's buffered bytes past ``dirty_limit`` starts the ordinary flush
(``Handles._flush_file``: the pending create, then the flush engine) in a task of its own
(:func:`flush_behind`) and returns; a later write waits only while the buffered bytes stay
past ``behind_limit``.  Whatever the background flush sent is complete on a quorum when it
ends, and writes made meanwhile stay buffered.  Its error waits in ``behind_error`` for the
next write, flush, fsync or close (:func:`behind_done`): a write answers it (EIO: the
buffered writes are dropped, ``Handles._unsent``); a flush, fsync or close sends the data
again first and answers the error only if that fails too (docs/fs.md, "What EIO means").

Kept apart from the flush engine (``fs/files/flush.py``) because it is the handles' decision
when to flush, not how: a flush waits here first, then sends its create, then flushes, each
part visited once on the way down.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from bftfs.fs.files import OpenFile

log = logging.getLogger(__name__)


def flush_behind(
    f: OpenFile,
    flush: Callable[[OpenFile], Awaitable[None]],
    streaming: Counter[str],
    spawn: Callable[[Callable[[], Awaitable[None]]], None],
) -> None:
    """Start flushing ``f`` with ``flush`` in the background (a sequential writer passed
    ``dirty_limit``), unless a background flush runs already; counted in ``streaming``
    (``behind-flushes``, ``behind-failures``: ``FlushEngine.streaming``); ``spawn`` runs
    it (``FlushEngine.spawn``)."""
    if f.behind is not None:
        return
    done = f.behind = trio.Event()
    streaming["behind-flushes"] += 1

    async def flush_in_background() -> None:
        start, blocks = time.monotonic(), len(f.dirty)
        try:
            await flush(f)
            # (Monotonic times, which the WAN bed's link timeline shares: issue 65.)
            log.debug(
                "flush-behind %d: %.3f %.3f %d blocks", f.ino, start, time.monotonic(), blocks
            )
        except Exception as e:
            streaming["behind-failures"] += 1
            log.info("background flush of file %d failed: %s", f.ino, e)
            if f.behind_error is None:
                f.behind_error = e
        finally:
            f.behind = None
            done.set()

    spawn(flush_in_background)


async def behind_done(f: OpenFile, *, report: bool) -> None:
    """Wait for ``f``'s background flush; with ``report``, raise the error a background
    flush failed with (once: it was reported then; the data it did not send is still
    buffered, and the next flush sends it again)."""
    while f.behind is not None:
        await f.behind.wait()
    if report and f.behind_error is not None:
        e, f.behind_error = f.behind_error, None
        raise e
