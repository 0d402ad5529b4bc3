"""A node's side of Byzantine Listeners (figures 3.3 and 3.4 [003 L1400-1469]), pure.

Byzantine Listeners tolerates Byzantine clients on ``3f + 1`` nodes without signatures
(section 3.5 [003 L1238-1300]).  A write carries the authenticator ``(K, J)``: ``K`` holds
the TS OK MAC vectors of a quorum, which shows that the client proposed ``(ts, hash(D))``
and a quorum found the timestamp consistent (P1-P6); ``J`` collects the MAC vectors of the
nodes that vouch for the write as they forward it (S9-S18).  A node stores a write only
when a quorum vouches for it (Q1-Q3: each member's entry in ``K`` or ``J`` checks), and
forwards it when it can tell that a client wrote it (V1-V5), so a write completes even if
its client stops halfway (Lemma 15 [003 L1738-1780]) and every write one correct node stores
is stored by all (Lemma 16 [003 L1782-1812]), while a node alone cannot make one up
(Lemma 12 [003 L1640-1662]).

Where the seed's text is ambiguous, what bftfs does (each read against the proofs):

- S8 (``ttl := MAXQ``) belongs to S6-S7: a node restarts a write's time-to-live once, when
  it stores it.  Restarting it on every vouched copy would have correct nodes forward a
  stored write to each other for ever.
- S14 reads ``sent := sendNow``: a node forwards a write it has not seen at once (S18), and
  what later copies add to ``J`` goes out at the next :meth:`BNode.dequeue` (D1-D5). That is
  Lemma 21's common case.  Read literally (``not sendNow``), the merged ``J`` would never
  go out, and Lemma 16's chain of MACs would stop.  A node also remembers what it last
  forwarded (at most ``maxm`` writes) and sends nothing when a copy adds nothing.  Links are
  reliable, so an identical resend informs no one.
- S15-S16 (merge ``J``): the entry ``J[i]`` that node ``i`` sends itself replaces any entry
  for ``i`` a third node passed on.  Channels are authenticated, and otherwise a Byzantine
  relay that is first with a garbage ``J[i]`` would block ``i``'s real entry.  The node's own
  entry is always its own.
- A node counts its own ``J`` entry (S13) before it asks Q2, as if it had forwarded the
  message to itself, which Lemma 21 says it does ("to all nodes (including themselves)").
- S6 orders values by ``(ts, c, D)``.  A :class:`~bftfs.listeners.stamps.Stored` compares as
  ``(stamp, data)`` with ``c`` inside the stamp, so two values a Byzantine client proposed
  under one timestamp are ordered, and every correct node keeps the larger one.
- S4-S5 echo a newly vouched write to each listener whose read began below it (the
  :class:`~bftfs.listeners.server.ListenerTable`, with values compared as in S6), once per
  write per node.

MACs are over the register's name as well (:mod:`~bftfs.listeners.auth`).  An administrator
revokes a client with :meth:`BNode.revoke`: correct nodes then refuse its QUERY TS and
PROPOSE TS (T2, P2), so it can start no write (Lemma 20 [003 L1880-1898]).  The writes it
proposed before are still completed by forwarding.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from bftfs.listeners.auth import Macs, Vector, data_hash, encode
from bftfs.listeners.server import Echo, ListenerTable, Refused, Registers, current
from bftfs.listeners.stamps import CAP, Sizes, Stamp, Stored, next_stamp


@dataclass(frozen=True)
class Write:
    """``msg = (ts, D, c, K)`` of S10, with the register's name: what is stored and forwarded.

    ``k`` is ``K`` as ``(node, vector)`` pairs sorted by node, so a write is hashable and
    every node encodes it the same way.
    """

    key: bytes
    value: Stored
    k: tuple[tuple[int, Vector], ...]

    @classmethod
    def make(cls, key: bytes, value: Stored, k: Mapping[int, Vector]) -> Write:
        return cls(key, value, tuple(sorted(k.items())))

    @property
    def writer(self) -> int:
        """``c``: the client whose timestamp set ``ts`` is of."""
        return self.value.stamp.writer

    @cached_property
    def hd(self) -> bytes:
        return data_hash(self.value.data)

    @cached_property
    def k_map(self) -> dict[int, Vector]:
        return dict(self.k)

    def k_fields(self) -> tuple[object, ...]:
        """What a TS OK's vector tags: ``(ts, hash(D), c)`` (P6)."""
        return ("k", self.key, self.value.stamp.wire(), self.hd, self.writer)

    def j_fields(self) -> tuple[object, ...]:
        """What a ``J`` entry tags: ``(ts, hash(D), c, K)`` (S13)."""
        k = [[i, list(v)] for i, v in self.k]
        return ("j", self.key, self.value.stamp.wire(), self.hd, self.writer, encode(k))


def m_fields(key: bytes, ts: Stamp, hd: bytes, last: Stamp, c: int) -> tuple[object, ...]:
    """What a timestamp answer's vector tags: ``(ts_i, hash(D), last_ts, c)`` (T3)."""
    return ("m", key, ts.wire(), hd, last.wire(), c)


@dataclass(frozen=True)
class Forward:
    """A STORE a node sends to every other node (S18, D4): ``ttl`` is already decremented."""

    write: Write
    j: dict[int, Vector]
    ttl: int


@dataclass
class StoreResult:
    """What a STORE made the node do."""

    #: S3: send ACK ``ts`` to the write's client.
    ack: bool = False
    #: S6-S7: the node's value of the register is now this write.
    stored: bool = False
    #: S4-S5: the VALUEs to push to listening readers.
    echoes: list[Echo] = field(default_factory=list)
    #: S17-S18: the STORE to send to every other node now.
    forward: Forward | None = None


@dataclass
class _Known:
    """A write the node vouches for: the merged ``J``, the TTL, what went out (sendQ)."""

    j: dict[int, Vector]
    ttl: int
    vouched: bool = False
    sent_j: frozenset[int] = frozenset()
    sent_ttl: int = -1

    @property
    def dirty(self) -> bool:
        return bool(set(self.j) - self.sent_j) or self.ttl > self.sent_ttl


class BNode:
    """One node's Byzantine Listeners state and rules.  Every method is a handler, called
    with the authenticated sender."""

    def __init__(
        self,
        macs: Macs,
        sizes: Sizes,
        regs: Registers,
        *,
        table: ListenerTable | None = None,
        maxq: int | None = None,
        maxm: int = 256,
    ) -> None:
        self.macs = macs
        self.me = macs.me
        self.nodes = macs.nodes
        self.sizes = sizes
        self.regs = regs
        self.table = table if table is not None else ListenerTable()
        #: MAXQ: the size of the largest quorum (table 3.4).
        self.maxq = maxq if maxq is not None else sizes.quorum
        #: MAXM: how many writes ``sendQ`` remembers (table 3.4).
        self.maxm = maxm
        self._known: OrderedDict[Write, _Known] = OrderedDict()
        self.revoked: set[int] = set()

    # -- authorization (Lemma 20) ----------------------------------------------
    def revoke(self, client: int) -> None:
        """The administrator removes ``client``: no more QUERY TS or PROPOSE TS of it."""
        self.revoked.add(client)

    def _authorize(self, client: int) -> None:
        if client in self.revoked or client in self.nodes:  # T2, P2; nodes never write
            raise Refused(f"client {client} is not authorized")

    # -- the write's first two phases --------------------------------------------
    def query_ts(self, client: int, key: bytes, hd: bytes, last: Stamp) -> tuple[Stamp, Vector]:
        """T1-T3: the node's timestamp and ``mac_s(ts0, hash(D), last_ts, c)``."""
        self._authorize(client)
        ts0 = current(self.regs, key).stamp
        return ts0, self.macs.vector(*m_fields(key, ts0, hd, last, client))

    def propose_ts(
        self,
        client: int,
        key: bytes,
        ts: Stamp,
        hd: bytes,
        last: Stamp,
        m: Mapping[int, tuple[Stamp, Vector]],
    ) -> Vector:
        """P1-P6: the TS OK vector ``mac_s(ts, hash(D), c)`` for a consistent proposal.

        Raises:
            Refused: the client is revoked, ``ts`` is not what the client's own answers give
            (C1-C5), or at most ``f`` of the answers carry this node's valid MAC (P4-P5).
        """
        self._authorize(client)
        if ts.writer != client or ts.counter >= CAP - 1:
            raise Refused(f"timestamp {ts} is not of client {client}'s set")
        if not self._consistent(ts, last, client, m):  # P3
            raise Refused(f"timestamp {ts} does not follow from the answers")
        valid = [  # P4: M', the answers whose MAC checks here
            q
            for q, (ts_q, vec) in m.items()
            if self.macs.check(q, vec, *m_fields(key, ts_q, hd, last, client))
        ]
        if len(valid) <= self.sizes.f:  # P5: M' within a fail-prone set
            raise Refused(f"only {len(valid)} of the answers carry a valid MAC")
        return self.macs.vector("k", key, ts.wire(), hd, client)  # P6

    def _consistent(
        self, ts: Stamp, last: Stamp, c: int, m: Mapping[int, tuple[Stamp, Vector]]
    ) -> bool:
        """C1-C5: ``M`` covers a quorum and ``ts`` is W9's choice from it."""
        answers = {q: v for q, v in m.items() if q in self.nodes}
        if len(answers) < self.sizes.quorum:  # C2
            return False
        max_ts = max(s for s, _ in answers.values())  # C3
        return ts == next_stamp(max_ts, last, c)  # C4-C5

    # -- (K, J) --------------------------------------------------------------------
    def _k_ok(self, w: Write, q: int) -> bool:
        return self.macs.check(q, w.k_map.get(q), *w.k_fields())

    def _j_ok(self, w: Write, j: Mapping[int, Vector], q: int) -> bool:
        return self.macs.check(q, j.get(q), *w.j_fields())

    def quorum_vouches(self, w: Write, j: Mapping[int, Vector]) -> bool:
        """Q1-Q3: a quorum of nodes each with a valid entry for this node in ``K`` or ``J``."""
        vouching = [q for q in self.nodes if self._k_ok(w, q) or self._j_ok(w, j, q)]
        return len(vouching) >= self.sizes.quorum

    def vouchable(self, w: Write, j: Mapping[int, Vector]) -> bool:
        """V1-V5: this node's own MAC in ``K`` or ``J``, or valid ``J`` entries from more
        than a fail-prone set (``f``) of nodes."""
        if self._k_ok(w, self.me) or self._j_ok(w, j, self.me):  # V2
            return True
        valid = [v for v in self.nodes if self._j_ok(w, j, v)]  # V3
        return len(valid) > self.sizes.f  # V4

    # -- STORE ---------------------------------------------------------------------
    def store(self, sender: int, w: Write, j: Mapping[int, Vector], ttl: int) -> StoreResult:
        """S1-S18: a STORE from a client or a forwarding node.

        Raises:
            Refused: a timestamp past the cap or a negative TTL.
        """
        if w.value.stamp.counter >= CAP - 1 or ttl < 0:
            raise Refused("a STORE with a forged counter or a negative ttl")
        known = self._known.get(w)
        merged = _merge(known.j if known else {}, j, sender)
        merged.pop(self.me, None)
        out = StoreResult()
        vouchable = self.vouchable(w, merged)  # S9
        if vouchable:  # S13, counted before S2 (the node's copy to itself)
            merged[self.me] = self.macs.vector(*w.j_fields())
        vouched = self.quorum_vouches(w, merged)  # S2
        if vouched and not vouchable:  # Q2 implies V2 (Lemma 16 [003 L1788-1790])
            vouchable = True
            merged[self.me] = self.macs.vector(*w.j_fields())
        if not vouchable:
            return out
        if known is None:
            known = _Known({}, ttl)
        if vouched:
            first = not known.vouched
            out.ack = first or sender == w.writer  # S3
            if first:
                out.echoes = self.table.echoes(w.key, w.value)  # S4-S5
                known.vouched = True
            if w.value > current(self.regs, w.key):  # S6
                self.regs.put(w.key, w.value)  # S7
                out.stored = True
                ttl = self.maxq  # S8
        send_now = known.sent_ttl < 0  # S11
        self._remember(w, known, merged, ttl)  # S12-S16
        if send_now and known.ttl > 0:  # S17-S18
            out.forward = self._sent(w, known)
        return out

    def vouchers(self, w: Write) -> dict[int, Vector]:
        """The ``J`` this node holds for ``w`` (its own entry once it vouched): with ``K``,
        what shows another node that a quorum vouched (``listeners/bsync.py``)."""
        known = self._known.get(w)
        return dict(known.j) if known is not None else {}

    def _remember(self, w: Write, known: _Known, merged: dict[int, Vector], ttl: int) -> None:
        known.j = merged  # S15-S16
        known.ttl = max(known.ttl, ttl)  # S12
        self._known[w] = known
        self._known.move_to_end(w)
        while len(self._known) > self.maxm:
            self._known.popitem(last=False)

    def _sent(self, w: Write, known: _Known) -> Forward:
        known.sent_j = frozenset(known.j)
        known.sent_ttl = known.ttl
        return Forward(w, dict(known.j), known.ttl - 1)

    @property
    def pending(self) -> bool:
        """Whether :meth:`dequeue` has something to send (the caller runs it after
        ``Twait``, or at once when it wants)."""
        return any(k.dirty and k.sent_ttl >= 0 and k.ttl > 0 for k in self._known.values())

    def dequeue(self) -> list[Forward]:
        """D1-D5: the STOREs whose ``J`` or TTL grew since they last went out."""
        return [
            self._sent(w, k)
            for w, k in self._known.items()
            if k.dirty and k.sent_ttl >= 0 and k.ttl > 0
        ]


def _merge(have: Mapping[int, Vector], got: Mapping[int, Vector], sender: int) -> dict[int, Vector]:
    """S15-S16, with the sender's own entry taking precedence (see the module's docstring)."""
    merged = dict(have)
    for i, vec in got.items():
        if i == sender or i not in merged:
            merged[i] = vec
    return merged
