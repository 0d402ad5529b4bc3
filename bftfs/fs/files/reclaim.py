"""Giving back the blocks of contents no file reaches any more.

A file's contents live in PASIS blocks ``block_id(d, i)`` under its data id ``d``
(files.py).  Two operations leave a data id behind for good: removing the last name of a
file (unlink, or a rename over it) and truncating it to zero (which switches to a fresh data
id).  The nodes cannot know that a block is dead, so the client that made it dead writes an
empty value over each of its blocks; lazy verification on the nodes then verifies the empty
version and collects the old ones once the retention policy lets them go (a verified empty
version keeps no older versions beyond ``keep_seconds``; docs/lazy.md).

Choices:

- *Open files on this mount* keep their contents until the last handle is released
  (POSIX), so a removed file that is open here is reclaimed at that release.
- *Open files on other mounts* are not known here: they may find the contents gone, as an
  NFS client finds a file another client removed (ESTALE there; here the blocks read as
  empty and the size is what the handle last saw).
- *What was written, not the size*: the blocks given back are those covering the ranges
  the attribute object records as written (``w``, objects.py), below the size and the
  reservation mark ``alloc`` (nothing at or beyond it was ever written); a file made before
  the record existed gives back every block below ``min(size, alloc)``.  So removing a
  sparse file of a petabyte that holds a few blocks costs a few writes, not one per block
  of its size (issue 31: ``truncate -s 999999999999999 f; rm f`` grew the daemon to 23
  GB).  The record keeps at most 32 ranges, joining the closest when there are more, so a
  file written in many far-apart places may cost the gaps between them too; the blocks
  go out :data:`CHUNK` at a time, so memory stays bounded whatever the record says.
- *And the stale ranges past the size*: what a truncation cut off, and what a flush that
  died said it would write (its lease's declaration becomes stale at the file's next
  lease or size change, objects.py ``_settle_lease``), are recorded (``z``) and given
  back too.  A dead flush's declaration not yet settled when the file is removed is not
  (its blocks stay); nor is anything of a file without the record (made before it
  existed) past its size: ``alloc`` is usually far above what was ever written.
- *Failure costs space, not data*: a reclaim that cannot reach enough nodes is logged and
  counted (``reclaim_failed``) and the blocks stay until a later ``bftfs verify`` or never.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.fs.caches import MetadataCache
from bftfs.fs.clients import CHUNK, Meta
from bftfs.fs.errors import NoSpace, Unavailable
from bftfs.fs.files.openfile import file_block_size
from bftfs.rw.messages import block_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadContents:
    """The blocks of a data id no file reaches any more: byte ranges to give back."""

    #: The data id.
    d: int
    #: ``[lo, hi)`` byte ranges, sorted and disjoint.
    ranges: tuple[tuple[int, int], ...]
    #: The file's newest block Time: empty versions go above it.
    bt: int
    #: The file's block size.
    bs: int

    def blocks(self) -> Iterator[int]:
        """Indices of the blocks covering :attr:`ranges`, ascending, each once (lazily:
        a range may span many blocks)."""
        after = -1
        for lo, hi in self.ranges:
            first = max(lo // self.bs, after + 1)
            last = (hi - 1) // self.bs
            yield from range(first, last + 1)
            after = max(after, last)

    def count(self) -> int:
        """How many blocks :meth:`blocks` yields (without yielding them)."""
        total, after = 0, -1
        for lo, hi in self.ranges:
            first = max(lo // self.bs, after + 1)
            last = (hi - 1) // self.bs
            total += max(0, last - first + 1)
            after = max(after, last)
        return total


def dead_contents(s: dict[str, Any], default_bs: int) -> DeadContents | None:
    """What to give back of a file whose stat (or ``fs.open`` answer) is ``s`` once its
    data id is dead: the written ranges (``w``) below ``min(size, alloc)`` and the stale
    ranges (``z``) below ``alloc``, or all below ``min(size, alloc)`` for a file without
    the records; None when there is nothing (no blocks, inline)."""
    d = int(s.get("d") or 0)
    end = int(s.get("size") or 0)
    if s.get("alloc") is not None:
        end = min(end, int(s["alloc"]))
    if d == 0 or s.get("inl") or (end <= 0 and not s.get("z")):
        return None
    w: Sequence[Sequence[int]] | None = s.get("w")
    if w is None:
        ranges = [(0, end)]
    else:
        ranges = [(int(lo), min(int(hi), end)) for lo, hi in w if int(lo) < end]
        # The stale ranges (cut off by a truncation, left by a write lease that never
        # completed): written too, beyond the size but below the reservation.
        alloc = int(s.get("alloc") or 0)
        z: Sequence[Sequence[int]] = s.get("z") or ()
        ranges += [(int(lo), min(int(hi), alloc)) for lo, hi in z if int(lo) < alloc]
        ranges.sort()
    if not ranges:
        return None
    bs = file_block_size(s, default_bs)
    return DeadContents(d, tuple(ranges), int(s.get("bt") or 0), bs)


class Reclaimer:
    """Writing empty blocks over contents that are gone (see the module docstring).
    Given the protocol calls and the cache (which files are open here)."""

    def __init__(self, meta: Meta, cache: MetadataCache) -> None:
        self.meta = meta
        self.cache = cache
        #: File id -> the contents of removed files still open here.
        self._doomed: dict[int, DeadContents] = {}
        #: Blocks given back, and blocks that could not be (counters tests and stats read).
        self.reclaimed_blocks = 0
        self.reclaim_failed = 0

    async def unlinked(self, ino: int, s: dict[str, Any]) -> None:
        """After an update that returned file ``ino``'s stat ``s``: give back its blocks if
        that removed its last name (now, or at its last release here)."""
        if s.get("k") == "d" or s.get("nl", 1) > 0:
            return
        dead = dead_contents(s, self.meta.bs)
        if dead is None:
            return
        f = self.cache.files.get(ino)
        if f is not None and f.opens > 0:
            self._doomed[ino] = dead
            return
        await self.reclaim(dead)

    async def released(self, ino: int) -> None:
        """The last handle of ``ino`` here was released."""
        dead = self._doomed.pop(ino, None)
        if dead is not None:
            await self.reclaim(dead)

    async def reclaim(self, dead: DeadContents | None) -> None:
        """Write an empty value over each block of ``dead``, :data:`CHUNK` at a time, at
        Times above its ``bt`` (the file's newest block Time), so its past versions stay
        readable until retention lets them go."""
        if dead is None:
            return
        blocks = dead.blocks()
        done = 0
        while chunk := list(itertools.islice(blocks, CHUNK)):
            try:
                await self.meta.blocks(
                    self.meta.rw.write_blocks(
                        {block_id(dead.d, k): b"" for k in chunk}, after=dead.bt
                    )
                )
            except (Unavailable, NoSpace) as e:
                left = dead.count() - done
                self.reclaim_failed += left
                log.warning("could not give back %d block(s) of data id %#x: %s", left, dead.d, e)
                return
            done += len(chunk)
            self.reclaimed_blocks += len(chunk)
