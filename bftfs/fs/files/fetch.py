"""Reading into an open file's cache: its blocks, its fresh state, and read-ahead.

A fetch reads blocks of the file's current content (an inline file's content comes with
its attributes); a fresh state under buffered writes re-applies them on it
(:meth:`Fetcher.adopt`); a sequential reader keeps a window of blocks in flight in the
background (:meth:`Fetcher.read_ahead`).  The flush engine (:mod:`bftfs.fs.files.flush`)
holds one and uses it to read what a flush must rewrite.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bftfs.fs.clients import Meta
from bftfs.fs.files.openfile import PREFETCH_GROUP, READAHEAD_MAX_BLOCKS, OpenFile
from bftfs.fs.files.window import DEFAULT_READAHEAD_CEILING, readahead_largest
from bftfs.rw.messages import block_id

log = logging.getLogger(__name__)

#: What runs a task in the background (``Background.spawn``, bftfs/fs/background.py):
#: read-ahead, encode-ahead and write-behind outlive the request that started them.
Spawn = Callable[[Callable[[], Awaitable[None]]], None]
#: The links' measure: the data rate (bytes/s) and round (s) a read gets
#: (``net/rtt.bandwidth_delay``, wired by ``fs/session.py``).
Links = Callable[[], tuple[float, float]]


def refill_group(window: int, bs: int) -> int:
    """Blocks a full window's refill waits for: ``PREFETCH_GROUP``, or half the window
    when the window holds fewer than two groups.  An 8 MiB window of 1 MiB blocks is eight
    blocks: waiting for sixteen due let it run dry every ninth block, and the read at hand
    then waited for a whole new group with nothing in flight (issue 34); refilled at half,
    the other half is still in flight while the refill's frames go out."""
    return min(PREFETCH_GROUP, max(1, window // bs // 2))


def _defer_refill(
    todo: list[int], end: int, bs: int, last: int, file_last: int, group: int
) -> bool:
    """Whether a window's refill waits for a whole ``group`` (:func:`refill_group`):
    nothing of it is needed by the read at hand (``end``), fewer blocks than a group are
    due, and the file goes on past them.  Once the window is at its largest each
    sequential read extends it by the read's size (128 KiB from the kernel, half a 256 KiB
    block), so refilling at once fetched one block per task: one frame per node per block,
    about 5 000 frames for a 200 MiB cold read instead of about 300 (issue 34)."""
    return bool(todo) and len(todo) < group and todo[0] * bs >= end and last < file_last


class Fetcher:
    """Blocks and states read from the servers into open files' caches, and the
    read-ahead window of a sequential reader.  Given the protocol calls, the read-ahead's
    sizes, the counters of ``FlushEngine.streaming`` and the background's ``spawn``."""

    def __init__(
        self,
        meta: Meta,
        *,
        readahead: int,
        readahead_max: int,
        streaming: Counter[str],
        spawn: Spawn,
    ) -> None:
        self.meta = meta
        self.readahead = readahead
        #: The read-ahead window's largest size (bytes), 0: no background read-ahead; the
        #: floor of the size measured from the links (:attr:`links`).
        self.readahead_max = readahead_max
        #: The links' rate and round (None: not measured; the window's largest size is
        #: ``readahead_max``), and the most they may raise it to (``fs/files/window.py``).
        self.links: Links | None = None
        self.readahead_ceiling = DEFAULT_READAHEAD_CEILING
        self.streaming = streaming
        self.spawn = spawn

    def largest_window(self, bs: int) -> int:
        """The read-ahead window's largest size now, for a file of ``bs``-byte blocks:
        ``readahead_max`` raised to what the links' bandwidth-delay product asks
        (:func:`~bftfs.fs.files.window.readahead_largest`), at most
        ``READAHEAD_MAX_BLOCKS`` blocks."""
        largest = self.readahead_max
        if self.links is not None:
            rate, round_s = self.links()
            largest = readahead_largest(rate, round_s, largest, self.readahead_ceiling)
            if largest > self.streaming["readahead-largest"]:
                self.streaming["readahead-largest"] = largest
        return min(largest, READAHEAD_MAX_BLOCKS * bs)

    @property
    def rw(self) -> Any:
        """The PASIS client (the one :class:`~bftfs.fs.clients.Meta` holds)."""
        return self.meta.rw

    async def fetch(self, f: OpenFile, indices: list[int]) -> None:
        if f.st.get("inl"):  # the content comes with the attributes
            await self.adopt(f, await self.meta.query(f.ino, "fs.open"))
            indices = [k for k in indices if f.missing(k)]
            if not indices:
                return
        await self._fetch_blocks(f, indices)

    async def _fetch_blocks(self, f: OpenFile, indices: list[int]) -> None:
        """Read blocks of ``f``'s current data id into its clean cache (an inline file's
        content is block 0 of its stat already)."""
        if f.st.get("inl"):
            return
        d, bs = f.data_id, f.bs
        got = await self.meta.blocks(self.rw.read_blocks([block_id(d, k) for k in indices]))
        if f.data_id != d or f.bs != bs:  # truncated to zero, or another block size: the
            return  # indices are not its blocks any more
        for k in indices:
            if k not in f.dirty:
                f.remember(k, got[block_id(d, k)])

    async def adopt(self, f: OpenFile, s: dict[str, Any]) -> None:
        """Take ``s`` (fresh from the servers) as ``f``'s state.  If another client changed
        the file under this client's buffered writes, they are re-applied on its new
        content (:meth:`OpenFile.rebase`): each write's bytes at its offset, each append at
        the new end of file, so nothing either client wrote is lost."""
        if not (f.log and f.changed_by_others(s)):
            f.reset(s)
            return
        mtime = f.mtime
        for offset, data, appended in f.rebase(s):
            if appended:
                offset = f.size
            need = f.blocks_to_read_for_write(offset, len(data))
            if need:
                await self._fetch_blocks(f, need)
            f.apply_write(offset, data, 0)
        f.mtime = mtime

    # Read-ahead --------------------------------------------------------------------------

    async def read_ahead(self, f: OpenFile, offset: int, size: int) -> None:
        """Keep a window of blocks in flight ahead of a sequential reader, and wait for the
        ones this read needs.

        A read at 0 (the window starts afresh) or where the last one ended is sequential:
        the window doubles, from ``readahead`` up to :meth:`largest_window`, and every block in
        it neither cached, dirty nor in flight yet is fetched in the background in groups of
        ``PREFETCH_GROUP`` (one task each; their reads start together, so each node gets
        them in one batch).  A read ahead of the last one by at most the largest window
        counts as sequential too: the kernel's own read-ahead sends its reads concurrently
        (two or more 1 MiB reads of a 2 MiB window, fuse/mount.py), so the next ones arrive
        before the first has ended, and taken as seeks they dropped the window: every read
        fetched its own block, one frame per node each (issue 34).  Those concurrent reads
        are served in any order (each FUSE request is a task, run in the event loop's
        order), so a read behind the last one by at most the largest window while a window
        is open is one of them that came late: it keeps the window as it is, neither
        dropping nor growing it, and waits for its blocks.  Taken as a seek, it dropped the
        window, which then grew again from ``readahead`` in small fetches (four reads in
        flight, each four served last first: 27 fetches of 176 blocks instead of 16).
        Any other read drops the window (what is in flight still lands).  The fetches are
        ordinary PASIS reads (validated, repaired: :meth:`RWClient.read_blocks`); what they
        read is kept only if the file is still at the content they were started on
        (the window's ``epoch``, :meth:`OpenFile.invalidate_prefetch`).  The caller then fetches
        whatever the read needs that did not arrive (a failed or invalidated fetch)."""
        end = min(offset + size, f.size)
        if offset >= end or not self.readahead_max or f.st.get("inl"):
            return
        bs = f.bs
        largest = self.largest_window(bs)
        ahead = offset - f.last_read
        late = -largest <= ahead < 0 and f.window.size > 0
        if not (late or 0 <= ahead <= largest):
            f.window.size, f.window.next_block = 0, 0
            if offset != 0:
                return  # a seek; a read at 0 starts the window afresh
        if not late:
            self._extend_window(f, offset, end, largest)
        waited = False
        for k in range(offset // bs, (end - 1) // bs + 1):
            ev = f.window.inflight.get(k)
            if ev is not None:
                if not ev.is_set():
                    waited = True
                await ev.wait()
            if k in f.clean:
                self.streaming["readahead-hits"] += 1
        if waited:
            self.streaming["readahead-waits"] += 1

    def _extend_window(self, f: OpenFile, offset: int, end: int, largest: int) -> None:
        """Double ``f``'s read-ahead window (up to ``largest``) past a sequential read of
        ``[offset, end)`` and fetch what of it is neither cached, dirty nor in flight."""
        bs = f.bs
        f.window.size = min(max(2 * f.window.size, self.readahead), largest)
        first = max(offset // bs, f.window.next_block)
        stop = min(end + f.window.size, f.valid)
        last = (stop - 1) // bs
        todo = [
            k
            for k in range(first, last + 1)
            if k not in f.dirty and k not in f.clean and k not in f.window.inflight
        ]
        # A window widened past readahead_max for long links refills in the groups of
        # readahead_max's: a group is one frame a node, sent whole, so big groups on a
        # long link leave it idle while the next group's request travels (docs/wan.md).
        group = refill_group(min(f.window.size, self.readahead_max), bs)
        if _defer_refill(todo, end, bs, last, (f.valid - 1) // bs, group):
            todo = []  # the window is refilled a whole group at a time (below)
        else:
            f.window.next_block = max(f.window.next_block, last + 1)
        for at in range(0, len(todo), PREFETCH_GROUP):
            self._prefetch(f, todo[at : at + PREFETCH_GROUP])

    def _prefetch(self, f: OpenFile, indices: list[int]) -> None:
        """Fetch ``indices`` of ``f``'s current content in the background (see
        :meth:`read_ahead`); a failure is only counted: the read that needs a block
        fetches it again and meets the error itself."""
        d, epoch, done = f.data_id, f.window.epoch, trio.Event()
        for k in indices:
            f.window.inflight[k] = done
        self.streaming["readahead-blocks"] += len(indices)
        self.streaming["readahead-fetches"] += 1

        async def fetch() -> None:
            try:
                got = await self.meta.blocks(
                    self.rw.read_blocks([block_id(d, k) for k in indices], concurrency=len(indices))
                )
                if f.window.epoch == epoch and f.data_id == d:
                    for k in indices:
                        if k not in f.dirty:
                            f.remember(k, got[block_id(d, k)])
                else:
                    self.streaming["readahead-discarded"] += len(indices)
            except Exception as e:
                self.streaming["readahead-failures"] += 1
                log.debug("read-ahead of file %d failed: %s", f.ino, e)
            finally:
                for k in indices:
                    if f.window.inflight.get(k) is done:
                        del f.window.inflight[k]
                done.set()

        self.spawn(fetch)
