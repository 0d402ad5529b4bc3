"""The key-value interface that protocol replicas run their steps against.

Replica logic (``rw/replica.py``, ``qu/replica.py``) is a synchronous step over a
:class:`KV` view: it reads and writes named databases inside one transaction and returns a
reply.  The node runs that step inside an LMDB write transaction (``node/store.py``, group
committed); tests run the very same step against :class:`MemoryKV`.  Keys are raw bytes
compared lexicographically (as LMDB does), so protocols encode keys big-endian to make byte
order equal to logical order and turn "latest version before T" into one cursor seek.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Protocol


class KV(Protocol):
    """One transaction's view of the node's named databases."""

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value under ``key``, or None."""

    def put(self, db: str, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` (overwrites). Only valid in a write transaction."""

    def delete(self, db: str, key: bytes) -> bool:
        """Remove ``key``; whether it was present. Only valid in a write transaction."""

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        """The entry with the greatest key strictly less than ``key``, or None."""

    def scan(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Entries with ``start <= key < stop`` in key order (descending if ``reverse``)."""

    # Keys alone: a value may be a block's fragment (a third of a 1 MiB block), which the
    # store copies out when asked for it; these never ask (issue 34: a fresh write looked
    # up the greatest key below its block and copied the previous block's fragment).

    def has(self, db: str, key: bytes) -> bool:
        """Whether ``key`` is present."""

    def lower_key(self, db: str, key: bytes) -> bytes | None:
        """The greatest key strictly less than ``key``, or None."""

    def scan_keys(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[bytes]:
        """The keys :meth:`scan` gives, without their values."""


class MemoryKV:
    """An in-memory :class:`KV` with the same ordering semantics as LMDB.

    Used by the pure replica tests; it is not transactional (a step either completes or the
    test fails), which is all the tests need.
    """

    def __init__(self) -> None:
        self._keys: dict[str, list[bytes]] = {}
        self._vals: dict[str, dict[bytes, bytes]] = {}

    def _db(self, db: str) -> tuple[list[bytes], dict[bytes, bytes]]:
        if db not in self._vals:
            self._keys[db] = []
            self._vals[db] = {}
        return self._keys[db], self._vals[db]

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._db(db)[1].get(key)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        keys, vals = self._db(db)
        if key not in vals:
            bisect.insort(keys, key)
        vals[key] = bytes(value)

    def delete(self, db: str, key: bytes) -> bool:
        keys, vals = self._db(db)
        if key not in vals:
            return False
        del vals[key]
        keys.pop(bisect.bisect_left(keys, key))
        return True

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        k = self.lower_key(db, key)
        return None if k is None else (k, self._db(db)[1][k])

    def scan(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        vals = self._db(db)[1]
        for k in self.scan_keys(db, start, stop, reverse=reverse):
            yield k, vals[k]

    def has(self, db: str, key: bytes) -> bool:
        return key in self._db(db)[1]

    def lower_key(self, db: str, key: bytes) -> bytes | None:
        keys = self._db(db)[0]
        i = bisect.bisect_left(keys, key)
        return keys[i - 1] if i else None

    def scan_keys(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[bytes]:
        keys = self._db(db)[0]
        picked = keys[bisect.bisect_left(keys, start) : bisect.bisect_left(keys, stop)]
        yield from reversed(picked) if reverse else picked
