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

    Raises:
        RuntimeError: the search explored more than ``max_states`` states (history too big).
    """
    todo = [op for op in ops if op.kind == WRITE or op.end is not None]
    ends = [math.inf if op.end is None else op.end for op in todo]
    must = 0  # operations that must be placed: everything except pending writes
    for i, op in enumerate(todo):
        if op.end is not None:
            must |= 1 << i
    seen: set[tuple[int, Any]] = set()

    def search(placed: int, value: Any) -> bool:
        if placed & must == must:
            return True
        state = (placed, value)
        if state in seen:
            return False
        if len(seen) >= max_states:
            raise RuntimeError(f"linearizability search exceeded {max_states} states")
        seen.add(state)
        remaining = [i for i in range(len(todo)) if not placed >> i & 1]
        horizon = min(ends[i] for i in remaining)
        for i in remaining:
            op = todo[i]
            if op.start > horizon:
                continue  # some unplaced operation ended before this one started
            if op.kind == WRITE:
                if search(placed | 1 << i, op.value):
                    return True
            elif op.value == value and search(placed | 1 << i, value):
                return True
        return False

    return search(0, initial)


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
