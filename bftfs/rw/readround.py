"""The rounds of one PASIS read attempt, and what it learns from their replies.

A read attempt (``rw/read.py``) keeps a :class:`ReadState`; the rounds here send to the
nodes and merge every reply into it, as data: READ_LATEST (:meth:`ReadRounds.read_latest`,
with or without fragments), READ_PREV for older history (:meth:`ReadRounds.fetch_history`)
and READ_PREV with data at a candidate's timestamp (:meth:`ReadRounds.fetch_fragments`).
A reply that does not parse, fails its checks (``rw/verify.py``), or refutes a version its
node listed marks that node bad for the attempt and counts a fault against it
(``rw/health.py``).  A node that did not answer within a round's patience is *silent*,
not bad (``ReadState.silent``; slow is not unavailable, ``rw/calls.py``): it no longer
counts for the attempt, but the read asks it again, with more patience, once no other
node is left (``rw/read.py``).  Code between two ``await`` points runs atomically, which the state
relies on: a quorum call's ``accept`` callbacks mutate it without locks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumUnavailable
from bftfs.rw import verify
from bftfs.rw.calls import RWCalls, silent_targets
from bftfs.rw.classify import (
    Decision,
    HostStatus,
    Kind,
    NodeView,
    decide,
    view_from_history,
)
from bftfs.rw.health import NodeHealth
from bftfs.rw.messages import BlockId, MessageError, ReadReply, ReadRequest
from bftfs.rw.timestamp import Timestamp

log = logging.getLogger(__name__)


@dataclass
class ReadState:
    """What one read attempt has learned so far (mutated only between awaits)."""

    views: dict[int, NodeView] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)
    #: Validated fragments by version: ``frags[ts][node] = (cross checksum, fragment)``.
    frags: dict[Timestamp, dict[int, tuple[bytes, bytes]]] = field(default_factory=dict)
    rejected: set[Timestamp] = field(default_factory=set)
    #: Nodes whose reply flagged a version as verified (lazy verification), by version.
    verified: dict[Timestamp, set[int]] = field(default_factory=dict)
    #: See :func:`decide`.
    restart_at: int | None = None
    #: Each answering node's garbage-collection floor (reads of the past check it).
    floors: dict[int, Timestamp] = field(default_factory=dict)
    #: Nodes that did not answer within a round's patience, and why: not counted, not
    #: bad; asked again with more patience when nobody else is left (``rw/read.py``).
    silent: dict[int, str] = field(default_factory=dict)
    #: How many times this attempt asked silent nodes again.
    patient_rounds: int = 0

    def good_views(self) -> dict[int, NodeView]:
        return {n: v for n, v in self.views.items() if n not in self.bad}

    def unasked(self, nodes: Iterable[NodeId]) -> list[NodeId]:
        """Those of ``nodes`` this attempt has neither heard, found bad, nor found silent."""
        heard = self.views.keys() | self.bad.keys() | self.silent.keys()
        return [n for n in nodes if n not in heard]

    def failed(self, e: QuorumUnavailable, targets: Iterable[int], answered: set[int]) -> None:
        """After a quorum call gave up: targets that never answered no longer count.

        Those that failed (refused, unreachable) are bad for the attempt; those merely
        silent until the call's deadline are :attr:`silent` instead (what they said
        before is dropped too: a view or fragment that a timed-out history or fragment
        round could not complete).  Nodes whose reply arrived were judged by ``accept``
        already (marked bad, or merely not useful, e.g. a fragment collected meanwhile)
        and are left alone.
        """
        targets = [n for n in targets if n not in answered and n not in self.bad]
        quiet = set(silent_targets(e.result, targets))
        for node in targets:
            why = e.result.errors.get(NodeId(node), "no reply in time")
            if node in quiet:
                self.forget(node)
                self.silent[node] = why
            else:
                self.mark_bad(node, why)

    def mark_bad(self, node: int, reason: str) -> None:
        self.bad[node] = reason
        self.silent.pop(node, None)
        self.forget(node)

    def forget(self, node: int) -> None:
        """Drop what ``node`` said in this attempt (its view, fragments, flags)."""
        self.views.pop(node, None)
        for by_node in self.frags.values():
            by_node.pop(node, None)
        for flaggers in self.verified.values():
            flaggers.discard(node)


class ReadRounds:
    """Sends a read attempt's rounds and absorbs their replies (see the module docstring).

    Args:
        calls: the client's quorum calls and counters.
        health: where faults found in replies are counted.
        max_fragment: the largest fragment a reply may carry (from the block size).
        max_fetches: history fetches per node before its view is taken as it is
            (:func:`~bftfs.rw.classify.view_from_history`).
    """

    def __init__(
        self, calls: RWCalls, health: NodeHealth, *, max_fragment: int, max_fetches: int
    ) -> None:
        self.calls = calls
        self.th = calls.th
        self.health = health
        self.max_fragment = max_fragment
        self.max_fetches = max_fetches

    def decide(self, st: ReadState) -> Decision:
        """The next step of the attempt, from what ``st`` holds (``rw/classify.decide``)."""
        return decide(
            self.th, st.good_views(), rejected=frozenset(st.rejected), restart_at=st.restart_at
        )

    def _absorb(
        self, st: ReadState, node: int, req: ReadRequest, raw: Any, *, fetched: bool
    ) -> bool:
        """Validate one read reply and merge it into ``st``; whether it was valid."""
        if node in st.bad:
            return False
        try:
            reply = ReadReply.from_wire(raw, req, n=self.th.n, max_fragment=self.max_fragment)
        except MessageError as e:
            st.mark_bad(node, f"malformed: {e}")
            self.calls.stats["bad_replies"] += 1
            self.health.blame(node, "malformed")
            return False
        bad = verify.check_read_reply(self.th, node, req, reply)
        if bad is not None:
            st.mark_bad(node, bad.reason)
            self.calls.stats["bad_replies"] += 1
            self.health.blame(node, "corrupt", suspect=True)
            log.info("node %s: %s", node, bad.reason)
            return False
        st.floors[node] = reply.floor
        st.views[node] = view_from_history(
            node,
            reply.history,
            reply.more,
            reply.floor,
            previous=st.views.get(node),
            fetched=fetched,
            max_fetches=self.max_fetches,
        )
        if req.data and reply.latest is not None:
            assert reply.cross_checksum is not None and reply.fragment is not None
            st.frags.setdefault(reply.latest, {})[node] = (reply.cross_checksum, reply.fragment)
        if reply.verified and reply.latest is not None:
            st.verified.setdefault(reply.latest, set()).add(node)
        return True

    def _round_done(self, st: ReadState) -> bool:
        """Whether a READ_LATEST round has what the next decision needs."""
        if len(st.views) < min(self.th.quorum, self.th.complete if self.th.fast_read else 0):
            return False  # decide() could only say WIDEN: skip the walk (hot path)
        return self.decide(st).kind is not Kind.WIDEN

    async def read_latest(
        self,
        st: ReadState,
        block: BlockId,
        targets: Sequence[int],
        data_nodes: set[NodeId],
        *,
        initial: int | None,
        cap: Timestamp | None = None,
        timeout: float | None = None,
        every: bool = False,
    ) -> None:
        """READ_LATEST (READ_PREV up to ``cap`` inclusive when reading the past) to
        ``targets``, with data from ``data_nodes``, until the next decision is no WIDEN
        (``every``: until every target answered); ``timeout``: the round's patience
        (default the client's)."""
        self.calls.stats["rounds"] += 1
        reqs = {
            n: ReadRequest(block, data=n in data_nodes, below=cap, inclusive=cap is not None)
            for n in targets
        }

        answered: set[int] = set()
        wanted = set(targets)

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            return self._absorb(st, node, reqs[node], raw, fetched=False)

        try:
            await self.calls.quorum(
                targets,
                reqs[targets[0]].kind,
                lambda n: reqs[n].to_wire(),
                enough=lambda _r: answered >= wanted if every else self._round_done(st),
                accept=accept,
                initial=initial,
                refused=self.health.refused,
                timeout=timeout,
            )
        except QuorumUnavailable as e:
            # Every target answered or failed, or time ran out: the caller's next decision
            # widens further or gives up.
            st.failed(e, targets, answered)

    async def fetch_history(self, st: ReadState, block: BlockId, d: Decision) -> None:
        """READ_PREV (history only) to the nodes the decision names."""
        self.calls.stats["rounds"] += 1
        self.calls.stats["history_fetches"] += len(d.fetch)
        reqs = {
            f.node: ReadRequest(block, data=False, below=f.below, inclusive=f.inclusive)
            for f in d.fetch
        }
        pending = set(reqs)

        answered: set[int] = set()

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            pending.discard(node)
            return self._absorb(st, node, reqs[node], raw, fetched=True)

        try:
            await self.calls.quorum(
                list(reqs),
                reqs[d.fetch[0].node].kind,
                lambda n: reqs[n].to_wire(),
                enough=lambda _r: not pending,
                accept=accept,
            )
        except QuorumUnavailable as e:
            # A node that cannot answer a history request no longer counts as a reply; the
            # next decision widens to other nodes if that leaves too few.
            st.failed(e, reqs, answered)

    async def fetch_fragments(
        self, st: ReadState, block: BlockId, cand: Timestamp, holders: Sequence[int]
    ) -> None:
        """READ_PREV at-or-below ``cand`` with data, from holders, until ``m`` are valid."""
        have = st.frags[cand]
        need = self.th.m - len(have)
        if not holders:
            return
        self.calls.stats["rounds"] += 1
        req = ReadRequest(block, data=True, below=cand, inclusive=True)

        answered: set[int] = set()

        def accept(node: NodeId, raw: Any) -> bool:
            answered.add(node)
            if not self._absorb(st, node, req, raw, fetched=False):
                return False
            if node not in st.frags.get(cand, {}):
                view = st.views.get(node)
                if view is not None and view.status(cand) is HostStatus.COLLECTED:
                    # Garbage collection removed it since the node listed it: a race that
                    # the next decision resolves (seed L1566-1574), not a lie.
                    return False
                # It listed the candidate before and now returns something else: refuted.
                st.mark_bad(node, f"did not produce its fragment of {cand!r}")
                self.calls.stats["bad_replies"] += 1
                self.health.blame(node, "refuted", suspect=True)
                return False
            return True

        try:
            await self.calls.quorum(
                holders,
                req.kind,
                req.to_wire(),
                enough=lambda _r: len(have) >= self.th.m,
                accept=accept,
                initial=need,
                refused=self.health.refused,
            )
        except QuorumUnavailable as e:
            st.failed(e, holders, answered)
