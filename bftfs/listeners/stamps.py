"""Timestamps, stored values and quorum sizes of the Listeners register.

A timestamp is ``(counter, writer)``, ordered as a pair: the timestamps of writer ``c``
are ``Cts = {(k, c)}``, disjoint between writers as figure 3.1 needs ("The sets used by
different clients are disjoint", table 3.3 [003 L975-990]), so the write order is a total
order (Lemma 5 [003 L1112-1116]).  The conceptual initial write [003 L1073-1074] is
:data:`INITIAL`: a node that never stored a register reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

#: Counters at or past this are forged: a correct writer adds one to the largest counter a
#: quorum reported, so counters count writes and never come near it.  A writer ignores a
#: timestamp answer past it (it can only come from a faulty node), a node refuses to
#: store one: a Byzantine node cannot push writers off the wire's 64-bit integers.
CAP = 1 << 62


class Stamp(NamedTuple):
    """A write's timestamp: ``counter`` first, then the writer's principal id."""

    counter: int
    writer: int

    def wire(self) -> list[int]:
        return [self.counter, self.writer]

    @classmethod
    def from_wire(cls, raw: object) -> Stamp:
        """Raises ValueError: not two non-negative integers below :data:`CAP`."""
        if not isinstance(raw, (list, tuple)) or len(raw) != 2:
            raise ValueError("a stamp is [counter, writer]")
        counter, writer = raw
        for x in (counter, writer):
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < CAP:
                raise ValueError(f"stamp field out of range: {x!r}")
        return cls(counter, writer)


#: The timestamp of the conceptual initial write.
INITIAL = Stamp(0, 0)


class Stored(NamedTuple):
    """A timestamped value: what a node holds for a register and what it reports."""

    stamp: Stamp
    data: bytes


#: The value every register starts with.
INITIAL_VALUE = Stored(INITIAL, b"")


def next_stamp(largest: Stamp, last: Stamp, writer: int) -> Stamp:
    """W8: the smallest timestamp of ``writer``'s set above both ``largest`` (the largest a
    quorum reported) and ``last`` (the writer's previous one) [003 L931-933]."""
    top = max(largest, last)
    return Stamp(top.counter if top.writer < writer else top.counter + 1, writer)


@dataclass(frozen=True)
class Sizes:
    """The threshold instantiation of the quorum systems [003 L887-894]: ``Q`` is every
    set of ``quorum`` nodes, ``A`` (where messages are sent) every set of ``gateway``
    nodes; with ``n = 3f + 1`` a quorum is ``2f + 1`` and a gateway set is every node
    [003 L680-684]."""

    n: int
    f: int

    def __post_init__(self) -> None:
        if self.f < 0 or self.n < 3 * self.f + 1:
            raise ValueError(f"Listeners needs n >= 3f + 1 (Theorem 1): n={self.n}, f={self.f}")

    @classmethod
    def of(cls, n: int) -> Sizes:
        """The largest ``f`` ``n`` nodes tolerate."""
        return cls(n, (n - 1) // 3)

    @property
    def quorum(self) -> int:
        """``q = ceil((n + f + 1) / 2)``."""
        return math.ceil((self.n + self.f + 1) / 2)

    @property
    def gateway(self) -> int:
        """``|A| = ceil((n + f + q) / 2)``."""
        return math.ceil((self.n + self.f + self.quorum) / 2)
