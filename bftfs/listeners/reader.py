"""The Listeners read (figure 3.1, R1-R15 [003 L940-958]) as a state machine, pure.

The reader sends READ to a gateway set and then takes every VALUE a node sends, its first
answer and the writes it echoes while the read is open.  Per node it keeps ``largest[s]``,
the newest value that node reported (R5); on each node's first message (an *entrance*,
R6) it recomputes ``T``, the ``f + 1`` largest timestamps among ``largest[]`` (R8), and
keeps in ``answer[s, ts]`` only timestamps of ``T`` (R9-R12), so it holds at most
``f + 2`` values per node (Theorem 3 [003 L1213-1226]).  It decides once a quorum of
nodes vouch for the same ``(ts, D)`` (R13); the caller then sends READ COMPLETE (R14).

Why a faulty node cannot win: ``f`` faulty nodes can put at most ``f`` forged timestamps
into ``T``, so the largest timestamp a correct node reported stays in it, and the correct
nodes' echoes of that write eventually make a quorum (Lemma 6 [003 L1150-1180]); a value
is returned only when a quorum, hence a correct node and more than every older write's
holders, vouches for it (Lemmas 4 and 5).

:attr:`ReadOp.messages` and :attr:`ReadOp.echoes` count what arrived: a read without
concurrent writes decides on the first answers (one round trip), which the tier-1 tests
count.

Values are compared whole, ``(ts, D)`` with the writer inside ``ts``, as Byzantine
Listeners' S6 orders them [003 L1405-1407]: only a Byzantine client proposes two values
under one timestamp, and then every correct node ends up holding and echoing the larger, so
a reader that keeps per node and timestamp the larger value it was sent (R5, R12) gathers a
quorum for it.  The seed keeps the latest, and a reader sent ``(ts, D2)`` then ``(ts, D1)``
by one node and the reverse by another could wait for ever (tests/t1_blisteners_sim.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from bftfs.listeners.stamps import Sizes, Stamp, Stored


class ReadOp:
    """One ``read()`` over ``nodes``."""

    def __init__(self, sizes: Sizes, nodes: Iterable[int]):
        self.sizes = sizes
        self.nodes = frozenset(nodes)
        #: R5: the newest value each node reported.
        self.largest: dict[int, Stored] = {}
        #: R9-R12: ``answer[s, ts]``, only for timestamps of :attr:`top`.
        self.answer: dict[tuple[int, Stamp], Stored] = {}
        #: R8: ``T``.
        self.top: frozenset[Stamp] = frozenset()
        #: Messages received: the first answers and the echoes after them.
        self.messages = 0
        self.echoes = 0
        self.decided: Stored | None = None

    @property
    def entered(self) -> frozenset[int]:
        """``S``: the nodes that answered."""
        return frozenset(self.largest)

    def on_value(self, node: int, value: Stored) -> Stored | None:
        """R4-R13: a VALUE from ``node``; the value read once decided (then, and after)."""
        if node not in self.nodes or self.decided is not None:
            return self.decided
        self.messages += 1
        entrance = node not in self.largest
        if not entrance:
            self.echoes += 1
        if entrance or value > self.largest[node]:  # R5, whole values (below)
            self.largest[node] = value
        if entrance:  # R6-R11
            stamps = sorted({v.stamp for v in self.largest.values()}, reverse=True)
            self.top = frozenset(stamps[: self.sizes.f + 1])
            self.answer = {k: v for k, v in self.answer.items() if k[1] in self.top}
            for s, v in self.largest.items():
                if v.stamp in self.top:
                    self.answer[(s, v.stamp)] = v
        if value.stamp in self.top:  # R12, keeping the larger of two values under one stamp
            held = self.answer.get((node, value.stamp))
            self.answer[(node, value.stamp)] = value if held is None else max(held, value)
        votes = Counter(self.answer.values())  # R13: a quorum of identical (ts, D)
        best, count = max(votes.items(), key=lambda kv: (kv[1], kv[0].stamp), default=(None, 0))
        if best is not None and count >= self.sizes.quorum:
            self.decided = best
        return self.decided

    @property
    def held(self) -> int:
        """Values held now (``largest[]`` and ``answer[]``): at most ``n (f + 2)``."""
        return len(self.largest) + len(self.answer)
