"""A node's side of Listeners, pure: one value per register and the open reads.

The rules [003 L1048-1074]: a node "only store[s] a single timestamped data version,
replacing it whenever [it] receive[s] a STORE message with a newer timestamp"; a READ is
answered with the node's timestamp and data; and then the *Listeners communication
pattern*: the node keeps the reader as a listener and echoes every later STORE whose
timestamp is newer than its own at the start of that read ("including messages with a
timestamp that is not as recent as the data's current one") until the reader's READ
COMPLETE.

Who sent a STORE is the transport's to say (every frame of a session carries a MAC, so the
sender is authenticated; the seed's "channels are authenticated, so nodes can determine
the sender"): a node takes a STORE only with a timestamp of its sender's own set, so no
client writes under another's name.  Listeners tolerates Byzantine nodes, not Byzantine
clients (a client storing different values at different nodes blocks readers: the
"poisonous write" of [003 L1252-1258]; the Byzantine Listeners variant of section 3.5
is not built), so writers neither sign nor MAC their values beyond the session.

The guards of section 3.6.1 [003 L2011-2059] against a reader that never completes: a node
keeps at most :attr:`ListenerTable.per_reader` open reads per reader, echoes at most
:attr:`ListenerTable.max_echoes` writes per read and drops a read open longer than
:attr:`ListenerTable.lifetime` seconds; a correct reader whose read was dropped starts it
again after its own time-out (the seed's remedy; liveness then needs a timely interval).

The store is a parameter (:class:`Registers`): a dict in the tier-1 simulation, the
node's LMDB transaction in a node process (:mod:`bftfs.listeners.nodeside`).  Accepting a
STORE (:func:`accept`) is separate from echoing it (:meth:`ListenerTable.echoes`) so that
a node echoes a write only once its store holds it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from bftfs.listeners.stamps import INITIAL_VALUE, Stamp, Stored


class Refused(Exception):
    """A request the rules refuse; the message says why."""


class Registers(Protocol):
    """Where a node keeps its registers."""

    def get(self, key: bytes) -> Stored | None: ...

    def put(self, key: bytes, value: Stored) -> None: ...


def current(regs: Registers, key: bytes) -> Stored:
    """The node's value of ``key``: the initial value until a STORE arrived."""
    got = regs.get(key)
    return INITIAL_VALUE if got is None else got


def query_ts(regs: Registers, key: bytes) -> Stamp:
    """QUERY TS (W2-W4): the node's timestamp of ``key``."""
    return current(regs, key).stamp


def accept(regs: Registers, sender: int, key: bytes, value: Stored) -> bool:
    """STORE (W10): keep ``value`` if it is newer than what the node holds; whether it was.

    Raises:
        Refused: the timestamp is not of ``sender``'s own set.
    """
    if value.stamp.writer != sender:
        raise Refused(f"stamp of writer {value.stamp.writer} sent by {sender}")
    if value.stamp <= current(regs, key).stamp:
        return False
    regs.put(key, value)
    return True


@dataclass(frozen=True)
class Echo:
    """A write forwarded to a listening reader: push ``value`` to ``reader`` for its read
    ``read_id``."""

    reader: int
    read_id: int
    value: Stored


@dataclass
class _Open:
    key: bytes
    #: The node's value when the read began: later STOREs newer than it are echoed (whole
    #: values compared, so that two values under one timestamp, which only a Byzantine
    #: client proposes, are ordered as Byzantine Listeners' S6 orders them).
    baseline: Stored
    opened: float
    echoed: int = 0


class ListenerTable:
    """The open reads of one node (not stored: a restarted node has none, and its readers'
    time-outs start their reads again)."""

    def __init__(
        self, *, per_reader: int = 64, max_echoes: int = 1024, lifetime: float = 60.0
    ) -> None:
        self.per_reader = per_reader
        self.max_echoes = max_echoes
        self.lifetime = lifetime
        #: ``(reader, read_id)`` -> the read, oldest first.
        self._open: OrderedDict[tuple[int, int], _Open] = OrderedDict()
        self._by_key: dict[bytes, set[tuple[int, int]]] = {}
        self._per_reader: dict[int, int] = {}
        #: Reads dropped by a guard (cap, echo limit, lifetime).
        self.dropped = 0
        #: Echoes produced.
        self.echoed = 0

    def __len__(self) -> int:
        return len(self._open)

    def open(self, reader: int, read_id: int, key: bytes, value: Stored, now: float) -> Stored:
        """READ (R2): register ``reader`` as a listener of ``key`` and answer ``value`` (the
        node's current value, read by the caller).  A resent READ keeps the read's first
        baseline; a reader past its cap loses its oldest open read."""
        ident = (reader, read_id)
        if ident in self._open:
            return value
        if self._per_reader.get(reader, 0) >= self.per_reader:
            oldest = next(i for i in self._open if i[0] == reader)
            self._drop(oldest)
            self.dropped += 1
        self._open[ident] = _Open(key, value, now)
        self._by_key.setdefault(key, set()).add(ident)
        self._per_reader[reader] = self._per_reader.get(reader, 0) + 1
        return value

    def complete(self, reader: int, read_id: int) -> bool:
        """READ COMPLETE (R14): stop echoing to this read; whether it was open."""
        ident = (reader, read_id)
        if ident not in self._open:
            return False
        self._drop(ident)
        return True

    def echoes(self, key: bytes, value: Stored) -> list[Echo]:
        """The Listeners pattern: the open reads of ``key`` that began below ``value``'s
        timestamp get ``value`` [003 L1063-1070], whether or not it replaced the node's
        value; a read past its echo limit is dropped instead."""
        out = []
        for ident in sorted(self._by_key.get(key, ())):
            read = self._open[ident]
            if value <= read.baseline:
                continue
            if read.echoed >= self.max_echoes:
                self._drop(ident)
                self.dropped += 1
                continue
            read.echoed += 1
            out.append(Echo(ident[0], ident[1], value))
        self.echoed += len(out)
        return out

    def expire(self, now: float) -> int:
        """Drop the reads open longer than :attr:`lifetime`; how many."""
        old = [i for i, r in self._open.items() if now - r.opened > self.lifetime]
        for ident in old:
            self._drop(ident)
        self.dropped += len(old)
        return len(old)

    def _drop(self, ident: tuple[int, int]) -> None:
        read = self._open.pop(ident)
        keyed = self._by_key[read.key]
        keyed.discard(ident)
        if not keyed:
            del self._by_key[read.key]
        self._per_reader[ident[0]] -= 1
        if not self._per_reader[ident[0]]:
            del self._per_reader[ident[0]]
