"""Who each byte a node stores belongs to: per-principal charges over a ``KV``, shared by
both protocols (synchronous steps, run inside the transaction that stores or deletes).

A flooding client with a valid key must not fill a node's disk (issue 18; seed 004
L2645-2652 asks for limits on what one client may inject).  Every record a client's request
makes a node store is charged to the principal that sent the request, as the frame
authenticated it (never an id taken from the request body on its word: any client can name
any other there; a PASIS repair is charged to the writer its timestamp names only once
``b + 1`` other nodes proved that version exists, ``node/rw_server.py``), with its size
as the store holds it (key plus value).  A :class:`Ledger` keeps one
protocol's charges: a table of ``record key -> (owner, size)`` and a table of per-owner
totals, changed in the same transaction as the records themselves, so a restarted node
starts from exactly what it stores and a crash inside a transaction leaves neither a charge
without its record nor the reverse.

Two ledgers: :data:`RW`, PASIS block versions (``rw/quota.py``), and :data:`QU`, Q/U object
state - replica histories, versions, stored requests and the blobs of large states
(``qu/schema.py``).  **One quota per principal counts both** (:func:`used`): a user's share
of a node's disk is one figure, whether it went into file blocks or into metadata (inline
files, xattrs, directory entries), so filling one kind cannot dodge the quota of the other.
The ledgers stay separate so ``bftfs status`` can say which kind a client's bytes are.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bftfs.kv import KV

_PAIR = struct.Struct(">QQ")
_ONE = struct.Struct(">Q")
_END = b"\xff" * 256  # above every record key either protocol uses


def _owner_key(owner: int) -> bytes:
    return _ONE.pack(owner)


@dataclass(frozen=True)
class Ledger:
    """One protocol's charges: ``charges`` (record key -> owner, size) and ``totals``
    (owner -> sum of its charges), two named databases of the node's store."""

    charges: str
    totals: str

    def usage_of(self, kv: KV, owner: int) -> int:
        """Bytes charged to ``owner`` in this ledger."""
        raw = kv.get(self.totals, _owner_key(owner))
        return 0 if raw is None else _ONE.unpack(raw)[0]

    def usages(self, kv: KV) -> dict[int, int]:
        """Every owner's total (owners with nothing charged are absent)."""
        return {
            _ONE.unpack(k)[0]: _ONE.unpack(v)[0]
            for k, v in kv.scan(self.totals, b"", b"\xff" * 9)
            if len(k) == _ONE.size and len(v) == _ONE.size
        }

    def owner_of(self, kv: KV, key: bytes) -> int | None:
        """Whom the record under ``key`` is charged to (None: nobody)."""
        raw = kv.get(self.charges, key)
        if raw is None or len(raw) != _PAIR.size:
            return None
        return int(_PAIR.unpack(raw)[0])

    def _add(self, kv: KV, owner: int, delta: int) -> None:
        total = max(0, self.usage_of(kv, owner) + delta)
        if total:
            kv.put(self.totals, _owner_key(owner), _ONE.pack(total))
        else:
            kv.delete(self.totals, _owner_key(owner))

    def charge(self, kv: KV, key: bytes, owner: int, size: int) -> None:
        """Charge the record stored under ``key`` (just put) to ``owner``; a record that
        has a charge keeps it (a re-put block version is charged once)."""
        if kv.get(self.charges, key) is not None:
            return
        kv.put(self.charges, key, _PAIR.pack(owner, size))
        self._add(kv, owner, size)

    def recharge(self, kv: KV, key: bytes, owner: int, size: int) -> None:
        """The record under ``key`` was (over)written by ``owner``'s request: it now costs
        ``size``, charged to ``owner`` (what the record held before is given back to
        whoever it was charged to)."""
        raw = kv.get(self.charges, key)
        if raw is not None and len(raw) == _PAIR.size:
            if _PAIR.unpack(raw) == (owner, size):
                return  # the common rewrite of an unchanged size: nothing moves
            old_owner, old_size = _PAIR.unpack(raw)
            self._add(kv, old_owner, -old_size)
        kv.put(self.charges, key, _PAIR.pack(owner, size))
        self._add(kv, owner, size)

    def release(self, kv: KV, key: bytes) -> None:
        """Give back the charge of the record under ``key`` (just deleted), if it had one."""
        raw = kv.get(self.charges, key)
        if raw is None:
            return  # stored before charges existed, or already released
        kv.delete(self.charges, key)
        if len(raw) == _PAIR.size:
            owner, size = _PAIR.unpack(raw)
            self._add(kv, owner, -size)

    def audit(self, kv: KV, present: Callable[[bytes], bool]) -> tuple[dict[int, int], int]:
        """The totals recomputed from the charges of records still stored (``present``
        says whether a charged key's record is), and how many charges name a record that
        is gone (a check for tests and fsck: both must match ``totals`` and zero)."""
        totals: dict[int, int] = {}
        orphans = 0
        for key, raw in kv.scan(self.charges, b"", _END):
            if not present(bytes(key)):
                orphans += 1
                continue
            owner, size = _PAIR.unpack(raw)
            totals[owner] = totals.get(owner, 0) + size
        return totals, orphans


#: PASIS block versions (``rw/schema.py``: key = version key).
RW = Ledger("rw.charge", "rw.usage")
#: Q/U records (``qu/schema.py``: key = a table tag and the record's key).
QU = Ledger("qu.charge", "qu.usage")
#: Listeners registers (``listeners/nodeside.py``, ``listeners/bnodeside.py``: key = a tag of
#: the variant and the register's name), each charged to the writer of the value it holds.
LR = Ledger("lr.charge", "lr.usage")


class HeldTotals:
    """A :class:`~bftfs.kv.KV` view over ``kv`` in which the ledgers' per-owner totals are
    read once and written once (:meth:`flush`): every record a step stores updates its
    owner's total, and a Q/U update of 30 objects stores some 150 records for one owner,
    each a read and a write of the same row.  Everything else goes to ``kv`` as it is;
    a scan of a totals table sees the totals held so far (they are written first)."""

    def __init__(self, kv: KV, ledgers: tuple[Ledger, ...] = (RW, QU, LR)) -> None:
        self.kv = kv
        self._tables = frozenset(ledger.totals for ledger in ledgers)
        #: ``(table, key) -> value`` (None: deleted) of the totals read or changed.
        self._rows: dict[tuple[str, bytes], bytes | None] = {}
        self._dirty: set[tuple[str, bytes]] = set()

    def get(self, db: str, key: bytes) -> bytes | None:
        if db not in self._tables:
            return self.kv.get(db, key)
        row = (db, key)
        if row not in self._rows:
            raw = self.kv.get(db, key)
            self._rows[row] = bytes(raw) if raw is not None else None
        return self._rows[row]

    def put(self, db: str, key: bytes, value: bytes) -> None:
        if db not in self._tables:
            return self.kv.put(db, key, value)
        self._rows[(db, key)] = value
        self._dirty.add((db, key))
        return None

    def delete(self, db: str, key: bytes) -> bool:
        if db not in self._tables:
            return self.kv.delete(db, key)
        present = self.get(db, key) is not None
        self._rows[(db, key)] = None
        self._dirty.add((db, key))
        return present

    def flush(self) -> None:
        """Write the totals changed since the view was made (or last flushed)."""
        for db, key in sorted(self._dirty):
            value = self._rows[(db, key)]
            if value is None:
                self.kv.delete(db, key)
            else:
                self.kv.put(db, key, value)
        self._dirty.clear()

    def _through(self, db: str) -> KV:
        if db in self._tables:
            self.flush()
        return self.kv

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        return self._through(db).lower(db, key)

    def scan(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._through(db).scan(db, start, stop, reverse=reverse)

    def has(self, db: str, key: bytes) -> bool:
        return self.get(db, key) is not None if db in self._tables else self.kv.has(db, key)

    def lower_key(self, db: str, key: bytes) -> bytes | None:
        return self._through(db).lower_key(db, key)

    def scan_keys(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[bytes]:
        return self._through(db).scan_keys(db, start, stop, reverse=reverse)


def used(kv: KV, owner: int) -> int:
    """Everything ``owner`` is charged for on this node, block versions, Q/U records and
    registers together: what its quota is checked against."""
    return RW.usage_of(kv, owner) + QU.usage_of(kv, owner) + LR.usage_of(kv, owner)


def over(used: int, size: int, quota: int | None, *, empty: bool) -> bool:
    """Whether growing an owner that has ``used`` bytes by ``size`` takes it past ``quota``
    (None: no quota).  ``empty`` growth is never over: it gives space back (an empty block
    version over a removed file's block; a Q/U update whose states shrink)."""
    return quota is not None and not empty and used + size > quota
