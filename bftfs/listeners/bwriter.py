"""The Byzantine Listeners write (figure 3.2, W1-W18 [003 L1338-1372]) as a state machine, pure.

Three phases, each sent to every node and finished by a quorum's answers:

1. QUERY TS with ``hash(D)`` and ``last_ts`` (W2): each node answers its timestamp and a MAC
   vector over it (T3).  With a quorum of answers ``M`` (W7) the writer picks ``my_ts``,
   the smallest of its own timestamps above every answer and its previous one (W8-W10).
2. PROPOSE TS with ``my_ts`` and ``M`` (W11): each correct node redoes the choice from
   ``M`` (C1-C5) and answers a MAC vector ``K_s`` over ``(my_ts, hash(D), c)`` (P6).  A
   quorum of them is ``K`` (W13).
3. STORE ``(my_ts, D, c, K)`` with an empty ``J`` and ``ttl = MAXQ`` (W14); nodes forward
   it among themselves and ACK to the writer once a quorum vouches for it (S3); the write
   is done with a quorum of ACKs (W15-W18).

The writer cannot check the nodes' MACs (they are keyed between nodes), so it takes them as
they come; a faulty node's bad MAC only costs that node's vote at the nodes that check it.
Timestamp answers at the cap are a faulty node's and are ignored, as in the plain writer.
"""

from __future__ import annotations

from collections.abc import Iterable

from bftfs.listeners.auth import Vector, data_hash
from bftfs.listeners.bserver import Write
from bftfs.listeners.stamps import CAP, Sizes, Stamp, Stored, next_stamp


class BWriteOp:
    """One ``write(D)`` of register ``key`` by client ``writer``, previous timestamp ``last``."""

    def __init__(
        self, sizes: Sizes, nodes: Iterable[int], writer: int, last: Stamp, key: bytes, data: bytes
    ) -> None:
        self.sizes = sizes
        self.nodes = frozenset(nodes)
        self.writer = writer
        self.last = last
        self.key = key
        self.data = data
        self.hd = data_hash(data)
        #: W5: ``current[s] = (ts, m_s)``.
        self.answers: dict[int, tuple[Stamp, Vector]] = {}
        #: W10: ``my_ts``, once a quorum answered.
        self.my_ts: Stamp | None = None
        #: W13: the TS OK vectors.
        self.oks: dict[int, Vector] = {}
        #: W14: what is stored, once ``K`` is in.
        self.write: Write | None = None
        #: W17: the nodes that acknowledged.
        self.acked: set[int] = set()

    def on_ts(self, node: int, stamp: Stamp, vec: Vector) -> Stamp | None:
        """W4-W10: a timestamp answer; ``my_ts`` to propose once a quorum answered (then,
        and only then)."""
        if self.my_ts is not None or node not in self.nodes or stamp.counter >= CAP - 1:
            return None
        self.answers[node] = (stamp, vec)
        if len(self.answers) < self.sizes.quorum:  # W6
            return None
        top = max(s for s, _ in self.answers.values())  # W8
        self.my_ts = next_stamp(top, self.last, self.writer)  # W9
        return self.my_ts

    @property
    def m(self) -> dict[int, tuple[Stamp, Vector]]:
        """W7: ``M``, the answers the proposal carries."""
        return dict(self.answers)

    def on_ok(self, node: int, stamp: Stamp, vec: Vector) -> Write | None:
        """W12-W14: a TS OK; the write to STORE once a quorum answered (then only)."""
        if self.write is not None or self.my_ts is None or node not in self.nodes:
            return None
        if stamp != self.my_ts:
            return None
        self.oks[node] = vec
        if len(self.oks) < self.sizes.quorum:
            return None
        self.write = Write.make(self.key, Stored(self.my_ts, self.data), self.oks)
        return self.write

    def on_ack(self, node: int, stamp: Stamp) -> bool:
        """W16-W18: a node acknowledged ``stamp``; whether the write is complete."""
        if self.write is not None and node in self.nodes and stamp == self.write.value.stamp:
            self.acked.add(node)
        return self.done

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.sizes.quorum
