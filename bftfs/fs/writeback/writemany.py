"""Small files' buffered contents written back together: one ``fs.writemany`` update for
up to the cluster's ``max_objects`` held files (``fs/writeback/held.py``).

A held file's close leaves its writes for later; when they come due, each was one
``fs.write`` round.  PostMark appends to a thousand small files in a minute, so those
rounds were about a third of its rounds.  Files whose whole content is inline (at most
the cluster's inline limit), closed, fully known to the mount and not being flushed are
sent together instead, grouped by their preferred quorum (object id mod ``n``: a
directory's files share one, ``Meta.new_oid``).  Each item is exactly the ``fs.write``
the file's own flush would send (``FlushEngine``'s inline write), so the nodes take all
or none: a refusal (another client's version, a lease, space) or no answer leaves every
file buffered, and the caller sends each alone, which knows how to retry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from bftfs.fs.clients import Meta
from bftfs.fs.files import OpenFile
from bftfs.fs.files.flush import FlushEngine

log = logging.getLogger(__name__)


def batchable(f: OpenFile, inline: int) -> bool:
    """Whether ``f``'s buffered writes may go in an ``fs.writemany``: closed, inline, its
    content known here, and no flush of it running."""
    return (
        f.opens == 0
        and f.buffered
        and f.size <= inline
        and f.behind is None
        and not f.missing(0)
        and not f.lock.locked()
    )


async def write_inline_many(meta: Meta, engine: FlushEngine, files: Sequence[OpenFile]) -> set[int]:
    """Send the buffered writes of the :func:`batchable` ``files``, up to ``max_objects`` of
    one preferred quorum per update, the updates at once; the object ids of those written (the
    others are still buffered: the caller sends them alone)."""
    groups: dict[int, list[OpenFile]] = {}
    for f in files:
        if batchable(f, engine.inline):
            groups.setdefault(f.ino % meta.config.n, []).append(f)
    written: set[int] = set()
    async with trio.open_nursery() as nursery:
        for group in groups.values():
            width = meta.config.max_objects
            for i in range(0, len(group), width):
                chunk = group[i : i + width]
                if len(chunk) > 1:
                    nursery.start_soon(_write_chunk, meta, engine, chunk, written)
    return written


async def _write_chunk(
    meta: Meta, engine: FlushEngine, files: list[OpenFile], written: set[int]
) -> None:
    locked = []
    try:
        for f in files:
            try:
                f.lock.acquire_nowait()
            except trio.WouldBlock:
                continue  # a flush of it began meanwhile: it goes alone
            locked.append(f)
        if len(locked) < 2:
            return
        items = []
        sent = []
        for f in locked:
            item, done = _item(engine, f)
            items.append(item)
            sent.append(done)
        arg = {"now": max(item["now"] for item in items), "files": items}
        try:
            stats = await meta.update([f.ino for f in locked], "fs.writemany", arg)
        except Exception as e:  # noqa: BLE001 - each is then sent alone (it reports)
            log.debug("writes of %d files together failed (each goes alone): %s", len(locked), e)
            return
        for f, item, s, done in zip(locked, items, stats, sent, strict=True):
            engine.took(f, item, s)
            done()
            written.add(f.ino)
    finally:
        for f in locked:
            f.lock.release()


def _item(engine: FlushEngine, f: OpenFile) -> tuple[dict[str, Any], Any]:
    """``f``'s inline ``fs.write`` (``FlushEngine.inline_write``) with its object, and
    what to do once it was taken."""
    arg, flushed = engine.inline_write(f, len(f.log))
    arg["o"] = f.ino

    def done() -> None:
        f.lease_until = None  # the write ends a lease taken at create
        flushed()

    return arg, done
