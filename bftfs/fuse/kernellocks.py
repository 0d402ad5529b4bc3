"""The kernel's lock requests in the daemon's terms (issue 37).

``fcntl`` lock types, ``flock`` operations and libfuse's ``l_start``/``l_len`` become the
lock kinds and inclusive byte ranges of :mod:`bftfs.fs.locks`, and a conflicting lock
goes back to the kernel as ``F_GETLK`` reports it."""

from __future__ import annotations

import errno
import fcntl

import pyfuse3

from bftfs.fs.locks import OFFSET_MAX, READ, UNLOCK, WRITE

#: ``fcntl`` lock types and ``flock`` operations -> lock kinds (``fsobjects.locks``).
KINDS = {fcntl.F_RDLCK: READ, fcntl.F_WRLCK: WRITE, fcntl.F_UNLCK: UNLOCK}
FLOCK_KINDS = {fcntl.LOCK_SH: READ, fcntl.LOCK_EX: WRITE, fcntl.LOCK_UN: UNLOCK}


def lock_kind(table: dict[int, int], value: int) -> int:
    kind = table.get(value)
    if kind is None:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return kind


def byte_range(start: int, length: int) -> tuple[int, int]:
    """``l_start``/``l_len`` as libfuse passes them (``l_len`` 0: to the end of the
    file) as an inclusive byte range."""
    if start < 0 or length < 0 or start > OFFSET_MAX:
        raise pyfuse3.FUSEError(errno.EINVAL)
    if length == 0:
        return start, OFFSET_MAX
    if start + length - 1 > OFFSET_MAX:
        raise pyfuse3.FUSEError(errno.EOVERFLOW)
    return start, start + length - 1


def conflict_answer(
    got: tuple[int, int, int, int] | None, asked: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """``F_GETLK``'s answer: the asked lock as ``F_UNLCK`` when nothing conflicts, else the
    conflicting lock (kind, start, length with 0 for "to the end", holder's pid)."""
    if got is None:
        _, start, length, pid = asked
        return fcntl.F_UNLCK, start, length, pid
    other, a, b, holder = got
    return (
        fcntl.F_RDLCK if other == READ else fcntl.F_WRLCK,
        a,
        0 if b == OFFSET_MAX else b - a + 1,
        holder,
    )
