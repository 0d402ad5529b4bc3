"""Audits with proofs of storage on a node (issue 68; the rules are ``node/auditcore.py``,
the argument docs/bar.md): every node audits every other node, over node-to-node
sessions, as background work.

**The auditor** (:class:`Auditor`): once per ``[verification] audit_seconds`` (the first
round one period after the start) it walks its own store a page at a time
(``auditcore.candidates_page``, each page behind the node's foreground-first gate,
``node/yielding.py``) and keeps a uniform sample of its verified blocks, drawn with a
random source seeded from the operating system (a test passes its own seed).  Each peer
gets the versions it owes (said missing last round) and ``audit_challenges`` versions of
the sample; the challenges go one at a time per peer, each behind the gate, each with
:data:`DEADLINE_SECONDS` to answer.  A peer that twice does not answer an audit in time but
answers a ping each time withheld the answer: that fails (a rational node would otherwise
ignore audits, which costs it nothing); one that answers neither is late (a node down is
reported as down).  A refusal as ``retired`` or of an unknown kind (a node of an earlier
release, mid-upgrade) judges nothing; a node that claims an old release for ever leaves
the cluster "mixed versions" in ``bftfs status``, degraded.  A peer catching up after a
restart may say so (``busy``) for :data:`BUSY_ROUNDS` rounds, then that fails too.
Failures go to the node's findings (``node/findings.py``, kind ``audit_failed``: ``bftfs
status`` reports the peer, DEGRADED, until cleared); every verdict is counted per peer in
``progress["audits"]`` (``bftfs status -v``, the metrics).

**The answer** (``audit.challenge``, nodes only, inline): one read of the store
(``auditcore.answer_step``).  A correct node that lacks the version answers ``missing``
and then fetches its fragment from the others (as the scrub repairs, one at a time,
behind the gate) so that the re-asked version passes next round.

A node whose faults say it skips audits (``skips`` holding ``"audit"``: the ``rational``
profile, ``bftfs/testing/byzantine/rational.py``) audits nobody; it still gets asked.
"""

from __future__ import annotations

import contextlib
import functools
import random
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId, is_node
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import HandlerError
from bftfs.node import contributions
from bftfs.node.auditcore import (
    KIND_CHALLENGE,
    Answer,
    Challenge,
    Ledger,
    Reservoir,
    Verdict,
    answer_step,
    candidates_page,
    cross_checksum_step,
    verdict,
)
from bftfs.node.rw_scrubber import NotLatest, rewrite_own_fragment
from bftfs.rw.messages import BlockId, MessageError
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

PROGRESS_KEY = "audits"
#: Seconds a peer has to answer one challenge (one store read and one fragment sent).
DEADLINE_SECONDS = 10.0
#: Refusals a correct node may give, which judge nothing: a retired node (its generation
#: moved on), one of an earlier release without audits (a rolling upgrade).
EXCUSED_REFUSALS = frozenset({"retired", "unknown_kind"})
#: Blocks one page of the candidate walk reads.
PAGE = 256
#: Rounds in a row a peer may answer ``busy`` (catching up) before it fails.
BUSY_ROUNDS = 3
#: ``node.finished`` key: the fetches of versions said missing are done.
FETCHED = "audits.fetch"
#: Versions said missing waiting for their fetch here, at most (the rest are dropped:
#: asked again, they fail).
MAX_FETCHES = 64


class Auditor:
    """One node's audits of its peers (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        *,
        rng: random.Random | None = None,
        deadline: float = DEADLINE_SECONDS,
    ) -> None:
        self.node = node
        self.deadline = deadline
        self.policy = node.config.verification
        self.rng = rng if rng is not None else random.Random(secrets.randbits(128))
        self.ledger = Ledger()
        self.busy_rounds: dict[int, int] = {}
        self.progress: dict[str, Any] = node.progress.setdefault(
            PROGRESS_KEY, {"state": "waiting", "rounds": 0, "candidates": 0, "peers": {}}
        )
        self.progress["period_s"] = self.policy.audit_seconds

    async def run(self) -> None:
        """A round every ``audit_seconds`` (0: never); never raises."""
        period = self.policy.audit_seconds
        if period <= 0:
            self.progress["state"] = "off"
            return
        while True:
            await trio.sleep(period)
            try:
                await self.one_round()
            except Exception:  # the node must keep serving whatever happens here
                self.node.log.exception("node %s: audit round failed", self.node.id)
                self.node.stats["internal_errors"] += 1
                self.progress["state"] = "failed"

    async def sample(self, size: int) -> list[tuple[int, Any]]:
        """A uniform sample of ``size`` of this node's verified blocks (their latest
        versions), read a page at a time behind the gate."""
        pool: Reservoir[tuple[int, Any]] = Reservoir(size, self.rng)
        after: int | None = None
        while True:
            await self.node.gate.step()
            page, after = self.node.store.read(
                functools.partial(candidates_page, after=after, limit=PAGE)
            )
            for item in page:
                pool.offer(item)
            if after is None:
                break
        self.progress["candidates"] = pool.seen
        return pool.items

    async def one_round(self) -> None:
        """Challenge every peer: what it owes, then ``audit_challenges`` sampled versions."""
        node = self.node
        self.progress["state"] = "running"
        peers = [NodeId(i) for i in node.config.node_ids if i != int(node.id)]
        per_peer = self.policy.audit_challenges
        items = await self.sample(per_peer * max(1, len(peers)))
        async with trio.open_nursery() as nursery:
            for peer in peers:
                picks = self.rng.sample(items, min(per_peer, len(items)))
                plan = self.ledger.owed(int(peer)) + [Challenge(b, ts) for b, ts in picks]
                nursery.start_soon(self.audit_peer, peer, plan)
        self.progress["rounds"] += 1
        self.progress["state"] = "done"
        self._publish()

    async def audit_peer(self, peer: NodeId, plan: list[Challenge]) -> None:
        """Challenge ``peer`` with ``plan``, one at a time, each behind the gate."""
        busy = False
        for challenge in plan:
            await self.node.gate.step()  # client requests first (node/yielding.py)
            found, said_busy = await self.challenge(peer, challenge)
            if said_busy:
                busy = True
                if self.busy_rounds.get(int(peer), 0) >= BUSY_ROUNDS:
                    found = Verdict.FAILED  # catching up for ever is no excuse
            self.record(peer, challenge, found)
        self.busy_rounds[int(peer)] = self.busy_rounds.get(int(peer), 0) + 1 if busy else 0

    async def challenge(self, peer: NodeId, challenge: Challenge) -> tuple[Verdict, bool]:
        """Ask ``peer`` for its fragment of the challenged version and judge the answer;
        whether it said it was busy catching up."""
        node = self.node
        answer: Answer | None = None
        # A busy machine can hold an honest node's answer past the deadline while the ping
        # after it comes back at once: a peer is judged to withhold only when it answers
        # pings and lets the challenge time out twice in a row.
        for _ in range(2):
            try:
                raw = await node.endpoint.call(
                    peer,
                    KIND_CHALLENGE,
                    challenge.to_wire(),
                    timeout=self.deadline,
                    keep=lambda: False,
                )
                answer = Answer.from_wire(raw)
                break
            except RemoteError as e:
                if e.code in EXCUSED_REFUSALS:
                    return Verdict.VOID, False
                answer = Answer(fragment=b"")  # a correct node answers every other challenge
                break
            except TransportError:
                if not await self._answers_pings(peer):
                    answer = None
                    break
                answer = Answer(fragment=b"")
        cc = node.store.read(
            functools.partial(cross_checksum_step, block=challenge.block, ts=challenge.ts)
        )
        return verdict(cc, int(peer), answer), answer is not None and answer.busy

    async def _answers_pings(self, peer: NodeId) -> bool:
        """Whether ``peer`` answers a ping within the deadline (then it withheld its audit
        answer rather than being down)."""
        try:
            await self.node.endpoint.call(
                peer, "ping", None, timeout=self.deadline, keep=lambda: False
            )
        except (TransportError, RemoteError):
            return False
        return True

    def record(self, peer: NodeId, challenge: Challenge, found: Verdict) -> None:
        node = self.node
        before = self.ledger.peers.get(int(peer))
        failed_before = 0 if before is None else before.counts[Verdict.FAILED.value]
        self.ledger.record(int(peer), challenge, found, node.now_ns())
        failed_now = self.ledger.peers[int(peer)].counts[Verdict.FAILED.value]
        node.stats[f"audits.{found.value}"] += 1
        if failed_now > failed_before:
            node.findings.peer_faults[(int(peer), "audit_failed")] += 1
            node.log.warning(
                "node %s: node %s failed an audit of block %#x at %s",
                node.id,
                peer,
                challenge.block,
                challenge.ts,
            )
        self._publish()

    def _publish(self) -> None:
        self.progress["peers"] = self.ledger.to_json()


class Answerer:
    """The ``audit.challenge`` handler, and the fetches of versions it said were missing."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._send, self._receive = trio.open_memory_channel[Challenge](MAX_FETCHES)
        #: Set whenever the fetches asked for so far are done (tests wait on it).
        node.finished[FETCHED] = trio.Event()

    async def on_challenge(self, ctx: RequestContext, payload: Any) -> Any:
        node = self.node
        if not is_node(ctx.sender) or ctx.sender == node.id:
            node.stats["audits.refused.forbidden"] += 1
            raise HandlerError("forbidden", "audits are between nodes")
        try:
            challenge = Challenge.from_wire(payload)
        except MessageError as e:
            node.stats["audits.refused.malformed"] += 1
            raise HandlerError("malformed", str(e)) from None
        state = (node.progress.get("rw.catchup") or {}).get("state")
        if state not in (None, "done", "failed"):
            return Answer(busy=True).to_wire()
        answer = node.store.read(functools.partial(answer_step, challenge=challenge))
        node.stats["audits.answered"] += 1
        if answer.missing:
            node.stats["audits.answered_missing"] += 1
            with contextlib.suppress(trio.WouldBlock):  # full: asked again, it fails
                self._send.send_nowait(challenge)
                if node.finished[FETCHED].is_set():
                    node.finished[FETCHED] = trio.Event()
        return answer.to_wire()

    async def fetch_missing(self) -> None:
        """Fetch, one at a time behind the gate, the fragments this node said it lacked."""
        async for challenge in self._receive:
            await self.node.gate.step()
            try:
                await self.fetch(challenge)
            except Exception:  # the node must keep serving: asked again, it fails
                self.node.log.exception("node %s: audit fetch failed", self.node.id)
            if self._receive.statistics().current_buffer_used == 0:
                self.node.finished[FETCHED].set()

    async def fetch(self, challenge: Challenge) -> None:
        """Read the version from the others and store this node's fragment of it (checked
        as a WRITE), when it is the block's latest complete version."""
        node = self.node
        block = BlockId(challenge.block)
        try:
            refused = await rewrite_own_fragment(node, block, challenge.ts, DEFAULT_MAX_AHEAD_NS)
        except NotLatest:
            return
        if refused is not None:
            node.log.warning("node %s: audit fetch of %#x: %s", node.id, challenge.block, refused)
            return
        node.stats["audits.fetched"] += 1


def register(node: Node, notified_by: Counter[int]) -> Auditor | None:
    """Register ``audit.challenge`` on ``node``, keep its contribution record current
    (``notified_by``: the NOTIFY entries it received per sender, ``RWServer.notified_by``)
    and start its auditor (unless the node is retired, or its faults skip audits); the
    auditor."""
    answerer = Answerer(node)
    node.register(KIND_CHALLENGE, answerer.on_challenge, inline=True)
    node.spawn(contributions.run, node, notified_by)
    if node.views.generation.retired:
        return None
    node.spawn(answerer.fetch_missing)
    if "audit" in getattr(node.faults, "skips", ()):
        return None
    auditor = Auditor(node)
    node.spawn(auditor.run)
    return auditor
