"""Encode-ahead: a sequential writer's blocks are sealed and erasure-coded as they fill.

A background flush (write-behind, ``fs/writeback/flush_behind.py``) used to seal and encode its
blocks when it started, in one worker-thread call, and only then send them: on a 200 MiB
write that was about a quarter of every flush's time, with the nodes idle and the
previous flush's size update the only thing in flight (issue 34, ninth pass).  Here a
block is handed to the PASIS client's ``prepare`` as soon as a sequential write fills it,
so the work overlaps the flush in progress and the next flush finds its blocks ready.

What a prepared block may be used for (:func:`take`): the flush of the very buffer object
that was prepared, of the same data id.  While a block is prepared, a write to it copies
the buffer first (:meth:`OpenFile.private`), so the object the worker thread reads is never
changed; the copy is a new object, so the preparation no longer matches and the flush
encodes the block itself.  Below the file system the encoding is used only by the writer
that made it (a mount that moved to another generation encodes again) and only with the
sealed bytes it was made of (``fs/clients/seal.py``), so what goes out is always sealed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.fs.files.openfile import OpenFile
from bftfs.rw.messages import block_id

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ahead:
    """One block being prepared or prepared: the buffer, its data id, the result (None
    until ``done`` is set, and after a failure)."""

    buf: bytes | bytearray
    data_id: int
    prepared: Any = None
    done: trio.Event = field(default_factory=trio.Event)


def start(
    f: OpenFile,
    k: int,
    prepare: Callable[[int, bytes | bytearray], Awaitable[Any]],
    spawn: Callable[[Callable[[], Awaitable[None]]], None],
    streaming: Counter[str],
    limit: trio.Semaphore,
) -> None:
    """Prepare block ``k`` of ``f`` in the background if it is a full dirty block of a
    file whose block size is settled (recorded at its first flush) and not prepared yet;
    ``limit`` bounds the preparations running at once (the mount's)."""
    buf = f.dirty.get(k)
    if buf is None or len(buf) != f.bs or k in f.ahead or f.st.get("inl") or "bs" not in f.st:
        return
    entry = f.ahead[k] = Ahead(buf, f.data_id)
    streaming["ahead-blocks"] += 1

    async def run() -> None:
        try:
            async with limit:
                entry.prepared = await prepare(block_id(entry.data_id, k), buf)
        except Exception as e:  # the flush encodes the block itself
            streaming["ahead-failures"] += 1
            log.debug("encode-ahead of block %d of file %d failed: %s", k, f.ino, e)
        finally:
            entry.done.set()
            # Failed, or the buffer is no longer the block's (flushed, cut, replaced):
            # nothing can use the entry; a flush took it meanwhile if it was ready.
            if f.ahead.get(k) is entry and (
                entry.prepared is None or f.dirty.get(k) is not entry.buf
            ):
                del f.ahead[k]

    spawn(run)


def take(
    f: OpenFile, d: int, blocks: Mapping[int, bytes], streaming: Counter[str]
) -> dict[int, Any]:
    """The preparations a flush of ``blocks`` (of data id ``d``) can use, by block id.
    The entries of those blocks are dropped, used or stale, except those still running:
    they stay until their worker thread is done with the buffer, so that a write to the
    block copies it first even if this flush fails and leaves it dirty (a truncation
    resizing a buffer the thread reads would fail)."""
    out: dict[int, Any] = {}
    for k, data in blocks.items():
        entry = f.ahead.get(k)
        if entry is None:
            continue
        if not entry.done.is_set():
            streaming["ahead-late"] += 1
            continue
        del f.ahead[k]
        if entry.buf is data and entry.data_id == d and entry.prepared is not None:
            out[block_id(d, k)] = entry.prepared
        else:
            streaming["ahead-unused"] += 1
    streaming["ahead-used"] += len(out)
    return out


def forget(f: OpenFile, k: int) -> None:
    """Block ``k`` of ``f`` is clean now: drop its entry if its thread is done (a running
    one drops itself when it ends, the buffer being no longer the block's)."""
    entry = f.ahead.get(k)
    if entry is not None and entry.done.is_set():
        del f.ahead[k]
