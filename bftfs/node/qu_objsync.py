"""Object sync, the asking side (L2599-2607): a version of an object this node lacks,
fetched from the host servers named by the OHS (then any other server) through the node's
endpoint, taken once b+1 hosts agree byte for byte, so at least one is benign.  The rules
of agreement are :mod:`bftfs.qu.objsync`'s; concurrent wants of one version share one
sync (:mod:`bftfs.node.qu_inflight`).  The Q/U handlers (``node/qu_server.py``) sync
what a request's step needs, then run the step again.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.ids import NodeId, PrincipalId
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import INVALID_REPLY, QuorumResult, QuorumUnavailable
from bftfs.node.qu_inflight import InFlight
from bftfs.qu.classify import QUThresholds
from bftfs.qu.links import proven_chain
from bftfs.qu.messages import KIND_FETCH, KIND_SYNC, VERSION
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.reads import MAX_CHAIN
from bftfs.qu.replica import SyncWant
from bftfs.qu.request import Link
from bftfs.qu.timestamp import Timestamp

#: Object sync gives up after this long (the request then fails and the client retries).
SYNC_TIMEOUT = 2.0
#: Stored requests fetched at once for one request's links sent without proofs.
PROOFS_AT_ONCE = 8
#: Calls to other servers one request's links sent without proofs may cost, in all: a
#: link no server stored costs a call to each (a client naming many would cost ``n - 1``
#: calls for each); a stretch of links a correct server took costs a call per 33.
MAX_PROOF_CALLS = 128


@dataclass
class Proofs:
    """What :func:`fetch_proofs` got (the stored requests by link time) and the calls it
    made to other servers for them: the work done on the sender's behalf, charged to it
    (``net/admission.Admission.charge``)."""

    found: dict[Timestamp, bytes] = field(default_factory=dict)
    calls: int = 0


class ObjectSync:
    """One node's object syncs: each version fetched once however many requests here
    want it (``inflight``), counted in the node's ``qu.syncs``."""

    def __init__(
        self,
        node_id: NodeId,
        th: QUThresholds,
        endpoint: Endpoint,
        inflight: InFlight,
        stats: Counter[str],
    ) -> None:
        self.node_id = node_id
        self.th = th
        self.endpoint = endpoint
        self.inflight = inflight
        self.stats = stats

    async def fetch_all(
        self, wants: tuple[SyncWant, ...]
    ) -> dict[tuple[int, Timestamp], tuple[bytes | None, bytes]] | None:
        """Every version of ``wants`` (at most a request's 8 objects) synced at once,
        each shared with the other requests here that want it; None if one failed."""
        got: dict[tuple[int, Timestamp], tuple[bytes | None, bytes] | None] = {}

        async def one(want: SyncWant) -> None:
            key = (want.oid, want.lt)
            got[key] = await self.inflight.fetch(key, functools.partial(self.fetch, want))

        async with trio.open_nursery() as nursery:
            for want in wants:
                nursery.start_soon(one, want)
        if any(v is None for v in got.values()):
            return None
        return {k: v for k, v in got.items() if v is not None}

    async def fetch(self, want: SyncWant) -> tuple[bytes | None, bytes] | None:
        """Fetch ``want`` from b+1 hosts that agree byte for byte (L2599-2604; the rules
        are :mod:`bftfs.qu.objsync`)."""
        self.stats["qu.syncs"] += 1
        th = self.th
        targets = [PrincipalId(s) for s in sync_order(int(self.node_id), want.hosts, th.n)]
        body = {"v": VERSION, "oid": want.oid, "lt": want.lt.encode()}
        votes = SyncVotes(th.b)

        def accept(_node: int, raw: Any) -> bool:
            # An answer that agrees with all before it waits for the other hosts asked
            # (b + 1 in all: when they agree, nobody else is asked); one that is malformed
            # or disagrees counts as "invalid", so the transport probes the next host at
            # once instead of after the probe interval.  (Every first answer probed a
            # third host: 3 requests per sync where 2 do.)
            return votes.promising(raw)

        try:
            await self.endpoint.quorum_call(
                targets,
                KIND_SYNC,
                body,
                enough=lambda _valid: votes.decided(),
                accept=accept,
                initial=th.b + 1,
                probe_after=0.05,
                timeout=SYNC_TIMEOUT,
            )
        except QuorumUnavailable as e:
            if every_host_answered(e.result, targets):
                self.inflight.gone((want.oid, want.lt))  # not at b + 1 benign hosts
            return None
        return votes.result()


async def fetch_proofs(
    node_id: NodeId,
    th: QUThresholds,
    endpoint: Endpoint,
    links: Iterable[Link],
    budget: int = MAX_PROOF_CALLS,
) -> Proofs:
    """The stored requests that prove ``links`` (sent without proofs; this node did not
    take those versions), in at most ``budget`` calls to other servers in all.

    A walk's links run down one object's conditioned-on chain, so each call names the
    newest link of an object not yet proven with the object and a count
    (``reads.fetch_reply``): the answer brings that version's stored request and those of
    up to :data:`~bftfs.qu.reads.MAX_CHAIN` versions before it, each checked in turn by
    what it proves (``links.prove``: a stored request proves itself, so one answer will
    do and a liar's is passed over, from the first entry that does not check).  A node
    that missed a stretch of versions proves it in a call per 33 links, not one per link.
    The links none proves are left out, and the request is refused as unproven."""
    out = Proofs()
    limit = trio.CapacityLimiter(PROOFS_AT_ONCE)
    by_object: dict[int, set[Timestamp]] = {}
    for link in links:
        by_object.setdefault(link.oid, set()).add(link.lt)

    async def ask(peer: int, oid: int, lt: Timestamp, wanted: set[Timestamp]) -> bool:
        """One call: whether it proved ``lt`` (and whatever before it it proved too)."""
        out.calls += 1
        body = {"v": VERSION, "lt": lt.encode(), "oid": oid, "n": MAX_CHAIN}
        try:
            raw = await endpoint.call(PrincipalId(peer), KIND_FETCH, body, timeout=SYNC_TIMEOUT)
        except (TransportError, RemoteError):
            return False
        chain = proven_chain(raw, th, oid, lt, MAX_CHAIN)
        for at, _co, proof in chain:
            if at in wanted:
                out.found[at] = proof
                wanted.discard(at)
        return bool(chain)

    async def one(oid: int, wanted: set[Timestamp]) -> None:
        async with limit:
            while wanted:
                lt = max(wanted)
                for peer in sync_order(int(node_id), (), th.n):
                    if out.calls >= budget:
                        return
                    if await ask(peer, oid, lt, wanted):
                        break
                wanted.discard(lt)  # proved, or no server would: the rest go on

    async with trio.open_nursery() as nursery:
        for oid, wanted in by_object.items():
            nursery.start_soon(one, oid, wanted)
    return out


def every_host_answered(result: QuorumResult, targets: Iterable[PrincipalId]) -> bool:
    """Whether every one of ``targets`` answered a sync (with the version, without it,
    or with a reply that did not count), not refused it or failed: only then does a
    sync without ``b + 1`` matching answers show the version is at no ``b + 1`` benign
    servers now, so that skipping it a while (``InFlight.gone``) skips nothing a sync
    could get.  A host that refused (its handler failed, its session was revoked) may
    hold the version; counting its refusal as an answer would let one liar's answer
    and one benign holder's refusal under load make the node skip a version two benign
    hosts hold."""
    errors = result.errors
    return all(t in result.replies or errors.get(t) == INVALID_REPLY for t in targets)
