"""``bftfs verify``: scrub every block of every file reachable from the root (issue 16).

The blocks to check come from the file system itself (a walk of the directory tree by Q/U
queries, like any client's), so a scrub needs no node's word for what exists.  Each block
goes through :func:`bftfs.rw.scrub.scrub_block`: every node's fragment of the latest
complete version compared with the one regenerated from ``m`` valid fragments, missing and
damaged ones written again at the same timestamp.  A node that was down for a while or lost
its disk is brought back to full redundancy this way (background catch-up does the same for
a restarted node, ``node/rw_catchup.py``).  Inline files live in their attribute objects,
which Q/U replicates; they have no blocks to scrub.
"""

from __future__ import annotations

import stat as st
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.fs.clients import MetadataClient
from bftfs.fs.files import file_block_size
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.dirents import all_entries
from bftfs.fsobjects.leases import LEASE_SKEW, MAX_TERM
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import RWClient
from bftfs.rw.messages import block_id
from bftfs.rw.scrub import BlockReport, scrub_block, summarize

__all__ = ["BlockReport", "FileBlocks", "files_with_blocks", "scrub", "summarize"]

#: Blocks scrubbed at once.
CONCURRENCY = 8
#: First wait (seconds) after recalling a lease that refused the walk's query.
RECALL_BACKOFF = 0.01


@dataclass(frozen=True)
class FileBlocks:
    path: str
    data_id: int
    count: int


async def _asked(qu: MetadataClient, oid: int, method: str) -> Any:
    """A query of the present, recalling the exclusive lease a mount holds on the object
    (its queries are refused ``leased`` until the holder wrote back and released:
    ``fsobjects.leases.guarded``), as a mount's own queries do (``Meta._recalling``);
    bounded by the longest lease.

    Raises:
        MethodRefused: ``busy``: the holder never released within the longest term.
    """
    deadline = trio.current_time() + (MAX_TERM + 2 * LEASE_SKEW) / 1e9 + 1.0
    delay = RECALL_BACKOFF
    while True:
        try:
            return await qu.query(oid, method)
        except MethodRefused as e:
            if e.code != "leased":
                raise
        if trio.current_time() > deadline:
            raise MethodRefused("busy", f"object {oid}: a lease holder did not release")
        await qu.update([oid], "fs.recall", {"lt": time.time_ns()})
        await trio.sleep(delay)
        delay = min(2 * delay, 1.0)


async def files_with_blocks(qu: MetadataClient, block_size: int) -> AsyncIterator[FileBlocks]:
    """Every regular file reachable from the root whose content is in blocks."""
    todo = [("", ROOT)]
    seen = {ROOT}
    while todo:
        path, oid = todo.pop()
        listing = await _asked(qu, oid, "fs.readdir")
        for name, (child, _kind) in sorted(all_entries(listing["e"]).items()):
            child = int(child)
            if child in seen:
                continue  # a hard link: its blocks once
            seen.add(child)
            cpath = f"{path}/{name.decode(errors='replace')}"
            s = await _asked(qu, child, "fs.stat")
            if s.get("k") == "d":
                todo.append((cpath, child))
            elif st.S_ISREG(s["mode"]) and not s.get("inl") and s["size"] > 0:
                bs = file_block_size(s, block_size)
                yield FileBlocks(cpath, int(s["d"]), -(-int(s["size"]) // bs))


async def scrub(
    qu: MetadataClient,
    rw: RWClient,
    block_size: int,
    progress: Callable[[int, int, BlockReport], None] | None = None,
) -> list[BlockReport]:
    """Scrub every block of every file; ``progress(done, known, report)`` after each block
    (``known`` grows while the walk finds more files)."""
    reports: list[BlockReport] = []
    known = 0
    limit = trio.Semaphore(CONCURRENCY)

    async def one(block: int) -> None:
        async with limit:
            report = await scrub_block(rw, block)
        reports.append(report)
        if progress is not None:
            progress(len(reports), known, report)

    async with trio.open_nursery() as nursery:
        async for f in files_with_blocks(qu, block_size):
            known += f.count
            for k in range(f.count):
                await limit.acquire()  # bound the tasks waiting, not just those running
                limit.release()
                nursery.start_soon(one, block_id(f.data_id, k))
    return reports
