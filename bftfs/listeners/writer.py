"""The Listeners write (figure 3.1, W1-W14 [003 L923-939]) as a state machine, pure.

Two phases, each sent to a gateway set ``A`` (every node when ``n = 3f + 1``) and
finished by a quorum's answers: QUERY TS, after which the writer picks ``my_ts``, the
smallest timestamp of its own set above every answer and its previous one (W7-W9); then
STORE, done when a quorum acknowledged ``my_ts`` (W11-W14).  The caller sends what
:meth:`WriteOp.on_ts` says to send and feeds it the answers; duplicates and answers of
nodes outside the targets count once.
"""

from __future__ import annotations

from collections.abc import Iterable

from bftfs.listeners.stamps import CAP, Sizes, Stamp, Stored, next_stamp


class WriteOp:
    """One ``write(D)`` by writer ``writer`` whose previous timestamp was ``last``."""

    def __init__(self, sizes: Sizes, nodes: Iterable[int], writer: int, last: Stamp, data: bytes):
        self.sizes = sizes
        self.nodes = frozenset(nodes)
        self.writer = writer
        self.last = last
        self.data = data
        #: W5: ``current[s]``, the timestamp answer of each node.
        self.current: dict[int, Stamp] = {}
        #: W13: the nodes that acknowledged the STORE.
        self.acked: set[int] = set()
        #: The value being stored, once the timestamps are in.
        self.value: Stored | None = None

    def on_ts(self, node: int, stamp: Stamp) -> Stored | None:
        """W4-W9: a node's timestamp answer; the value to STORE once a quorum answered
        (then, and only then).  An answer at :data:`~bftfs.listeners.stamps.CAP` or past
        it is a faulty node's and is ignored (:mod:`~bftfs.listeners.stamps`)."""
        if self.value is not None or node not in self.nodes or stamp.counter >= CAP - 1:
            return None
        self.current[node] = stamp
        if len(self.current) < self.sizes.quorum:  # W6
            return None
        my_ts = next_stamp(max(self.current.values()), self.last, self.writer)  # W7-W8
        self.value = Stored(my_ts, self.data)
        return self.value

    def on_ack(self, node: int, stamp: Stamp) -> bool:
        """W12-W14: a node acknowledged ``stamp``; whether the write is complete."""
        if self.value is not None and node in self.nodes and stamp == self.value.stamp:
            self.acked.add(node)
        return self.done

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.sizes.quorum
