"""Per-client storage quota of PASIS block versions on one node: who each stored version
is charged to, and each owner's total (synchronous steps over a ``KV``).

A flooding client with a valid key must not fill a node's disk (issue 18; seed 004
L2645-2652 asks for limits on what one client may inject).  Each new version is charged
to the principal whose authenticated WRITE stored it (never to the writer named in its
timestamp: any client can name any writer there), with its size as the store holds it
(key plus value).  The charge and the owner's total (``rw.charge``, ``rw.usage``, layout in
schema.py) change in the same transaction as the version itself: :func:`charge` when a
version is put, :func:`release` when one is deleted (garbage collection, poisonous
discards).  A restarted node therefore starts from exactly what it stores, and a crash
inside a transaction leaves neither a charge without its version nor the reverse.

:func:`over` is the quota rule: a *non-empty* version that would take its owner past the
quota is refused; empty versions (what fs/reclaim.py writes over removed files' blocks)
always pass, so a client over its quota can still free space.
"""

from __future__ import annotations

import struct

from bftfs.kv import KV
from bftfs.rw.schema import DB_CHARGE, DB_USAGE, DB_VERSIONS

_PAIR = struct.Struct(">QQ")
_ONE = struct.Struct(">Q")


def _owner_key(owner: int) -> bytes:
    return _ONE.pack(owner)


def usage_of(kv: KV, owner: int) -> int:
    """Bytes of stored versions charged to ``owner``."""
    raw = kv.get(DB_USAGE, _owner_key(owner))
    return 0 if raw is None else _ONE.unpack(raw)[0]


def usages(kv: KV) -> dict[int, int]:
    """Every owner's total (owners with nothing charged are absent)."""
    return {
        _ONE.unpack(k)[0]: _ONE.unpack(v)[0]
        for k, v in kv.scan(DB_USAGE, b"", b"\xff" * 9)
        if len(k) == _ONE.size and len(v) == _ONE.size
    }


def _add(kv: KV, owner: int, delta: int) -> None:
    total = max(0, usage_of(kv, owner) + delta)
    if total:
        kv.put(DB_USAGE, _owner_key(owner), _ONE.pack(total))
    else:
        kv.delete(DB_USAGE, _owner_key(owner))


def over(used: int, size: int, quota: int | None, *, empty: bool) -> bool:
    """Whether a new version of ``size`` bytes would take an owner that has ``used`` bytes
    past ``quota`` (None: no quota).  Empty versions are never over: they give space back."""
    return quota is not None and not empty and used + size > quota


def charge(kv: KV, key: bytes, owner: int, size: int) -> None:
    """Charge the version stored under ``key`` (just put) to ``owner``."""
    old = kv.get(DB_CHARGE, key)
    if old is not None:  # never twice: a re-put version keeps its first charge
        return
    kv.put(DB_CHARGE, key, _PAIR.pack(owner, size))
    _add(kv, owner, size)


def release(kv: KV, key: bytes) -> None:
    """Give back the charge of the version under ``key`` (just deleted), if it had one."""
    raw = kv.get(DB_CHARGE, key)
    if raw is None:
        return  # stored before charges existed, or already released
    kv.delete(DB_CHARGE, key)
    if len(raw) == _PAIR.size:
        owner, size = _PAIR.unpack(raw)
        _add(kv, owner, -size)


def audit(kv: KV) -> tuple[dict[int, int], int]:
    """The totals recomputed from the charges of versions still stored, and how many
    charges name a version that is gone (a check for tests: both must match the
    store's ``rw.usage`` and zero)."""
    totals: dict[int, int] = {}
    orphans = 0
    for key, raw in kv.scan(DB_CHARGE, b"", b"\xff" * 128):
        if kv.get(DB_VERSIONS, key) is None:
            orphans += 1
            continue
        owner, size = _PAIR.unpack(raw)
        totals[owner] = totals.get(owner, 0) + size
    return totals, orphans
