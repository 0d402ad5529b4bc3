"""Shared helpers for the Q/U tests (imported explicitly, not a conftest).

- :class:`MemCluster`: n replicas over :class:`~bftfs.kv.MemoryKV` with deterministic
  pairwise keys, driven synchronously (``handle``) or through :class:`MemEndpoint`, an
  in-memory stand-in for ``bftfs.net.endpoint.Endpoint`` (``call``/``quorum_call``) that passes
  every message through msgpack as the wire does.  No network, no clock: tier 1.
- ``MemCluster.byzantine``: a server runs one of the Q/U Byzantine behaviours of
  :mod:`bftfs.testing.byzantine.qu` (the same ones the in-process cluster runs).
- :class:`Recorder` and :func:`check_serializable`: a Wing-Gong style search for a
  sequential order of recorded operations that respects real time and the objects'
  sequential semantics (strict serializability; linearizability for single objects).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
import trio.lowlevel

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import NodeId, client_id
from bftfs.kv import MemoryKV
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import QuorumEngine, QuorumResult, QuorumUnavailable, Verdict
from bftfs.node.qu_objsync import MAX_PROOF_CALLS, PER_CALL
from bftfs.qu import past
from bftfs.qu.canon import canonical
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.history import OHSEntry
from bftfs.qu.links import NeedProofs, prove, requests_answered
from bftfs.qu.messages import (
    KIND_FETCH,
    KIND_HISTORY,
    KIND_REQUEST,
    parse_history_request,
)
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.reads import fetch_reply, handle_history, handle_sync
from bftfs.qu.replica import NeedSync, handle_request
from bftfs.qu.reply import Reply
from bftfs.qu.request import Link, Request
from bftfs.qu.serverconfig import ReplicaConfig, Retention
from bftfs.qu.timestamp import Timestamp
from bftfs.testing.byzantine.qu import Behaviour, Withheld
from bftfs.testing.testobjects import registry


def wire(value: Any) -> Any:
    """``value`` after a trip through the transport's msgpack encoding."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


async def counting_client(cluster: Any, oid: int) -> QUClient:
    """Client 0's :class:`~bftfs.qu.client.QUClient` on an in-process ``cluster``
    (``bftfs.testing.cluster``), after it incremented counter ``oid`` once (the object
    exists, the client's cache holds its history)."""
    c = QUClient(
        cluster.client(0),
        QUThresholds.from_config(cluster.config),
        client_id=int(client_id(0)),
        rng=random.Random(0),
    )
    await c.update(oid, "counter.increment", 1)
    return c


def keyrings(n: int, clients: int, seed: int = 0) -> tuple[list[KeyRing], list[KeyRing]]:
    """Deterministic key rings for ``n`` nodes and some clients."""
    rng = random.Random(seed)
    nodes = [Identity(NodeId(i), rng.randbytes(32)) for i in range(n)]
    cls = [Identity(client_id(k), rng.randbytes(32)) for k in range(clients)]
    pubs = {i.pid: i.public for i in nodes + cls}
    return [KeyRing(i, pubs) for i in nodes], [KeyRing(c, pubs) for c in cls]


class MemCluster:
    """n in-memory replicas with the node's request handling, minus the network."""

    def __init__(
        self,
        t: int = 1,
        b: int = 1,
        *,
        seed: int = 0,
        reg: Registry | None = None,
        retention: Retention | None = None,
        clients: int = 4,
    ) -> None:
        #: The servers' clock (retention by age); tests move it.
        self.now_ns = 0
        self.th = QUThresholds.minimal(t, b)
        self.rng = random.Random(seed)
        self.node_rings, self.client_rings = keyrings(self.th.n, clients, seed)
        self.kvs = [MemoryKV() for _ in range(self.th.n)]
        reg = reg or registry()
        self.cfgs = [
            ReplicaConfig(i, self.th, _key_for(r), reg, retention or Retention())
            for i, r in enumerate(self.node_rings)
        ]
        self.down: set[int] = set()
        #: Nodes whose replies arrive after everyone else's (they are not down).
        self.slow: set[int] = set()
        self.byzantine: dict[int, Behaviour] = {}
        self.syncs = 0
        self.requests = 0

    def ohs_entry(self, server: int, oid: int) -> OHSEntry:
        """Server ``server``'s current ``<RH, alpha>`` of ``oid`` (as a reply carries it)."""
        return handle_history(self.kvs[server], self.cfgs[server], (oid,)).hist[0]

    def handle(self, server: int, sender: int, kind: str, payload: Any) -> Any:
        """What node ``server`` answers to ``payload`` (wire form in and out)."""
        if server in self.down:
            raise TransportError(f"node {server} down")
        payload = wire(payload)

        def honest() -> Any:
            return self._honest(server, sender, kind, payload)

        try:
            return wire(self._answer(server, sender, kind, payload, honest))
        except Withheld:
            raise TransportError(f"node {server} withheld its reply") from None

    def _answer(
        self, server: int, sender: int, kind: str, payload: Any, honest: Callable[[], Any]
    ) -> Any:
        """``honest()``, or what ``server``'s Byzantine behaviour answers instead."""
        wrap = self.byzantine.get(server)
        if wrap is not None and getattr(wrap, "with_keys", False):
            # The strongest forgery: signed with the Byzantine server's own keys.
            key_for = self.cfgs[server].key_for
            return wrap(server, sender, kind, payload, honest, key_for, self.th.n)
        if wrap is not None:
            return wrap(server, sender, kind, payload, honest)
        return honest()

    def _honest(self, server: int, sender: int, kind: str, payload: Any) -> Any:
        kv, cfg = self.kvs[server], self.cfgs[server]
        if kind == KIND_REQUEST:
            self.requests += 1
            if isinstance(payload, bytes):  # as bftfs.node.qu_server parses what clients send
                req = Request.from_bytes(payload, self.th.n)
            else:
                req = Request.from_wire(payload, self.th.n)
            synced: dict = {}
            fetched: dict | None = None
            for _ in range(3):
                res = handle_request(kv, cfg, sender, req, synced, self.now_ns, fetched=fetched)
                if isinstance(res, NeedProofs):  # as node/qu_objsync.fetch_proofs
                    fetched = self.fetch_proofs(server, res.links)
                    continue
                if not isinstance(res, NeedSync):
                    return res.wire()
                for want in res.wants:
                    got = self.sync(server, want.oid, want.lt, want.hosts)
                    if got is None:
                        raise RemoteError("sync", "object sync failed")
                    synced[(want.oid, want.lt)] = got
            raise RemoteError("sync", "did not settle")
        if kind == KIND_HISTORY:
            return handle_history(kv, cfg, parse_history_request(payload)).wire()
        if kind == KIND_FETCH:
            return fetch_reply(kv, payload)
        if kind == past.KIND_VERSIONS:  # history reads (qu/past.py), as node/qu_server.py
            return past.versions_step(kv, *past.parse_versions_request(payload))
        if kind == past.KIND_STATES:
            return past.states_step(kv, *past.parse_states_request(payload))
        raise RemoteError("unknown_kind", kind)

    def fetch_proofs(self, server: int, links: Sequence[Link]) -> dict[Timestamp, bytes]:
        """The stored requests proving ``links``, by the node's rule
        (:func:`bftfs.node.qu_objsync.fetch_proofs`): up to ``PER_CALL`` of the wanted
        versions named in a call, from each other server in turn for those not yet
        proven, in at most ``MAX_PROOF_CALLS`` calls."""
        out: dict[Timestamp, bytes] = {}
        calls = 0
        oids: dict[Timestamp, set[int]] = {}
        for link in links:
            oids.setdefault(link.lt, set()).add(link.oid)
        wanted = sorted(oids, reverse=True)
        for i in range(0, len(wanted), PER_CALL):
            for h in sync_order(server, (), self.th.n):
                left = [lt for lt in wanted[i : i + PER_CALL] if lt not in out]
                if not left:
                    break
                if calls >= MAX_PROOF_CALLS:
                    return out
                calls += 1
                body = {"v": 1, "lt": left[0].encode(), "more": [lt.encode() for lt in left[1:]]}
                try:
                    raw = self.handle(h, server, KIND_FETCH, body)
                except (TransportError, RemoteError):
                    continue
                for lt, proof in requests_answered(raw, left).items():
                    if all(prove(proof, self.th, oid, lt) is not None for oid in oids[lt]):
                        out[lt] = proof
        return out

    def sync(
        self, server: int, oid: int, lt: Timestamp, hosts: Sequence[int]
    ) -> tuple[bytes | None, bytes] | None:
        """Object sync by the node's own rules (:mod:`bftfs.qu.objsync`: whom to ask in
        which order, b+1 identical answers), over direct calls instead of quorum calls."""
        self.syncs += 1
        votes = SyncVotes(self.th.b)
        for h in sync_order(server, hosts, self.th.n):
            if h in self.down:
                continue

            def honest(h: int = h) -> Any:
                return handle_sync(self.kvs[h], oid, lt)

            try:
                raw = self._answer(h, server, "qu.sync", {"oid": oid, "lt": lt.encode()}, honest)
            except Withheld:
                continue
            if votes.add(wire(raw)):
                break
        return votes.result()

    def endpoint(self, k: int = 0) -> MemEndpoint:
        """The endpoint of client ``k``."""
        return MemEndpoint(self, int(client_id(k)))


def _key_for(ring: KeyRing) -> Callable[[int], bytes]:
    def key_for(s: int) -> bytes:
        k = ring.key(NodeId(s))
        if k is None:
            raise KeyError(s)
        return k

    return key_for


class MemEndpoint:
    """``call`` and ``quorum_call`` over a :class:`MemCluster`, with checkpoints between
    deliveries so that concurrent clients interleave (order shuffled by the cluster's seeded
    random generator)."""

    def __init__(self, cluster: MemCluster, pid: int) -> None:
        self.cluster = cluster
        self.pid = pid
        self.sent = 0

    def refusing(self, targets: Sequence[int]) -> set[int]:
        """None of ``targets`` refuses connections: there are none (``Endpoint.refusing``)."""
        return set()

    async def call(
        self, node: int, kind: str, payload: Any, *, timeout: float | None = None
    ) -> Any:
        await trio.lowlevel.checkpoint()
        self.sent += 1
        return self.cluster.handle(node, self.pid, kind, payload)

    async def quorum_call(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        *,
        enough: Callable[[Mapping[int, Any]], bool],
        accept: Callable[[int, Any], bool] | None = None,
        initial: int | None = None,
        probe_after: float = 0.5,
        timeout: float | None = None,
        batch: Any = None,
        renew_at: int | None = None,  # (no patience here: no clock)
    ) -> QuorumResult:
        """The production :class:`QuorumEngine` decides; requests are delivered one at a
        time in a seeded shuffled order (slow nodes last) on a logical clock that jumps to
        the engine's next wake-up when nothing is in flight (a "slow" quorum: probe)."""
        engine = QuorumEngine(
            [NodeId(t) for t in targets],
            label=kind,
            enough=enough,
            accept=accept,
            initial=initial,
            probe_after=probe_after,
            resend_after=math.inf,
            timeout=math.inf if timeout is None else timeout,
            now=0.0,
        )
        now = 0.0
        pending: list[NodeId] = []
        step = engine.start(now)
        while step.verdict is Verdict.WAIT:
            probed = list(step.probe)
            self.cluster.rng.shuffle(probed)
            pending.extend(probed)
            pending.sort(key=lambda s: s in self.cluster.slow)  # slow nodes answer last
            if not pending:
                now = engine.wake_at()
                step = engine.on_tick(now)
                continue
            node = pending.pop(0)
            await trio.lowlevel.checkpoint()
            self.sent += 1
            try:
                reply = self.cluster.handle(node, self.pid, kind, payload)
            except TransportError as e:
                step = engine.on_failure(node, str(e), now)
                continue
            except RemoteError as e:  # recorded as the endpoint does (net/errors.py)
                step = engine.on_failure(node, f"refused: {e}", now)
                continue
            step = engine.on_reply(node, reply, now)
        if step.verdict is Verdict.ENOUGH:
            # Requests already sent still arrive (the transport lets stragglers finish in
            # the background); their replies go unread.
            for late in pending:
                with contextlib.suppress(TransportError, RemoteError):
                    self.sent += 1
                    self.cluster.handle(late, self.pid, kind, payload)
            return engine.result
        raise QuorumUnavailable(step.reason, engine.result)


# Histories and the serializability checker ------------------------------------------------


@dataclass
class Op:
    """One recorded operation: objects, method, argument, result, real-time interval."""

    client: int
    objects: tuple[int, ...]
    method: str
    arg: Any
    start: float
    end: float | None = None  # None: did not return (crashed / unknown outcome)
    ok: bool = False
    result: Any = None
    refused: str | None = None


@dataclass
class Recorder:
    """Collects :class:`Op` records; ``clock`` gives real time (a counter by default)."""

    ops: list[Op] = field(default_factory=list)
    clock: Callable[[], float] | None = None
    _tick: int = 0
    _waiters: list = field(default_factory=list)

    async def wait_completed(self, k: int) -> None:
        """Return once ``k`` recorded operations have completed."""
        if sum(o.end is not None for o in self.ops) < k:
            ev = trio.Event()
            self._waiters.append((k, ev))
            await ev.wait()

    def history(self) -> str:
        """The recorded operations as lines in start order, times relative to the first: the
        message of a failed serializability check, so a rare failure names its history."""
        if not self.ops:
            return "(no operations)"
        t0 = min(o.start for o in self.ops)
        lines = []
        for o in sorted(self.ops, key=lambda o: o.start):
            end = "-" if o.end is None else f"{o.end - t0:.4f}"
            what = o.result if o.ok else f"refused {o.refused}" if o.end is not None else "?"
            lines.append(
                f"{o.client} {o.method}{o.objects} arg={o.arg!r} {o.start - t0:.4f}-{end} {what!r}"
            )
        return "\n".join(lines)

    def now(self) -> float:
        if self.clock is not None:
            return self.clock()
        self._tick += 1
        return float(self._tick)

    async def run(self, client: Any, objects: Any, method: str, arg: Any, query: bool) -> Any:
        objs = (objects,) if isinstance(objects, int) else tuple(sorted(objects))
        op = Op(client.client_id, objs, method, arg, self.now())
        self.ops.append(op)
        try:
            if query:
                op.result = await client.query(objs, method, arg)
            else:
                op.result = await client.update(objs, method, arg)
            op.ok = True
        except MethodRefused as e:
            op.refused = e.code
        op.end = self.now()
        done = sum(o.end is not None for o in self.ops)
        for k, ev in self._waiters:
            if done >= k:
                ev.set()
        return op.result


def check_serializable(
    ops: Sequence[Op], reg: Registry | None = None, limit: int = 2_000_000
) -> bool:
    """Whether some total order of ``ops`` respects real time and the objects' semantics.

    Completed operations must all appear with their recorded results (refusals included:
    a refused update changes nothing and must have been refused in that state);
    operations that never returned may appear (with any result) or not.  Memoised DFS over
    (set of placed operations, object states), as in Wing and Gong's checker.
    """
    reg = reg or registry()
    done = [o for o in ops if o.end is not None]
    pending = [o for o in ops if o.end is None]
    allops = done + pending
    must = (1 << len(done)) - 1
    seen: set[tuple[int, bytes]] = set()
    budget = [limit]

    def apply(o: Op, states: dict[int, Any]) -> tuple[bool, dict[int, Any] | None]:
        sub = {oid: states.get(oid) for oid in o.objects}
        m = reg.get(o.method)
        try:
            if m is not None and m.cls.value == "query":
                ans = reg.query(o.method, sub, o.arg)
                return (o.end is None or (o.ok and canonical(ans) == canonical(o.result))), None
            new, ans = reg.update(o.method, sub, o.arg)
        except MethodRefused as e:
            return (o.end is None or o.refused == e.code), None
        if o.end is not None and not (o.ok and canonical(ans) == canonical(o.result)):
            return False, None
        out = dict(states)
        from bftfs.qu.canon import unpack

        for oid, raw in new.items():
            out[oid] = unpack(raw)
        return True, out

    def dfs(placed: int, states: dict[int, Any]) -> bool:
        if placed & must == must:
            return True
        key = (placed, canonical(sorted(states.items())))
        if key in seen:
            return False
        seen.add(key)
        budget[0] -= 1
        if budget[0] < 0:
            raise RuntimeError("serializability search too large")
        # Earliest end among unplaced completed ops bounds which ops may go next.
        horizon = min(
            (o.end for i, o in enumerate(allops) if not placed >> i & 1 and o.end is not None),
            default=float("inf"),
        )
        for i, o in enumerate(allops):
            if placed >> i & 1 or o.start > horizon:
                continue
            ok, new = apply(o, states)
            if ok and dfs(placed | 1 << i, new if new is not None else states):
                return True
        return False

    return dfs(0, {})


def send(
    cluster: MemCluster, servers: Sequence[int], req: Request, sender: int | None = None
) -> dict[int, Reply]:
    """Deliver ``req`` to ``servers`` one by one (a scripted client); parsed replies."""
    sender = req.client if sender is None else sender
    out = {}
    for s in servers:
        raw = cluster.handle(s, sender, KIND_REQUEST, req.wire())
        out[s] = Reply.from_wire(raw, req.objects, cluster.th.n)
    return out
