"""File attributes as the FUSE layer sees them (docs/fs-api.md), built from the stat answers
of the Q/U attribute and directory objects (seed 004 section 4.4.4, L3082-3085)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Attr:
    """One inode's attributes.  ``ino`` is the Q/U object id (root = 1); ``mode`` includes
    the S_IFMT type bits; times are integer nanoseconds; ``blocks`` counts 512-byte units."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blksize: int
    blocks: int
    generation: int = 0


def attr_from_stat(ino: int, s: dict[str, Any], blksize: int) -> Attr:
    """An :class:`Attr` from a ``stat_of`` answer (:mod:`bftfs.fsobjects.state`).

    Object ids are never reused (a removed object stays as a tombstone, and creating over
    an existing id is refused), so the generation is always 0.
    """
    size = s["size"]
    # Blocks count the bytes writes stored (``al``), so sparse files look sparse; inline
    # contents, directories, symlinks and files older than that record count their size.
    al = s.get("al")
    stored = size if al is None or s.get("inl") else max(0, min(al, size))
    return Attr(
        ino=ino,
        mode=s["mode"],
        nlink=s["nl"],
        uid=s["uid"],
        gid=s["gid"],
        rdev=s["rdev"],
        size=size,
        atime_ns=s["at"],
        mtime_ns=s["mt"],
        ctime_ns=s["ct"],
        blksize=blksize,
        blocks=(stored + 511) // 512,
    )
