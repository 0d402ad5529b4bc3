"""Q/U on a storage node: the handlers that run :mod:`bftfs.qu.replica` steps.

``register(node)`` wires these request kinds (``bftfs/node/protocols.py`` calls it):

- ``qu.request``: one ``s_request``.  Queries run in a read-only transaction (they never
  write); everything else runs in ``node.store.write``, so the replica history, its
  authenticator, the object versions and the stored answer of one request are committed in
  one LMDB transaction (seed L2512-2514).  The store runs write steps one after another in
  its single writer, which is what the seed's per-object locks "acquired in object-ID order"
  (L2737-2740) achieve: a multi-object request reads and writes all its objects in one
  serialised step, so it can neither deadlock nor half-apply.  A request that needs no
  object sync is answered in the connection's read loop (``fast_request``): a query in its
  read transaction, and on a non-durable store any other request in a write transaction of
  its own (``Store.write_now``), still one at a time; only durable writes and object syncs
  take a task of their own.
- ``qu.batch``: several ``qu.request``, ``qu.history`` and ``qu.fetch`` requests of one
  client in one frame (at most ``MAX_BATCH``), answered item by item in one frame by the
  generic batch handler (``node/batching.py``): each item as if it had come alone, through
  the fault hooks, queries and non-durable updates in the read loop (docs/qu.md).
- ``qu.history``: the node's histories of some objects (read-only).
- ``qu.fetch``: the stored request of a candidate, for inline repair by other clients.
- ``qu.sync``: object sync, host side; only other nodes may ask (L2240-2244).
- ``qu.versions``, ``qu.states``: an object's past (its conditioned-on chain, states by
  timestamp) for history reads by any client (:mod:`bftfs.qu.past`).
- ``qu.latest``: the newest timestamp of each object this node holds, a page at a time, in
  object-id order; only other nodes may ask (what a restarted node's catch-up compares).

When a step needs a conditioned-on version this node lacks, the handler performs **object
sync** (L2599-2607): it asks the host servers named by the OHS (then any other server) for
that version through ``node.endpoint`` and needs b+1 identical answers, so at least one
comes from a benign host; then it re-runs the step with the version.

Every record an update stores is charged to its authenticated sender, in the update's own
transaction (``qu/schema.py``, :mod:`bftfs.accounting`); a client's update whose new
states are larger than those they replace is refused with ``quota`` when its charges here
(block versions and Q/U records together) would pass ``[limits] quota_fraction``
(``replica.OverQuota``; node/limits.py).  Nodes are never refused (catch-up applies
requests as this node itself).  So is, with ``ahead``, a client's update declaring a time
that locks others out until then (a write lease's start, a file's newest block Time:
``Method.clocks``) more than the PASIS write skew (60 s) past this node's clock
(``replica.ClockAhead``): a client cannot lock a file for years (issue 31).

The object types it serves are given by the node (``node/protocols.py``): the file
system's, and the test types only when asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bftfs.ids import PrincipalId, is_node
from bftfs.net.quorum import QuorumUnavailable
from bftfs.node import limits
from bftfs.node.batching import BatchHandler
from bftfs.node.qu_catchup import CatchUp
from bftfs.node.qu_pruner import Pruner
from bftfs.node.snapshots import pinned_moments
from bftfs.qu import past
from bftfs.qu.classify import QUThresholds
from bftfs.qu.messages import (
    BATCHED_KINDS,
    KIND_BATCH,
    KIND_FETCH,
    KIND_HISTORY,
    KIND_LATEST,
    KIND_REQUEST,
    KIND_SYNC,
    MAX_BATCH,
    VERSION,
    MessageError,
    ReplyStatus,
    parse_fetch,
    parse_history_request,
    parse_latest,
    parse_sync,
)
from bftfs.qu.objects import ObjectType, Registry
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.reads import handle_fetch, handle_history, handle_latest, handle_sync
from bftfs.qu.replica import ClockAhead, NeedSync, OverQuota, SyncWant, handle_request
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.serverconfig import ReplicaConfig, Retention
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

#: Object sync gives up after this long (the request then fails and the client retries).
SYNC_TIMEOUT = 2.0


def registry_of(object_types: Iterable[ObjectType]) -> Registry:
    """A registry of ``object_types`` (what this node serves)."""
    reg = Registry()
    for otype in object_types:
        reg.register(otype)
    return reg


def register(
    node: Node,
    *,
    object_types: Iterable[ObjectType],
    retention: Retention | None = None,
    catch_up: bool = True,
) -> None:
    """Register the Q/U handlers with ``node`` for ``object_types``, and start its
    catch-up (``qu_catchup.py``)."""
    from bftfs.net.server import DEFER, HandlerError

    th = QUThresholds.from_config(node.config)
    keyring = node.keyring

    def key_for(s: int) -> bytes:
        k = keyring.key(s)  # type: ignore[arg-type]
        if k is None:
            raise KeyError(f"no key for node {s}")
        return k

    if retention is None:  # the cluster's [retention] (policy.py)
        kept = node.config.retention
        retention = Retention(
            keep_last=kept.keep_versions,
            keep_seconds=kept.keep_seconds,
            forget_seconds=kept.forget_seconds,
            pins=pinned_moments,
        )
    cfg = ReplicaConfig(node.id, th, key_for, registry_of(object_types), retention)
    pruner = Pruner(node, cfg)
    client_quota = limits.quota_bytes(node)

    def quota_of(sender: int) -> int | None:
        return None if is_node(sender) else client_quota

    def refuse(sender: int, res: OverQuota | ClockAhead) -> HandlerError:
        if isinstance(res, ClockAhead):
            node.stats["qu.refused.ahead"] += 1
            return HandlerError(
                "ahead",
                f"client {sender}'s clock is {res.ahead_ns / 1e9:.1f} s ahead of this node's "
                f"(at most {DEFAULT_MAX_AHEAD_NS / 1e9:.0f} s)",
            )
        node.stats["qu.refused.quota"] += 1
        if node.server.admission is not None:
            node.server.admission.note(PrincipalId(sender), "quota_refused")
        return HandlerError(
            "quota",
            f"client {sender} holds {res.used} bytes here; {res.grows} more would pass "
            f"its quota of {res.quota}",
        )

    def accepted(req: Request, res: Reply) -> None:
        if res.status is ReplyStatus.OK and not (req.op is not None and req.op.query):
            pruner.updated(req.objects)

    def parse(payload: Any) -> Request:
        try:
            if isinstance(payload, bytes):  # how clients send it (``Request.packed``)
                return Request.from_bytes(payload, th.n)
            return Request.from_wire(payload, th.n)
        except MessageError as e:
            node.stats["qu.bad_request"] += 1
            raise HandlerError("bad-request", str(e)) from None

    #: Requests ``fast_request`` parsed and handed on (payload id -> (payload, request)):
    #: ``on_request`` takes them from here instead of parsing again (a durable update's
    #: parse was 4% of a node's time).  Bounded: a handed-on request that never arrives
    #: (a Byzantine-profile override) must not pile up.
    parsed: dict[int, tuple[Any, Request]] = {}

    def defer(payload: Any, req: Request) -> Any:
        if len(parsed) >= 1024:
            parsed.clear()
        parsed[id(payload)] = (payload, req)
        return DEFER

    def fast_request(ctx: RequestContext, payload: Any) -> Any:
        """The request in one synchronous step when it needs no object sync and no
        group commit: a query (read transaction), or anything on a non-durable store."""
        req = parse(payload)
        sender = ctx.sender

        now_ns = node.now_ns()

        def step(kv: Any) -> Any:
            return handle_request(
                kv, cfg, sender, req, {}, now_ns, quota_of(sender), DEFAULT_MAX_AHEAD_NS
            )

        if req.op is not None and req.op.query:
            res = node.store.read(step)
        elif node.store.durable:
            return defer(payload, req)
        else:
            res = node.store.write_now(step)  # NeedSync wrote nothing
        if isinstance(res, NeedSync):
            return defer(payload, req)
        if isinstance(res, OverQuota | ClockAhead):
            raise refuse(sender, res)
        node.stats[f"qu.{res.status.value}"] += 1
        accepted(req, res)
        return res.wire()

    async def serve(req: Request, sender: int) -> Reply:
        """One ``s_request`` with object sync as needed (also how catch-up applies a
        request on this node itself)."""
        synced: dict[tuple[int, Timestamp], tuple[bytes | None, bytes]] = {}
        # A node's own requests are its catch-up: client steps go ahead of them (store.py).
        write = functools.partial(node.store.write, background=is_node(sender))
        for _ in range(3):  # a version synced once may be needed again after a race
            now_ns = node.now_ns()
            if req.op is not None and req.op.query:
                res = node.store.read(lambda kv: handle_request(kv, cfg, sender, req, synced))
            else:
                res = await write(
                    functools.partial(
                        handle_request,
                        cfg=cfg,
                        sender=sender,
                        req=req,
                        synced=synced,
                        now_ns=now_ns,
                        quota=quota_of(sender),
                        max_ahead_ns=DEFAULT_MAX_AHEAD_NS,
                    )
                )
            if isinstance(res, OverQuota | ClockAhead):
                raise refuse(sender, res)
            if not isinstance(res, NeedSync):
                node.stats[f"qu.{res.status.value}"] += 1
                accepted(req, res)
                return res
            for want in res.wants:
                fetched = await _sync(node, th, want)
                if fetched is None:
                    node.stats["qu.sync_failed"] += 1
                    return _fail(node, cfg, req, "object sync failed")
                synced[(want.oid, want.lt)] = fetched
            node.stats["qu.synced"] += 1
        return _fail(node, cfg, req, "object sync did not settle")

    async def on_request(ctx: RequestContext, payload: Any) -> Any:
        got = parsed.pop(id(payload), None)
        req = got[1] if got is not None and got[0] is payload else parse(payload)
        return (await serve(req, ctx.sender)).wire()

    def history_now(ctx: RequestContext, payload: Any) -> Any:
        try:
            objects = parse_history_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return node.store.read(lambda kv: handle_history(kv, cfg, objects)).wire()

    async def on_history(ctx: RequestContext, payload: Any) -> Any:
        return history_now(ctx, payload)

    def fetch_now(ctx: RequestContext, payload: Any) -> Any:
        try:
            lt = parse_fetch(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return {"r": node.store.read(lambda kv: handle_fetch(kv, lt))}

    async def on_fetch(ctx: RequestContext, payload: Any) -> Any:
        return fetch_now(ctx, payload)

    async def on_sync(ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            raise HandlerError("forbidden", "object sync is between nodes")
        try:
            oid, lt = parse_sync(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return node.store.read(lambda kv: handle_sync(kv, oid, lt))

    async def on_latest(ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            raise HandlerError("forbidden", "listing objects is between nodes")
        try:
            after, limit = parse_latest(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return node.store.read(lambda kv: handle_latest(kv, after, limit))

    async def on_versions(ctx: RequestContext, payload: Any) -> Any:
        try:
            oid, start, limit = past.parse_versions_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return node.store.read(lambda kv: past.versions_step(kv, oid, start, limit))

    async def on_states(ctx: RequestContext, payload: Any) -> Any:
        try:
            oid, lts = past.parse_states_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return node.store.read(lambda kv: past.states_step(kv, oid, lts))

    node.register(KIND_REQUEST, on_request, fast=fast_request)
    # These only read the store: they never wait, so they run in the read loop.
    node.register(KIND_HISTORY, on_history, inline=True)
    node.register(KIND_FETCH, on_fetch, inline=True)
    node.register(KIND_SYNC, on_sync, inline=True)
    node.register(KIND_LATEST, on_latest, inline=True)
    node.register(past.KIND_VERSIONS, on_versions, inline=True)
    node.register(past.KIND_STATES, on_states, inline=True)
    batched = {KIND_REQUEST: on_request, KIND_HISTORY: on_history, KIND_FETCH: on_fetch}
    assert tuple(batched) == BATCHED_KINDS
    batch = BatchHandler(
        node,
        batched,
        protocol="qu",
        max_items=MAX_BATCH,
        fast={
            KIND_REQUEST: fast_request,
            KIND_HISTORY: history_now,
            KIND_FETCH: fetch_now,
        },
    )
    node.register(KIND_BATCH, batch, fast=batch.fast)
    if catch_up:

        async def catch_up_objects() -> None:
            await CatchUp(node, cfg, serve, pruner.updated).run()

        node.catch_ups["qu"] = catch_up_objects  # run again after a partition (rejoin.py)
        node.spawn(catch_up_objects)
        if pruner.enabled:
            node.spawn(pruner.run)
            node.spawn(pruner.sweep)


def _fail(node: Node, cfg: ReplicaConfig, req: Request, why: str) -> Reply:
    rep = node.store.read(lambda kv: handle_history(kv, cfg, req.objects))
    return type(rep)(ReplyStatus.FAIL, hist=rep.hist, why=why)


async def _sync(node: Node, th: QUThresholds, want: SyncWant) -> tuple[bytes | None, bytes] | None:
    """Fetch ``want`` from b+1 hosts that agree byte for byte (L2599-2604; the rules are
    :mod:`bftfs.qu.objsync`)."""
    targets = [PrincipalId(s) for s in sync_order(int(node.id), want.hosts, th.n)]
    body = {"v": VERSION, "oid": want.oid, "lt": want.lt.encode()}
    votes = SyncVotes(th.b)

    def accept(_node: int, raw: Any) -> bool:
        # Not yet b+1 in agreement: count it as "invalid" so the transport probes the next
        # host at once instead of after the probe interval.
        return votes.add(raw)

    try:
        await node.endpoint.quorum_call(
            targets,
            KIND_SYNC,
            body,
            enough=lambda _valid: votes.decided(),
            accept=accept,
            initial=th.b + 1,
            probe_after=0.05,
            timeout=SYNC_TIMEOUT,
        )
    except QuorumUnavailable:
        return None
    return votes.result()
