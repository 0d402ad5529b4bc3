"""Shared helpers for the Q/U tests (imported explicitly, not a conftest).

- :class:`MemCluster`: n replicas over :class:`~bftfs.kv.MemoryKV` with deterministic
  pairwise keys, driven synchronously (``handle``) or through :class:`MemEndpoint`, an
  in-memory stand-in for ``bftfs.net.endpoint.Endpoint`` (``call``/``quorum_call``) that passes
  every message through msgpack as the wire does.  No network, no clock: tier 1.
- Byzantine server behaviours as handler wrappers (also used on the real cluster).
- :class:`Recorder` and :func:`check_serializable`: a Wing-Gong style search for a
  sequential order of recorded operations that respects real time and the objects'
  sequential semantics (strict serializability; linearizability for single objects).
"""

from __future__ import annotations

import contextlib
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
from bftfs.net.quorum import QuorumResult, QuorumUnavailable
from bftfs.qu.canon import canonical
from bftfs.qu.classify import Thresholds
from bftfs.qu.history import OHSEntry, make_rh
from bftfs.qu.messages import (
    KIND_FETCH,
    KIND_HISTORY,
    KIND_REQUEST,
    Reply,
    Request,
    parse_fetch,
    parse_history_request,
    parse_sync_reply,
)
from bftfs.qu.objects import Refused, Registry
from bftfs.qu.replica import (
    NeedSync,
    ReplicaConfig,
    Retention,
    handle_fetch,
    handle_history,
    handle_request,
    handle_sync,
)
from bftfs.qu.testobjects import registry
from bftfs.qu.timestamp import Candidate, Timestamp


def wire(value: Any) -> Any:
    """``value`` after a trip through the transport's msgpack encoding."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def keyrings(n: int, clients: int, seed: int = 0) -> tuple[list[KeyRing], list[KeyRing]]:
    """Deterministic key rings for ``n`` nodes and some clients."""
    rng = random.Random(seed)
    nodes = [Identity(NodeId(i), rng.randbytes(32)) for i in range(n)]
    cls = [Identity(client_id(k), rng.randbytes(32)) for k in range(clients)]
    pubs = {i.pid: i.public for i in nodes + cls}
    return [KeyRing(i, pubs) for i in nodes], [KeyRing(c, pubs) for c in cls]


#: A Byzantine wrapper: ``(server, sender, kind, payload, honest) -> reply payload``.
Wrapper = Callable[[int, int, str, Any, Callable[[], Any]], Any]


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
        self.th = Thresholds.minimal(t, b)
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
        self.byzantine: dict[int, Wrapper] = {}
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

        wrap = self.byzantine.get(server)
        if wrap is not None and getattr(wrap, "with_keys", False):
            # The strongest forgery: signed with the Byzantine server's own keys.
            key_for = self.cfgs[server].key_for
            out = wrap(server, sender, kind, payload, honest, key_for, self.th.n)
        elif wrap is not None:
            out = wrap(server, sender, kind, payload, honest)
        else:
            out = honest()
        return wire(out)

    def _honest(self, server: int, sender: int, kind: str, payload: Any) -> Any:
        kv, cfg = self.kvs[server], self.cfgs[server]
        if kind == KIND_REQUEST:
            self.requests += 1
            if isinstance(payload, bytes):  # as bftfs.node.qu_server parses what clients send
                req = Request.from_bytes(payload, self.th.n)
            else:
                req = Request.from_wire(payload, self.th.n)
            synced: dict = {}
            for _ in range(3):
                res = handle_request(kv, cfg, sender, req, synced)
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
            return {"r": handle_fetch(kv, parse_fetch(payload))}
        raise RemoteError("unknown_kind", kind)

    def sync(
        self, server: int, oid: int, lt: Timestamp, hosts: Sequence[int]
    ) -> tuple[bytes | None, bytes] | None:
        """Object sync as ``bftfs.node.qu_server`` does it: b+1 identical answers."""
        self.syncs += 1
        votes: dict[bytes, list] = {}
        order = [h for h in hosts if h != server] + [
            s for s in range(self.th.n) if s != server and s not in hosts
        ]
        for h in order:
            if h in self.down:
                continue
            wrap = self.byzantine.get(h)

            def honest(h: int = h) -> Any:
                return handle_sync(self.kvs[h], oid, lt)

            raw = (
                wrap(h, server, "qu.sync", {"oid": oid, "lt": lt.encode()}, honest)
                if wrap
                else honest()
            )
            got = parse_sync_reply(wire(raw))
            if got is None:
                continue
            k = canonical(list(got))
            votes.setdefault(k, []).append(got)
            if len(votes[k]) >= self.th.b + 1:
                return got
        return None

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
    ) -> QuorumResult:
        targets = list(targets)
        result = QuorumResult()
        first = targets[: initial or len(targets)]
        rest = targets[len(first) :]
        queue = list(first)
        self.cluster.rng.shuffle(queue)
        queue.sort(key=lambda s: s in self.cluster.slow)  # slow nodes answer last
        while queue:
            node = queue.pop(0)
            await trio.lowlevel.checkpoint()
            try:
                self.sent += 1
                reply = self.cluster.handle(node, self.pid, kind, payload)
            except (TransportError, RemoteError) as e:
                result.errors[node] = str(e)
                if rest:
                    queue.append(rest.pop(0))
                continue
            if accept is None or accept(node, reply):
                result.replies[node] = reply
                if enough(result.replies):
                    # Requests already sent still arrive (the transport lets stragglers
                    # finish in the background); their replies go unread.
                    for late in queue:
                        with contextlib.suppress(TransportError, RemoteError):
                            self.sent += 1
                            self.cluster.handle(late, self.pid, kind, payload)
                    return result
            else:
                result.errors[node] = "invalid reply"
                if rest:
                    queue.append(rest.pop(0))
            if not queue and rest:
                queue.append(rest.pop(0))  # "slow": probe one more
        raise QuorumUnavailable(f"{kind}: not enough", result)


# Byzantine server behaviours --------------------------------------------------------------


def forge_higher(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Answer honestly, but claim a candidate far in the future in every history (the
    server authenticates its own forged history, so the authenticator is valid)."""
    rep = honest()
    if kind != KIND_REQUEST or not isinstance(rep, dict):
        return rep
    return _with_forged(rep, barrier=False)


def endless_barriers(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Reject everything with a forged barrier newer than anything the client has seen."""
    rep = honest()
    if kind != KIND_REQUEST or not isinstance(rep, dict):
        return rep
    rep = _with_forged(rep, barrier=True)
    rep["st"] = "fail"
    return rep


def _with_forged(rep: dict, barrier: bool) -> dict:
    from bftfs.qu.history import rh_from_wire, rh_wire

    hist = []
    for rh_raw, auth in rep["h"]:
        rh = rh_from_wire(rh_raw)
        top = rh[0]
        t = top.lt.time + 1000
        fake = Candidate(Timestamp(t, barrier, 999, bytes([7]) * 32), top.lt, top.objects or (0,))
        hist.append([rh_wire(make_rh(list(rh) + [fake])), auth])  # stale authenticator
    rep = dict(rep)
    rep["h"] = hist
    return rep


def forge_max_time(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """Claim, in every history it returns, a candidate at the largest logical time, under a
    *valid* authenticator (it holds its own keys): honest servers classify with it and
    refuse "logical time exhausted" (issue 18, defect 2)."""
    from bftfs.qu.history import make_authenticator, rh_from_wire, rh_wire
    from bftfs.qu.timestamp import MAX_TIME

    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict) or "h" not in rep:
        return rep
    is_request = kind == KIND_REQUEST
    objects = Request.from_wire(payload, n).objects if is_request else tuple(payload["o"])
    hist = []
    for oid, (rh_raw, _) in zip(objects, rep["h"], strict=True):
        rh = rh_from_wire(rh_raw)
        top = rh[0]
        fake = Candidate(Timestamp(MAX_TIME, False, 999, bytes([7]) * 32), top.lt, (oid,))
        forged = make_rh([*rh, fake])
        hist.append([rh_wire(forged), list(make_authenticator(oid, forged, n, key_for))])
    rep = dict(rep)
    rep["h"] = hist
    return rep


forge_max_time.with_keys = True  # type: ignore[attr-defined]


def bad_authenticator(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Corrupt every MAC of this server's authenticators (other servers must cull)."""
    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict):
        return rep
    rep = dict(rep)
    rep["h"] = [[rh, [bytes(16) for _ in auth] if auth else auth] for rh, auth in rep["h"]]
    return rep


def corrupt_own_mac(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Corrupt only this server's own entry of the authenticators it returns: the others
    keep its history, it culls its own when presented and so sets up another candidate
    (issue 18, defect 3)."""
    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict):
        return rep
    rep = dict(rep)
    rep["h"] = [
        [rh, [bytes(16) if i == server else m for i, m in enumerate(auth)] if auth else auth]
        for rh, auth in rep["h"]
    ]
    return rep


def wrong_answer(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Claim success with a made-up answer."""
    rep = honest()
    if kind == KIND_REQUEST and isinstance(rep, dict):
        rep = dict(rep)
        rep["a"] = 424242
    return rep


def wrong_sync(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Serve a made-up object state to object sync."""
    if kind == "qu.sync":
        return {"s": canonical(31337), "ap": canonical({})}
    return honest()


def reject_everything(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Refuse every request."""
    raise RemoteError("nope", "byzantine")


BYZANTINE = {
    "forge_higher": forge_higher,
    "forge_max_time": forge_max_time,
    "endless_barriers": endless_barriers,
    "bad_authenticator": bad_authenticator,
    "corrupt_own_mac": corrupt_own_mac,
    "wrong_answer": wrong_answer,
    "wrong_sync": wrong_sync,
    "reject_everything": reject_everything,
}


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
        except Refused as e:
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
        except Refused as e:
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


def cluster_wrapper(fn: Wrapper, server: int, cluster: Any = None) -> Callable:
    """Adapt a :data:`Wrapper` to ``FaultInjector.byzantine`` on the in-process cluster
    (one that forges with its own keys reads them from the running node)."""
    from bftfs.net.server import HandlerError

    async def wrapper(ctx: Any, payload: Any, honest: Callable) -> Any:
        kind = wrapper.kind  # type: ignore[attr-defined]
        result = None
        if fn is not reject_everything:
            result = await honest(ctx, payload)
        try:
            if getattr(fn, "with_keys", False):
                ring = cluster.nodes[server].keyring
                return fn(
                    server,
                    int(ctx.sender),
                    kind,
                    payload,
                    lambda: result,
                    ring.key,
                    cluster.config.n,
                )
            return fn(server, int(ctx.sender), kind, payload, lambda: result)
        except RemoteError as e:
            raise HandlerError(e.code, e.message) from None

    return wrapper


def make_byzantine(cluster: Any, server: int, behaviour: str) -> None:
    """Make node ``server`` of an in-process cluster behave as ``behaviour``."""
    fn = BYZANTINE[behaviour]
    for kind in (KIND_REQUEST, KIND_HISTORY, KIND_FETCH, "qu.sync"):
        w = cluster_wrapper(fn, server, cluster)
        w.kind = kind  # type: ignore[attr-defined]
        cluster.faults[server].byzantine(kind, w)
