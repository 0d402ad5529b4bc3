"""Q/U on a storage node: the handlers that run :mod:`bftfs.qu.replica` steps.

:class:`QUServer` answers these request kinds, one method each; :func:`register` builds
it from a node's parts, registers its methods and starts the background work
(``bftfs/node/protocols.py`` calls it):

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
  timestamp) for history reads by any client (:mod:`bftfs.qu.past`); ``qu.chains``, the
  same for many objects at once with states, and ``qu.starts``, many objects' histories for
  where their walks start (:mod:`bftfs.qu.pastmany`).
- ``qu.latest``: the newest timestamp of each object this node holds, a page at a time, in
  object-id order; only other nodes may ask (what a restarted node's catch-up compares),
  and clients of a frozen node (the background mover, ``fs/generations/mover.py``) or of a
  node whose layout moves partitions (the partition mover, ``node/moves.py``).

When a step needs a conditioned-on version this node lacks, the handler performs **object
sync** (L2599-2607, :mod:`bftfs.node.qu_objsync`): it asks the host servers named by the
OHS (then any other server) for that version through the node's endpoint and needs b+1
identical answers, so at least one comes from a benign host; then it re-runs the step with
the version.  A version another
request waiting here is about to make is waited for instead, and concurrent wants of one
version share one sync (:mod:`bftfs.node.qu_inflight`): a node that fell behind during a
burst syncs each version it lacks once, not every update of the burst.

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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.fsobjects.txnsign import sign
from bftfs.ids import NodeId, PrincipalId, is_node
from bftfs.net.admission import Admission
from bftfs.net.endpoint import Endpoint
from bftfs.net.server import DEFER, HandlerError
from bftfs.node import limits, qu_space
from bftfs.node.batching import BatchHandler
from bftfs.node.method_costs import MethodCosts
from bftfs.node.qu_catchup import CatchUp
from bftfs.node.qu_inflight import Held, InFlight, Key
from bftfs.node.qu_objsync import ObjectSync, fetch_proofs
from bftfs.node.qu_pruner import Pruner
from bftfs.node.snapshots import pinned_moments
from bftfs.node.store import Store
from bftfs.policy import RetentionPolicy
from bftfs.qu import past, pastmany
from bftfs.qu.classify import QUThresholds
from bftfs.qu.clocks import ClockAhead
from bftfs.qu.links import NeedProofs
from bftfs.qu.messages import (
    BATCHED_KINDS,
    KIND_BATCH,
    KIND_FETCH,
    KIND_HISTORY,
    KIND_LATEST,
    KIND_REQUEST,
    KIND_SYNC,
    MAX_BATCH,
    MessageError,
    ReplyStatus,
    parse_fetch_chain,
    parse_fetch_more,
    parse_history_request,
    parse_latest,
    parse_sync,
)
from bftfs.qu.objects import ObjectType, Registry
from bftfs.qu.reads import fetch_reply, handle_history, handle_latest, handle_sync
from bftfs.qu.replica import NeedSync, OverQuota, handle_request
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.serverconfig import ReplicaConfig, Retention
from bftfs.qu.timestamp import Timestamp
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

#: Requests ``fast_request`` parsed and handed on at most (see ``QUServer._parsed``).
_MAX_PARSED = 1024
#: Queries whose answers ``on_accepted`` is told too: a reader's request to publish, which
#: the node pushes to the holders it names (``node/recalls.py``) and which makes no version.
TOLD_QUERIES = frozenset({"fs.pubreq"})
#: The quota a client's update is checked against while the store is short of room
#: (``_quota_of``): none, so every update that grows the states is refused ``full``.
_NO_ROOM = 0


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
) -> QUServer:
    """Register the Q/U handlers with ``node`` for ``object_types``, and start its
    catch-up (``qu_catchup.py``) and pruner (``qu_pruner.py``); the server.  A retired node
    (``node/generation.py``) runs neither: it serves nothing, and its peers are retired too."""
    catch_up = catch_up and not node.views.generation.retired
    th = QUThresholds.from_config(node.config)
    keyring = node.keyring

    def key_for(s: int) -> bytes:
        k = keyring.key(s)  # type: ignore[arg-type]
        if k is None:
            raise KeyError(f"no key for node {s}")
        return k

    if retention is None:  # the cluster's [retention] (policy.py)
        retention = replica_retention(node.config.retention)

    def ended_key_for(s: int) -> bytes | None:
        ended = node.server.refused.get(PrincipalId(s)) if is_node(PrincipalId(s)) else None
        return None if ended is None else ended[0]

    # A node of a cluster of groups signs the cross-group commit's replies by its
    # long-term key (fsobjects/txnsign.py): the certificates other groups check.
    signer = None if node.placement is None else functools.partial(sign, node.keyring.me.private)
    cfg = ReplicaConfig(
        node.id, th, key_for, registry_of(object_types), retention, ended_key_for, signer
    )
    pruner = Pruner(node, cfg)
    server = QUServer(
        replica=cfg,
        store=node.store,
        endpoint=node.endpoint,
        stats=node.stats,
        admission=node.server.admission,
        clock_ns=node.now_ns,
        client_quota=limits.quota_bytes(node),
        on_update=pruner.updated,
        on_accepted=node.recalls.accepted,
        costs=MethodCosts(lambda name: cfg.registry.get(name) is not None),
    )
    node.method_costs = server.costs
    # Frozen for a request: the node's generation is, or one of its objects moves out of
    # the node's group (node/moves.py).
    server.frozen = lambda oids: node.views.generation.frozen or node.moves.objects_out(oids)
    server.listing = lambda: node.views.generation.frozen or node.moves.moving
    server.register_with(node)
    if catch_up:

        async def catch_up_objects() -> None:
            await CatchUp(node, cfg, server.serve, pruner.updated).run()

        node.catch_ups["qu"] = catch_up_objects  # run again after a partition (rejoin.py)
        node.spawn(catch_up_objects)
        node.spawn(qu_space.run, node)  # what Q/U history takes, for bftfs status
        if pruner.enabled:
            node.spawn(pruner.run)
            node.spawn(pruner.sweep)
            if pruner.request_delay_ns is not None:
                node.spawn(pruner.drop_requests)
                node.spawn(pruner.save_looks)
    return server


class QUServer:
    """One node's Q/U handlers: each ``on_*`` method answers one request kind, each
    ``*_now`` its synchronous twin for the read loop (``fast`` handlers)."""

    def __init__(
        self,
        *,
        replica: ReplicaConfig,
        store: Store,
        endpoint: Endpoint,
        stats: Counter[str],
        admission: Admission | None,
        clock_ns: Callable[[], int],
        client_quota: int,
        on_update: Callable[[Iterable[int]], None],
        costs: MethodCosts,
        on_accepted: Callable[[Request, Reply], None] | None = None,
    ) -> None:
        """
        Args:
            replica: this node's replica configuration (its id, thresholds, keys,
                object types and retention).
            store: the node's store; steps run in its transactions.
            endpoint: the node's client of the others (object sync).
            stats: the node's counters (``qu.*``).
            admission: the node's per-client admission, told of quota refusals.
            clock_ns: the node's clock (a request's time is judged against it).
            client_quota: bytes one client may keep here (``[limits]``).
            on_update: told the objects an accepted update changed (the pruner).
            on_accepted: told every update this node took and its reply (the lease
                recalls it pushes, ``node/recalls.py``), and every query of
                :data:`TOLD_QUERIES` it answered.
            costs: what each method costs here (``node/method_costs.py``).
        """
        self.replica = replica
        self.th: QUThresholds = replica.th
        self.node_id = NodeId(int(replica.me))
        self.store = store
        self.endpoint = endpoint
        self.stats = stats
        self.admission = admission
        self.clock_ns = clock_ns
        self.client_quota = client_quota
        self.on_update = on_update
        self.on_accepted = on_accepted
        self.costs = costs
        #: Requests ``fast_request`` parsed and handed on (payload id -> (payload,
        #: request)): ``on_request`` takes them from here instead of parsing again (a
        #: durable update's parse was 4% of a node's time), with the candidates it
        #: claimed.  Bounded: a handed-on request that never arrives (a Byzantine-profile
        #: override) must not pile up.
        self._parsed: dict[int, tuple[Any, Request, tuple[Key, ...]]] = {}
        #: Syncs in flight and candidates being made, shared by the requests waiting here.
        self.inflight = InFlight(stats)
        #: Object sync, the asking side (``node/qu_objsync.py``).
        self.objsync = ObjectSync(self.node_id, self.th, endpoint, self.inflight, stats)
        #: Whether this node is frozen for a request naming these objects (its
        #: generation frozen, ``node/generation.py``, or one of them moving out of its
        #: group, ``node/moves.py``): clients' own updates but ``fs.release``, and their
        #: queries but the move's reads, are refused ``moved``.
        self.frozen: Callable[[Iterable[int]], bool] = lambda oids: False
        #: Whether clients may list this node's objects (``qu.latest``): a mover walks them.
        self.listing: Callable[[], bool] = lambda: False

    def register_with(self, node: Node) -> None:
        """Route the ``qu.*`` kinds of ``node`` to this server's methods."""
        node.register(KIND_REQUEST, self.on_request, fast=self.fast_request)
        # These only read the store: they never wait, so they run in the read loop.
        node.register(KIND_HISTORY, self.on_history, inline=True)
        node.register(KIND_FETCH, self.on_fetch, inline=True)
        node.register(KIND_SYNC, self.on_sync, inline=True)
        node.register(KIND_LATEST, self.on_latest, inline=True)
        node.register(past.KIND_VERSIONS, self.on_versions, inline=True)
        node.register(past.KIND_STATES, self.on_states, inline=True)
        node.register(pastmany.KIND_CHAINS, self.on_chains, inline=True)
        node.register(pastmany.KIND_STARTS, self.on_starts, inline=True)
        batched = {
            KIND_REQUEST: self.on_request,
            KIND_HISTORY: self.on_history,
            KIND_FETCH: self.on_fetch,
        }
        assert tuple(batched) == BATCHED_KINDS
        batch = BatchHandler(
            node,
            batched,
            protocol="qu",
            max_items=MAX_BATCH,
            fast={
                KIND_REQUEST: self.fast_request,
                KIND_HISTORY: self.history_now,
                KIND_FETCH: self.fetch_now,
            },
        )
        node.register(KIND_BATCH, batch, fast=batch.fast)

    def _moved(self, sender: int, objects: Iterable[int]) -> bool:
        """Whether ``sender``'s own operations on ``objects`` are refused ``moved`` (a
        client, while frozen for them)."""
        return not is_node(sender) and self.frozen(objects)

    def _quota_of(self, sender: int) -> int | None:
        """What ``sender``'s updates here may grow its charges to: a node's, anything; a
        client's, its quota, or nothing at all while the store is short of room
        (``Store.short_for_growth``: the last room is for removals, which keep or shrink
        the states and so always pass).  A refusal for that is ``full`` (:meth:`_refuse`)."""
        if is_node(sender):
            return None
        return _NO_ROOM if self.store.short_for_growth() else self.client_quota

    def _refuse(self, sender: int, res: OverQuota | ClockAhead) -> HandlerError:
        if isinstance(res, ClockAhead):
            self.stats[f"qu.refused.{res.code}"] += 1
            allowed = res.skew_ns or DEFAULT_MAX_AHEAD_NS
            way = "ahead of" if res.ahead_ns > 0 else "behind"
            return HandlerError(
                res.code,
                f"client {sender}'s clock is {abs(res.ahead_ns) / 1e9:.1f} s {way} this "
                f"node's (at most {allowed / 1e9:.0f} s)",
            )
        if res.quota == _NO_ROOM:
            self.stats["qu.refused.full"] += 1
            return HandlerError(
                "full",
                f"this node's store is nearly full: an update growing it by {res.grows} "
                "bytes waits for room (removals pass)",
            )
        self.stats["qu.refused.quota"] += 1
        if self.admission is not None:
            self.admission.note(PrincipalId(sender), "quota_refused")
        return HandlerError(
            "quota",
            f"client {sender} holds {res.used} bytes here; {res.grows} more would pass "
            f"its quota of {res.quota}",
        )

    def _accepted(self, req: Request, res: Reply) -> None:
        if res.status is not ReplyStatus.OK or req.op is None:
            return
        if not req.op.query:
            self.on_update(req.objects)
        elif req.op.method not in TOLD_QUERIES:
            return
        if self.on_accepted is not None:
            self.on_accepted(req, res)

    def _parse(self, payload: Any) -> Request:
        try:
            if isinstance(payload, bytes):  # how clients send it (``Request.packed``)
                return Request.from_bytes(payload, self.th.n)
            return Request.from_wire(payload, self.th.n)
        except MessageError as e:
            self.stats["qu.bad_request"] += 1
            raise HandlerError("bad-request", str(e)) from None

    def _defer(self, payload: Any, req: Request, claimed: tuple[Key, ...] = ()) -> Any:
        if len(self._parsed) >= _MAX_PARSED:
            for _p, _r, keys in self._parsed.values():
                self.inflight.release(keys)
            self._parsed.clear()
        self._parsed[id(payload)] = (payload, req, claimed)
        return DEFER

    def fast_request(self, ctx: RequestContext, payload: Any) -> Any:
        """The request in one synchronous step when it needs no object sync and no
        group commit: a query (read transaction), or anything on a non-durable store."""
        req = self._parse(payload)
        start, cpu = time.perf_counter(), time.thread_time()
        sender = ctx.sender
        now_ns = self.clock_ns()
        quota = self._quota_of(sender)

        moved = self._moved(sender, req.objects)

        def step(kv: Any) -> Any:
            return handle_request(
                kv, self.replica, sender, req, {}, now_ns, quota, DEFAULT_MAX_AHEAD_NS, moved
            )

        if req.op is not None and req.op.query:
            res = self.store.read(step)
        elif self.store.durable:
            return self._defer(payload, req)
        else:
            res = self.store.write_now(step)  # NeedSync wrote nothing
        self.costs.stepped(req, time.thread_time() - cpu)
        if isinstance(res, NeedProofs):
            return self._defer(payload, req)
        if isinstance(res, NeedSync):
            # Claimed now, before the read loop takes the client's next update, which may
            # be conditioned on this one's candidate (node/qu_inflight.py).
            lt = None if req.op is not None and req.op.query else res.lt
            claimed = self.inflight.claim(req.objects, lt, trio.current_time())
            return self._defer(payload, req, claimed)
        if isinstance(res, OverQuota | ClockAhead):
            raise self._refuse(sender, res)
        self.stats[f"qu.{res.status.value}"] += 1
        self._accepted(req, res)
        self.costs.answered(req, time.perf_counter() - start)
        return res.wire()

    async def serve(self, req: Request, sender: int, claimed: tuple[Key, ...] = ()) -> Reply:
        """One ``s_request`` with object sync as needed (also how catch-up applies a
        request on this node itself); ``claimed``: the candidates it claimed already
        (``fast_request``), released when it ends."""
        held = Held(claimed)
        start = time.perf_counter()
        try:
            return await self._serve(req, sender, held)
        finally:
            self.inflight.end(held)
            self.costs.answered(req, time.perf_counter() - start)

    async def _serve(self, req: Request, sender: int, held: Held) -> Reply:
        cfg = self.replica
        synced: dict[tuple[int, Timestamp], tuple[bytes | None, bytes]] = {}
        proofs: dict[Timestamp, bytes] | None = None  # fetched for bare links: once
        # A node's own requests are its catch-up: client steps go ahead of them (store.py).
        write = functools.partial(self.store.write, background=is_node(sender))
        # A version synced once may be needed again after a race; waiting for a version
        # this node is making takes one more round.
        for _ in range(4):
            now_ns = self.clock_ns()
            if req.op is not None and req.op.query:
                cpu = time.thread_time()
                res = self.store.read(
                    functools.partial(
                        handle_request,
                        cfg=cfg,
                        sender=sender,
                        req=req,
                        synced=synced,
                        moved=self._moved(sender, req.objects),
                        fetched=proofs,
                    )
                )
                self.costs.stepped(req, time.thread_time() - cpu)
            else:
                step = functools.partial(
                    handle_request,
                    cfg=cfg,
                    sender=sender,
                    req=req,
                    synced=synced,
                    now_ns=now_ns,
                    quota=self._quota_of(sender),
                    max_ahead_ns=DEFAULT_MAX_AHEAD_NS,
                    moved=self._moved(sender, req.objects),
                    fetched=proofs,
                )
                claiming = functools.partial(self._claiming, step, req, held, trio.current_time())
                res = await write(claiming)
            if isinstance(res, OverQuota | ClockAhead):
                raise self._refuse(sender, res)
            if isinstance(res, NeedProofs):
                sync = self.objsync
                got = await fetch_proofs(sync.node_id, sync.th, sync.endpoint, res.links)
                proofs = got.found
                self.stats["qu.proofs_fetched"] += len(proofs)
                self.stats["qu.proof_calls"] += got.calls
                if self.admission is not None and self.admission.limited(PrincipalId(sender)):
                    # The calls were the sender's work: they come out of its request rate.
                    self.admission.charge(PrincipalId(sender), got.calls)
                continue
            if not isinstance(res, NeedSync):
                self.stats[f"qu.{res.status.value}"] += 1
                self._accepted(req, res)
                return res
            # Versions another request here is making: the ones wanted, and this very
            # candidate when a copy of this request (a resend) is making it already.
            made = [(w.oid, w.lt) for w in res.wants]
            if res.lt is not None:
                made += [k for k in ((o, res.lt) for o in req.objects) if k not in held.keys]
            if await self.inflight.wait_made(made):
                continue  # made here meanwhile (or its maker failed): step again
            fetched = await self.objsync.fetch_all(res.wants)
            if fetched is None:
                self.stats["qu.sync_failed"] += 1
                return self._fail(req, "object sync failed")
            synced.update(fetched)
            self.stats["qu.synced"] += 1
        return self._fail(req, "object sync did not settle")

    def _claiming(
        self, step: Callable[[Any], Any], req: Request, held: Held, now: float, kv: Any
    ) -> Any:
        """``step(kv)``, claiming the candidate of an update that needs a sync in the
        step itself: the store runs the steps of one batch in order, so the next update,
        conditioned on this one, finds the claim however their tasks resume.  (The step
        may run after its request was cancelled: ``claim_for`` then claims nothing.)"""
        cpu = time.thread_time()
        res = step(kv)
        self.costs.stepped(req, time.thread_time() - cpu)
        if isinstance(res, NeedSync):
            self.inflight.claim_for(held, req.objects, res.lt, now)
        return res

    async def on_request(self, ctx: RequestContext, payload: Any) -> Any:
        got = self._parsed.pop(id(payload), None)
        if got is not None and got[0] is payload:
            return (await self.serve(got[1], ctx.sender, got[2])).wire()
        if got is not None:
            self.inflight.release(got[2])
        return (await self.serve(self._parse(payload), ctx.sender)).wire()

    def history_now(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            objects = parse_history_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: handle_history(kv, self.replica, objects)).wire()

    async def on_history(self, ctx: RequestContext, payload: Any) -> Any:
        return self.history_now(ctx, payload)

    def fetch_now(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            parse_fetch_chain(payload)
            parse_fetch_more(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: fetch_reply(kv, payload))

    async def on_fetch(self, ctx: RequestContext, payload: Any) -> Any:
        return self.fetch_now(ctx, payload)

    async def on_sync(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            raise HandlerError("forbidden", "object sync is between nodes")
        try:
            oid, lt = parse_sync(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: handle_sync(kv, oid, lt))

    async def on_latest(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender) and not self.listing():
            # A frozen node lists its objects to clients too: the background mover walks
            # every object of the old generation (fs/generations/mover.py), the partition
            # mover every group's (node/moves.py).  The ids are all it learns.
            raise HandlerError("forbidden", "listing objects is between nodes")
        try:
            after, limit = parse_latest(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: handle_latest(kv, after, limit))

    async def on_versions(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            oid, start, limit = past.parse_versions_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: past.versions_step(kv, oid, start, limit))

    async def on_states(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            oid, lts = past.parse_states_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: past.states_step(kv, oid, lts))

    async def on_chains(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            ask = pastmany.parse_chains_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: pastmany.chains_step(kv, ask))

    async def on_starts(self, ctx: RequestContext, payload: Any) -> Any:
        try:
            oids = pastmany.parse_starts_request(payload)
        except MessageError as e:
            raise HandlerError("bad-request", str(e)) from None
        return self.store.read(lambda kv: pastmany.starts_step(kv, oids))

    def _fail(self, req: Request, why: str) -> Reply:
        rep = self.store.read(lambda kv: handle_history(kv, self.replica, req.objects))
        return type(rep)(ReplyStatus.FAIL, hist=rep.hist, why=why)


def replica_retention(kept: RetentionPolicy) -> Retention:
    """What a node's Q/U replicas keep under the cluster's ``[retention]``: the newest
    ``keep_versions``, versions up to history's horizon (``horizon_seconds``) thinned
    inside it by the schedule (``qu.retention.thin_step``, run by the pruner), the
    snapshots' moments, and a removed object's tombstone ``forget_seconds`` beyond the
    horizon; a version's stored request only ``keep_seconds``
    (``Retention.request_seconds``)."""
    return Retention(
        keep_last=kept.keep_versions,
        keep_seconds=kept.horizon_seconds,
        forget_seconds=kept.forget_seconds,
        pins=pinned_moments,
        request_seconds=kept.keep_seconds,
        schedule=kept.schedule(),
    )
