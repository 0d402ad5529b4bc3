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
from bftfs.qu.links import prove, requests_answered
from bftfs.qu.messages import KIND_FETCH, KIND_SYNC, MAX_FETCH_MORE, VERSION
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.replica import SyncWant
from bftfs.qu.request import Link
from bftfs.qu.timestamp import Timestamp

#: Object sync gives up after this long (the request then fails and the client retries).
SYNC_TIMEOUT = 2.0
#: Calls made at once for one request's links sent without proofs.
PROOFS_AT_ONCE = 8
#: Stored requests one call asks for (``qu.fetch`` with ``more``).
PER_CALL = MAX_FETCH_MORE + 1
#: Calls to other servers one request's links sent without proofs may cost, in all: a
#: link no server stored costs a call to each (a client naming many would cost ``n - 1``
#: calls for each); links a correct server took cost a call per :data:`PER_CALL`.
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

    Each call names up to :data:`PER_CALL` of the wanted versions (``qu.fetch`` with
    ``more``: ``reads.fetch_reply``), and the next server is asked for those the answer
    lacked.  A node misses the updates whose quorum it was not in, scattered down a chain
    (one in six at ``n = 6``), and so does every other: a walk down a chain from one
    server's answer stopped at that server's first gap, about 1.5 proofs a call where
    this proves dozens.  Each answer is checked by what it proves (``links.prove``: a
    stored request proves itself, so one answer will do and a liar's is useless).  The
    links none proves are left out, and the request is refused as unproven."""
    out = Proofs()
    limit = trio.CapacityLimiter(PROOFS_AT_ONCE)
    oids: dict[Timestamp, set[int]] = {}
    for link in links:
        oids.setdefault(link.lt, set()).add(link.oid)
    wanted = sorted(oids, reverse=True)

    def proves(lt: Timestamp, proof: bytes) -> bool:
        return all(prove(proof, th, oid, lt) is not None for oid in oids[lt])

    async def ask(peer: int, lts: list[Timestamp]) -> None:
        """One call for ``lts``; what it proves goes into ``out.found``."""
        out.calls += 1
        body = {"v": VERSION, "lt": lts[0].encode(), "more": [lt.encode() for lt in lts[1:]]}
        try:
            raw = await endpoint.call(PrincipalId(peer), KIND_FETCH, body, timeout=SYNC_TIMEOUT)
        except (TransportError, RemoteError):
            return
        for lt, proof in requests_answered(raw, lts).items():
            if proves(lt, proof):
                out.found[lt] = proof

    async def one(lts: list[Timestamp]) -> None:
        async with limit:
            for peer in sync_order(int(node_id), (), th.n):
                left = [lt for lt in lts if lt not in out.found]
                if not left or out.calls >= budget:
                    return
                await ask(peer, left)

    async with trio.open_nursery() as nursery:
        for i in range(0, len(wanted), PER_CALL):
            nursery.start_soon(one, wanted[i : i + PER_CALL])
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
