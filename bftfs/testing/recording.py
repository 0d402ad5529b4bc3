"""Protocol histories recorded under a file system, and their linearizability checks.

The campaign (:mod:`bftfs.testing.campaign`) runs the real :class:`~bftfs.fs.FileSystem`
over protocol clients wrapped by :class:`RecordingQU` and :class:`RecordingRW`: every Q/U
operation and every PASIS block read and write the file system makes is recorded with its
real-time interval (trio's clock), and checked afterwards with the register checker of
:mod:`bftfs.testing.linearizability`.

**PASIS blocks** are registers: a write of a block is a register write of its bytes, a
read returns the bytes read.  The interval recorded is the whole ``write_blocks`` /
``read_blocks`` call, which contains each block's own operation; a wider interval only
allows more orders, so this never reports a violation that is not one.

**Q/U objects**: an object's versions are ordered by their logical timestamps, and the
protocol promises that order is a linearization.  So each object is checked as a register
of versions: a completed update writes its timestamp (one timestamp for all objects of a
multi-object update), a completed query reads the version it was answered at (the
``Outcome.at`` of the Q/U core).  A query answered at a copy (a repair that re-establishes
an older state under a new timestamp) reads the state of the newest recorded update at or
below that timestamp, so its version maps to that update's.  Refused updates change
nothing and are left out; an object with an update that never returned (whose timestamp is
unknown) is not checked (the campaign's liveness check makes that a finding anyway).  This
checks each object's projection of a multi-object history: necessary for strict
serializability, not sufficient (the Q/U suites check whole histories,
``t5_qu_cluster.py``).
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import Timestamp
from bftfs.testing.linearizability import READ, WRITE, Op, Verdict, check

#: The value of a register no recorded operation wrote (an object's or block's first state).
INITIAL = b"initial"


def _objects(objects: int | Iterable[int]) -> tuple[int, ...]:
    """The Q/U client's own normal form of an object list (sorted, distinct)."""
    return tuple(sorted({objects} if isinstance(objects, int) else set(objects)))


@dataclass
class QUOp:
    """One Q/U operation as the file system's client saw it."""

    objects: tuple[int, ...]
    method: str
    query: bool
    start: float
    end: float | None = None
    refused: bool = False
    #: Update: its timestamp; query: the version of each object it was answered at.
    stamps: tuple[Timestamp, ...] = ()


class RecordingQU:
    """A Q/U client that records every operation (delegates everything else)."""

    def __init__(self, inner: Any, clock: Callable[[], float], ops: list[QUOp]) -> None:
        self.inner = inner
        self._clock = clock
        self.ops = ops

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _run(self, objects: int | Iterable[int], method: str, arg: Any, query: bool) -> Any:
        objs = _objects(objects)
        op = QUOp(objs, method, query, self._clock())
        self.ops.append(op)
        try:
            # The driver's outcome carries the timestamps the public calls drop.
            out = await self.inner._invoke(objs, method, arg, query)
        except MethodRefused:
            op.refused, op.end = True, self._clock()
            raise
        op.end = self._clock()
        if query:
            op.stamps = tuple(out.at or ())
        elif out.lt is not None:
            op.stamps = (out.lt,)
        return out

    async def query(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        return (await self._run(objects, method, arg, True)).answer

    async def query_at(self, oid: int, method: str, arg: Any = None) -> tuple[Any, Timestamp]:
        out = await self._run(oid, method, arg, True)
        assert out.at is not None and len(out.at) == 1
        return out.answer, out.at[0]

    async def update(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        return (await self._run(objects, method, arg, False)).answer


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass
class RWLog:
    """PASIS block operations, as register operations (values are digests of the bytes)."""

    ops: list[Op] = field(default_factory=list)


class RecordingRW:
    """A PASIS client that records every block read and write (delegates the rest)."""

    def __init__(self, inner: Any, clock: Callable[[], float], log: RWLog, client: int) -> None:
        self.inner = inner
        self._clock = clock
        self.log = log
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write_blocks(self, blocks: Mapping[int, bytes], **options: Any) -> Any:
        start = self._clock()
        try:
            out = await self.inner.write_blocks(blocks, **options)
        except BaseException:
            for block, data in blocks.items():
                self.log.ops.append(Op(block, WRITE, _digest(data), start, None, self.client))
            raise
        end = self._clock()
        for block, data in blocks.items():
            self.log.ops.append(Op(block, WRITE, _digest(data), start, end, self.client))
        return out

    async def read_blocks(self, blocks: Iterable[int], **options: Any) -> dict[int, bytes]:
        start = self._clock()
        out: dict[int, bytes] = await self.inner.read_blocks(blocks, **options)
        end = self._clock()
        for block, data in out.items():
            self.log.ops.append(Op(block, READ, _digest(data), start, end, self.client))
        return out


@dataclass(frozen=True)
class Checked:
    """What a history check covered, and its verdict."""

    verdict: Verdict
    operations: int
    registers: int
    unchecked: int = 0


def _deep(fn: Callable[[], Verdict], depth: int) -> Verdict:
    """The register checker recurses once per operation of a register: a directory's
    history in a long run is thousands deep."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, depth + 1000))
    try:
        return fn()
    finally:
        sys.setrecursionlimit(old)


def check_blocks(log: RWLog) -> Checked:
    """PASIS: every block's history linearizable (a never-written block reads empty)."""
    ops = log.ops
    # A block nobody wrote reads as empty bytes (the initial value of every register).
    verdict = _deep(lambda: check(ops, initial=_digest(b"")), len(ops))
    return Checked(verdict, len(ops), len({op.key for op in ops}))


def check_objects(ops: list[QUOp]) -> Checked:
    """Q/U: every object's versions linearizable (see the module docstring)."""
    by_object: dict[int, list[tuple[QUOp, Timestamp | None]]] = defaultdict(list)
    for op in ops:
        if op.refused:
            continue
        if op.query and op.end is not None and len(op.stamps) != len(op.objects):
            continue  # no answer point recorded: nothing to check it against
        for i, oid in enumerate(op.objects):
            stamp = None
            if op.stamps:
                stamp = op.stamps[0] if not op.query else op.stamps[i]
            by_object[oid].append((op, stamp))
    out: list[Op] = []
    unchecked = 0
    for oid, entries in by_object.items():
        if any(not op.query and op.end is None for op, _ in entries):
            unchecked += 1
            continue
        # Encodings order as the timestamps do (fixed width, big-endian).
        written = sorted(s.encode() for op, s in entries if not op.query and s is not None)
        for op, stamp in entries:
            if op.end is None or stamp is None:
                continue
            if not op.query:
                out.append(Op(oid, WRITE, stamp.encode(), op.start, op.end))
                continue
            at = bisect.bisect_right(written, stamp.encode())
            value = written[at - 1] if at else INITIAL
            out.append(Op(oid, READ, value, op.start, op.end))
    verdict = _deep(lambda: check(out, initial=INITIAL), len(out))
    return Checked(verdict, len(out), len(by_object) - unchecked, unchecked)
