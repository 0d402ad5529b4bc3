"""Inode numbers of the snapshot directories a live mount serves (``mount/.snapshots``,
issue 36), kept apart from the live tree's.

A live inode number is a Q/U object id, below ``2**63`` (:data:`~bftfs.fsobjects.MAX_OID`;
the largest, the snapshot list, is no file).  The kernel's inode numbers are 64 bits, so
every number from ``2**63`` up is free: ``.snapshots`` itself is :data:`SNAPDIR` (``2**63``)
and each object as one snapshot shows it gets the next unused number above, handed out in
the order the kernel meets them and never given to anything else while the mount runs.

Why a table and not arithmetic: an object id already takes 63 bits, so ``(snapshot, object)``
cannot be packed into the 63 free bits, and a hash of the pair could collide.  A number
that stood for two objects, or for one object in two snapshots (two versions with different
contents), would let the kernel serve one's cached pages and attributes for the other.  The
numbers are never reused, so the generation stays 0 as for live objects.  The cost is
memory: one entry per object browsed, kept until the mount ends (the views' own caches of
what they read grow as much).
"""

from __future__ import annotations

from collections.abc import Hashable

from bftfs.fsobjects import MAX_OID

#: The first inode number no live object has: ``.snapshots``.
SNAPDIR = MAX_OID + 1


def is_live(ino: int) -> bool:
    """Whether ``ino`` is a live object's inode number (an object id)."""
    return ino < SNAPDIR


class InodeMap:
    """``(view, object id)`` <-> kernel inode number, for numbers above :data:`SNAPDIR`.

    ``view`` is any hashable naming one past tree (the snapshot browser uses the snapshot's
    name and moment, so a snapshot deleted and made again under its name at another moment
    is another view, with other numbers)."""

    def __init__(self) -> None:
        self._ino: dict[tuple[Hashable, int], int] = {}
        self._key: dict[int, tuple[Hashable, int]] = {}
        self._next = SNAPDIR + 1

    def __len__(self) -> int:
        return len(self._key)

    def inode(self, view: Hashable, oid: int) -> int:
        """The kernel's number for object ``oid`` as ``view`` shows it (a new one the first
        time)."""
        if not 0 < oid <= MAX_OID:
            raise ValueError(f"object id {oid} out of range")
        key = (view, oid)
        ino = self._ino.get(key)
        if ino is None:
            ino = self._next
            if ino >= 1 << 64:
                raise OverflowError("no inode numbers left for snapshot views")
            self._next += 1
            self._ino[key] = ino
            self._key[ino] = key
        return ino

    def lookup(self, ino: int) -> tuple[Hashable, int] | None:
        """The ``(view, object id)`` inode ``ino`` was given for, or None (never given: a
        live number, :data:`SNAPDIR`, or one from before this mount)."""
        return self._key.get(ino)
