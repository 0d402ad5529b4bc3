"""A Q/U client's calls to the servers: one request round (``c_quorum_rpc``, lines
600-604), history reads (``qu.history``), link proofs and stored requests (``qu.fetch``).

Each call goes through ``Endpoint.quorum_call`` (or ``call``) and returns the replies that
parsed; a reply that does not parse is counted as a ``malformed`` fault of its server and
is otherwise ignored, so one bad server never makes a call raise.  What the replies mean
is decided elsewhere (:mod:`bftfs.qu.core`, ``client.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import trio

from bftfs.net.coalesce import BatchKind
from bftfs.net.errors import RemoteError, TransportError, refusal_code
from bftfs.net.quorum import QuorumUnavailable
from bftfs.qu import core
from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.classify import QUThresholds
from bftfs.qu.links import proven_chain
from bftfs.qu.messages import (
    KIND_BATCH,
    KIND_FETCH,
    KIND_HISTORY,
    KIND_REQUEST,
    MAX_BATCH,
    VERSION,
    MessageError,
    ReplyStatus,
)
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.timestamp import Candidate, Timestamp

#: How the client's rounds share frames (``qu.batch``).
QU_BATCH = BatchKind(KIND_BATCH, MAX_BATCH)


#: The refusal codes a short round keeps for the operation loop to judge
#: (``QUClient._check_refusals``).
REFUSALS = frozenset({"full", "quota", "ahead", "behind", "moved", "retired"})


class QuorumRounds:
    """The calls one Q/U client makes, and how many."""

    def __init__(
        self,
        endpoint: Any,
        th: QUThresholds,
        faults: Counter[tuple[int, str]],
        *,
        probe_after: float,
        timeout: float | None,
        batch: bool,
        vouch: Callable[[int, Request, Reply], bool] | None = None,
    ) -> None:
        """Args:
        endpoint: has ``quorum_call`` and ``call`` (``bftfs.net.endpoint.Endpoint``).
        th: thresholds of the cluster.
        faults: where malformed replies are counted (the client's ``faults``).
        probe_after: seconds before probing beyond the preferred quorum.
        timeout: per round (None: the endpoint's).
        batch: let concurrent rounds to one node share a frame (:data:`QU_BATCH`).
        vouch: whether a node's OK reply to a request is believed (the signature a
            method of the cross-group commit needs, ``layout/txn.py``); one that is not
            counts as a fault ``unsigned`` and the round asks another node.
        """
        self.ep = endpoint
        self.th = th
        self.faults = faults
        self.probe_after = probe_after
        self.timeout = timeout
        self._batch = QU_BATCH if batch else None
        self.vouch = vouch
        self.rounds = 0
        self.history_fetches = 0
        #: Servers that refused the latest round for space: ``full`` (out of it) or
        #: ``quota`` (this client is at its quota there), or its clock (``ahead``), by server.
        self.space: dict[int, str] = {}
        #: Servers that refused the latest round as malformed (``bad-request``): the reason.
        self.malformed: dict[int, str] = {}

    def _parsed(self, node: int, raw: Any, objects: tuple[int, ...]) -> Reply | None:
        """``raw`` parsed as a reply over ``objects``, or None (counted as malformed)."""
        try:
            return Reply.from_wire(raw, objects, self.th.n)
        except MessageError:
            self.faults[(int(node), "malformed")] += 1
            suspect = getattr(self.ep, "suspect", None)  # in-memory endpoints have none
            if suspect is not None:  # asked last, and only when needed, for a while
                suspect(node, "malformed Q/U reply")
            return None

    async def request(
        self,
        objects: tuple[int, ...],
        req: Request,
        targets: list[int],
        left_out: frozenset[int] = frozenset(),
    ) -> dict[int, Reply]:
        """``c_quorum_rpc`` (lines 600-604): replies from a quorum of ``targets``, probing
        as needed.  Every parsed reply is kept; only OK replies count toward the quorum, so
        a server that fails makes the transport probe another (a refusal is an answer: no
        probe).  The call stops once q replies are in and q OK replies have become
        impossible, so contention never waits for a dead server's timeout, while the OHS is
        still refreshed from a full quorum.  ``left_out``: servers whose histories the
        client leaves out (``HistoryCache.left_out``), which make no quorum on their own
        (:func:`_counted_quorum`)."""
        self.rounds += 1
        th = self.th
        body = req.packed()
        stash: dict[int, Reply] = {}
        repair = req.op is None or req.evidence is not None

        def settled() -> bool:
            oks = sum(1 for r in stash.values() if r.status is ReplyStatus.OK)
            if oks + (th.n - len(stash)) < th.q and len(stash) >= th.q:
                return True  # q OK replies have become impossible
            return oks >= th.q and (not repair or _counted_quorum(stash, left_out, th))

        def enough(valid: Mapping[int, Any]) -> bool:
            return settled()

        scope = trio.CancelScope()

        def accept(node: int, raw: Any) -> bool:
            rep = self._parsed(node, raw, objects)
            if rep is None or not self._vouched(node, req, rep):
                return False
            stash[node] = rep
            if settled():
                return True
            if len(stash) >= th.q and scope.deadline == float("inf"):
                # A dead server's call only fails at its timeout; with q replies in, wait
                # two probe intervals for the rest, then go on with what we have.
                scope.deadline = trio.current_time() + 2 * self.probe_after
            # A refusal is a server's valid answer, not a reason to probe another: probing
            # made the server outside the preferred quorum object-sync for every negative
            # lookup (118 syncs in a 111-file cp -a).  Failures (not current) still probe.
            return rep.status in (ReplyStatus.OK, ReplyStatus.REFUSED)

        self.space = {}
        self.malformed = {}
        try:
            with scope:
                await self.ep.quorum_call(
                    targets,
                    KIND_REQUEST,
                    body,
                    enough=enough,
                    accept=accept,
                    initial=th.q if req.op is not None and req.op.query else th.n,
                    probe_after=self.probe_after,
                    timeout=self.timeout,
                    batch=self._batch,
                    renew_at=self.th.q,  # a quorum answering is progress, cut short or not
                )
        except QuorumUnavailable as e:
            # Servers out of space answer ``full`` (node/service.py), a client's update past
            # its quota ``quota`` (node/qu_server.py), a retired generation's nodes
            # ``retired`` (node/generation.py); judged by the client's operation loop.
            self.space = {
                int(n): code
                for n, why in e.result.errors.items()
                if (code := refusal_code(why)) in REFUSALS
            }
            self.malformed = {
                int(n): why
                for n, why in e.result.errors.items()
                if refusal_code(why) == "bad-request"
            }
        self._check_unproven(objects, req, stash)
        return dict(stash)

    def _check_unproven(
        self, objects: tuple[int, ...], req: Request, stash: Mapping[int, Reply]
    ) -> None:
        """More than ``b`` servers refused links the request sent without proofs (past
        what a request carries, ``linkproofs.PROOF_BYTES``) for want of the stored
        request that proves them: the same request would be refused again, and asked
        again it would be for ever.

        Raises:
            QUUnavailable: the links could not be checked, with a server's reason.
        """
        if all(lk.proof is not None for lk in req.links):
            return
        unproven = {
            n: r.why
            for n, r in stash.items()
            if r.status is ReplyStatus.REFUSED and "not proven" in (r.why or "")
        }
        if len(unproven) > self.th.b:
            raise QUUnavailable(
                f"objects {objects}: nodes {sorted(unproven)} hold no stored request to "
                f"check links sent without proofs ({unproven[min(unproven)]})"
            )

    def _vouched(self, node: int, req: Request, rep: Reply) -> bool:
        """Whether ``rep`` is believed: an OK reply to a method needs the signature
        ``vouch`` asks for (the cross-group commit's certificates), counted ``unsigned``
        when it is missing or wrong; every other reply is believed as parsed."""
        ok = rep.status is ReplyStatus.OK and rep.type == "method"
        if self.vouch is None or not ok or self.vouch(int(node), req, rep):
            return True
        self.faults[(int(node), "unsigned")] += 1
        return False

    def check_malformed(self, objects: tuple[int, ...]) -> None:
        """After a short round: more than ``b`` nodes refused it as malformed (one correct
        node at least), so the same request would be refused again; the nodes' reason is
        what the mount log needs (it said "fewer than q servers answer; 0 answered" for
        requests carrying more links than one may, issue 39).

        Raises:
            QUUnavailable: the request refused as malformed.
        """
        bad = self.malformed
        if len(bad) > self.th.b:
            raise QUUnavailable(
                f"objects {objects}: nodes {sorted(bad)} refused the request as malformed "
                f"({bad[min(bad)]})"
            )

    async def histories(
        self,
        todo: tuple[int, ...],
        targets: list[int],
        enough: int,
        initial: int | None,
        *,
        settle: int | None = None,
    ) -> dict[int, Reply]:
        """Read the histories of ``todo`` from ``targets`` (``qu.history``) until ``enough``
        servers answered (or none more will).  ``settle``: once that many answered, wait
        two probe intervals for the others, then go on without them (0: the call gets just
        the two intervals)."""
        self.history_fetches += 1
        stash: dict[int, Reply] = {}
        scope = trio.CancelScope()
        if settle is not None and settle <= 0:
            scope.deadline = trio.current_time() + 2 * self.probe_after

        def accept(node: int, raw: Any) -> bool:
            rep = self._parsed(node, raw, todo)
            if rep is None:
                return False
            stash[node] = rep
            if settle is not None and len(stash) >= settle and scope.deadline == float("inf"):
                scope.deadline = trio.current_time() + 2 * self.probe_after
            return True

        with scope, suppress(QuorumUnavailable):
            await self.ep.quorum_call(
                targets,
                KIND_HISTORY,
                {"v": VERSION, "o": list(todo)},
                enough=lambda valid: len(valid) >= enough,
                accept=accept,
                initial=initial,
                probe_after=self.probe_after,
                timeout=self.timeout,
                batch=self._batch,
                renew_at=self.th.q,  # a quorum answering is progress, cut short or not
            )
        return stash

    async def proof(
        self, oid: int, lt: Timestamp, chain: int = 0
    ) -> list[tuple[Timestamp, Timestamp, bytes]]:
        """``(lt, lt_co, proof)`` of version ``lt`` of ``oid``: its conditioned-on
        timestamp and the stored request that made it, from any one server (the
        timestamp hash binds it, so no server need be believed), then of up to ``chain``
        versions before it in ``oid``'s conditioned-on chain from the same answer
        (``reads.fetch_reply``), each checked the same way, as far as they check; empty if
        no server has one for ``lt`` that checks."""
        got: list[tuple[Timestamp, Timestamp, bytes]] = []

        def accept(_node: int, raw: Any) -> bool:
            if got:
                return False
            got.extend(proven_chain(raw, self.th, oid, lt, chain))
            return bool(got)

        body: dict[str, Any] = {"v": VERSION, "lt": lt.encode()}
        if chain:
            body.update(oid=oid, n=chain)
        with suppress(QuorumUnavailable):
            await self.ep.quorum_call(
                core.preferred_order(oid, self.th.n),
                KIND_FETCH,
                body,
                enough=lambda valid: len(valid) >= 1,
                accept=accept,
                initial=self.th.b + 1,
                probe_after=self.probe_after,
                timeout=self.timeout,
                batch=self._batch,
            )
        return got

    async def original(self, hosts: list[int], target: Candidate) -> Request | None:
        """The request that made ``target``, fetched from the first of ``hosts`` whose
        stored request sets up exactly ``target``'s timestamp (inline repair, L2561-2570),
        or None."""
        for s in dict.fromkeys(hosts):
            try:
                raw = await self.ep.call(s, KIND_FETCH, {"v": VERSION, "lt": target.lt.encode()})
                if raw is None or not isinstance(raw, dict) or raw.get("r") is None:
                    continue
                cand = Request.from_wire(raw["r"], self.th.n)
            except (TransportError, RemoteError, MessageError):
                continue
            if cand.objects == target.objects and core.expected_lt(cand, self.th) == target.lt:
                return cand
        return None


def _counted_quorum(stash: Mapping[int, Reply], left_out: frozenset[int], th: QUThresholds) -> bool:
    """Whether a repair round's ``q`` OK replies (given) end it: ``q`` of them come from
    servers whose histories the client counts, or no more such servers can answer.

    A Byzantine server that answers a client with a validly authenticated forged newer
    candidate (``equivocate``) is a stray holder to that client, so its history is left
    out (decision 6).  A barrier round that ended at ``q`` OK replies counting its reply
    then showed only ``q - 1`` fresh histories of the servers that accepted the barrier:
    with one correct server slower than the forger, every barrier (and its inline repair)
    showed at order ``q - 1`` to the client, never complete, never copied, and the client
    set one barrier after another until the histories passed ``MAX_RH``
    (``tests/qu_hunt.py``, ``equivocate`` on server 5 with a slow server: 20 seeds in
    27).  Waiting for a counted quorum is bounded by the two probe intervals the round
    gives a late server once ``q`` replies are in (``request``), so a crashed server costs
    no more than before.  Only repair rounds wait: an operation's round ends at ``q`` OK
    replies as before, since in a healthy cluster under concurrency a server holding a
    newer candidate is a stray too, and waiting for it made every contended operation
    wait (PostMark 442 -> 132-178 transactions/s, Q/U rounds per transaction 0.05 -> 0.34).
    """
    counted = sum(1 for s, r in stash.items() if r.status is ReplyStatus.OK and s not in left_out)
    if counted >= th.q:
        return True
    return counted + sum(1 for s in range(th.n) if s not in stash and s not in left_out) < th.q
