"""A linearizability checker for read/write registers (Wing & Gong style search).

PASIS promises linearizable read/write blocks (seed L792-794).  A history is a set of
operations with real-time intervals ``[start, end]``; it is linearizable when the operations
can be put in one order that (a) respects real time - if ``a`` ended before ``b`` started,
``a`` comes first - and (b) is legal for a register: every read returns the value of the
latest write before it, or the initial value.

The search (Wing & Gong 1993, with the memoisation of Lowe 2017): repeatedly pick, among
the operations not yet placed, one that no other unplaced operation must precede (its
start is not after the earliest end among the unplaced operations), apply it to the register,
and backtrack on an illegal read.  States ``(unplaced set, register value)`` already explored
are not explored again, which keeps histories of a few dozen overlapping operations cheap.

Operations that never finished (``end is None``: a writer that crashed, a read cut short):
a pending write may take effect at any point after its start or never (so it is either
placed like the others or dropped at the end); a pending read constrains nothing and is
ignored.

Linearizability is local (Herlihy & Wing): a history over many registers is linearizable
iff its restriction to each register is, so :func:`check` checks register by register.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

READ = "read"
WRITE = "write"


@dataclass(frozen=True)
class Op:
    """One operation on register ``key`` that ran from ``start`` to ``end``."""

    key: Hashable
    kind: str
    #: The value written, or the value the read returned.
    value: Any
    start: float
    #: None: the operation never returned.
    end: float | None
    client: Hashable = None

    def __post_init__(self) -> None:
        if self.kind not in (READ, WRITE):
            raise ValueError(f"kind must be {READ!r} or {WRITE!r}")
        if self.end is not None and self.end < self.start:
            raise ValueError("an operation cannot end before it starts")


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`check`; ``key`` names the first register that failed."""

    ok: bool
    key: Hashable = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def check_register(ops: Iterable[Op], initial: Any = None, *, max_states: int = 2_000_000) -> bool:
    """Whether the operations on one register are linearizable.

    The history is cut where no operation is in flight (every operation before the cut
    ended before any after it started): the segments are searched one after another, each
    from every value the one before can end with.  A long run of a few clients is many
    short segments, so neither the search's states nor its depth grow with its length.

    Raises:
        RuntimeError: a segment's search explored more than ``max_states`` states.
    """
    values: set[Any] = {initial}
    for segment in _segments([op for op in ops if op.kind == WRITE or op.end is not None]):
        values = _final_values(segment, values, max_states)
        if not values:
            return False
    return True


def _segments(ops: list[Op]) -> Iterator[list[Op]]:
    """``ops`` in runs, cut where every operation so far ended before the next started."""
    ops = sorted(ops, key=lambda op: op.start)
    run: list[Op] = []
    latest_end = -math.inf
    for op in ops:
        if run and op.start > latest_end:
            yield run
            run = []
        run.append(op)
        latest_end = max(latest_end, math.inf if op.end is None else op.end)
    if run:
        yield run


def _final_values(todo: list[Op], initials: set[Any], max_states: int) -> set[Any]:
    """Every value the register can hold after a legal order of ``todo`` starting from one
    of ``initials``; empty if there is none."""
    ends = [math.inf if op.end is None else op.end for op in todo]
    must = 0  # operations that must be placed: everything except pending writes
    for i, op in enumerate(todo):
        if op.end is not None:
            must |= 1 << i
    seen: set[tuple[int, Any]] = set()
    finals: set[Any] = set()

    def search(placed: int, value: Any) -> None:
        state = (placed, value)
        if state in seen:
            return
        if len(seen) >= max_states:
            raise RuntimeError(f"linearizability search exceeded {max_states} states")
        seen.add(state)
        if placed & must == must:
            finals.add(value)  # (pending writes left may still be placed after it)
        remaining = [i for i in range(len(todo)) if not placed >> i & 1]
        if not remaining:
            return
        horizon = min(ends[i] for i in remaining)
        for i in remaining:
            op = todo[i]
            if op.start > horizon:
                continue  # some unplaced operation ended before this one started
            if op.kind == WRITE:
                search(placed | 1 << i, op.value)
            elif op.value == value:
                search(placed | 1 << i, value)

    for value in initials:
        search(0, value)
    return finals


def check(ops: Iterable[Op], initial: Any = None) -> Verdict:
    """Check a history over any number of registers (each starts at ``initial``)."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key, key_ops in by_key.items():
        if not check_register(key_ops, initial):
            return Verdict(False, key, f"register {key!r}: no legal linearization")
    return Verdict(True)


@dataclass
class Recorder:
    """Collects a history while a test runs: ``with rec.write(key, value): ...``.

    ``clock`` must be monotonic and shared by all recorded tasks (``trio.current_time`` in
    a trio test).  A body that raises leaves its operation pending (``end`` None), which is
    the right model for a write that may or may not have taken effect.
    """

    clock: Callable[[], float]
    ops: list[Op] = field(default_factory=list)

    @contextmanager
    def write(self, key: Hashable, value: Any, client: Hashable = None) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        except BaseException:
            self.ops.append(Op(key, WRITE, value, start, None, client))
            raise
        self.ops.append(Op(key, WRITE, value, start, self.clock(), client))

    @contextmanager
    def read(self, key: Hashable, client: Hashable = None) -> Iterator[list[Any]]:
        """Yields a one-element list the body fills with the value read."""
        start = self.clock()
        box: list[Any] = []
        yield box
        if box:
            self.ops.append(Op(key, READ, box[0], start, self.clock(), client))
