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
- *Blocks below the size only*: a flush that died after writing blocks past the size (up
  to the reservation mark ``alloc``) leaves them behind; they are rare, and ``alloc`` is
  usually far above what was ever written, so giving back up to it would cost hundreds of
  writes per file.
- *Failure costs space, not data*: a reclaim that cannot reach enough nodes is logged and
  counted (``reclaim_failed``) and the blocks stay until a later ``bftfs verify`` or never.
"""

from __future__ import annotations

import logging
from typing import Any

from bftfs.fs.caches import Caches
from bftfs.fs.errors import NoSpace, Unavailable
from bftfs.fs.files import file_block_size
from bftfs.rw.messages import block_id

log = logging.getLogger(__name__)


class Reclaim(Caches):
    """Writing empty blocks over contents that are gone (see the module docstring)."""

    #: File id -> (data id, size, newest block Time, block size) of removed files still
    #: open here.
    _doomed: dict[int, tuple[int, int, int, int]]
    reclaimed_blocks: int
    reclaim_failed: int

    def _init_reclaim(self) -> None:
        self._doomed = {}
        self.reclaimed_blocks = 0
        self.reclaim_failed = 0

    async def _unlinked(self, ino: int, s: dict[str, Any]) -> None:
        """After an update that returned file ``ino``'s stat ``s``: give back its blocks if
        that removed its last name (now, or at its last release here)."""
        if s.get("k") == "d" or s.get("nl", 1) > 0 or s.get("inl"):
            return  # (inline contents live in the attribute object, not in blocks)
        data = (
            int(s.get("d") or 0),
            int(s.get("size") or 0),
            int(s.get("bt") or 0),
            file_block_size(s, self.bs),
        )
        f = self._files.get(ino)
        if f is not None and f.opens > 0:
            self._doomed[ino] = data
            return
        await self._reclaim(*data)

    async def _released(self, ino: int) -> None:
        """The last handle of ``ino`` here was released."""
        data = self._doomed.pop(ino, None)
        if data is not None:
            await self._reclaim(*data)

    async def _reclaim(self, d: int, size: int, bt: int = 0, bs: int = 0) -> None:
        """Write an empty value over each block of data id ``d`` below ``size``, at Times
        above ``bt`` (the file's newest block Time), so its past versions stay readable
        until retention lets them go.  ``bs``: the file's block size (0: the cluster's),
        which says how many blocks ``size`` spans."""
        count = -(-size // (bs or self.bs))
        if d == 0 or count == 0:
            return
        try:
            await self._blocks(
                self.rw.write_blocks({block_id(d, k): b"" for k in range(count)}, after=bt)
            )
        except (Unavailable, NoSpace) as e:
            self.reclaim_failed += count
            log.warning("could not give back %d block(s) of data id %#x: %s", count, d, e)
            return
        self.reclaimed_blocks += count
