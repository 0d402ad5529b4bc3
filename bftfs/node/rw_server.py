"""The PASIS storage-node steps (replica.py) as a node's request handlers: :class:`RWServer`,
one method per kind; :func:`register` builds it from a node's parts and registers it.

Kinds: ``rw.time`` (TIME_REQUEST), ``rw.write`` (WRITE), ``rw.read_latest`` (READ_LATEST),
``rw.read_prev`` (READ_PREV) and ``rw.list`` (the blocks hosted, for another node's catch-up;
only nodes may ask); formats in messages.py.  ``rw.batch`` carries several of those
at once (``rw/batch.py``), answered by the node's generic batch handler
(``node/batching.py``).

Reads run in a read-only transaction on the event loop (MVCC, they never wait for a
commit); writes are checked first (hashing a fragment, outside any transaction) and then
executed through the store's group-committing ``write``, so the acknowledgement is durable
when the config says so.

At start-up :func:`register` also spawns the catch-up task (catchup.py): a node that was down
fetches its fragments of the blocks written meanwhile, in the background.

A malformed request is refused with ``malformed``; a write that fails validation with the
replica's code (``bad-verifier``, ``bad-fragment``, ``too-far-ahead``...); a client's new
non-empty version beyond its quota (``[limits]``, node/limits.py) with ``quota``.  Refusals
are counted in the node's ``stats`` under ``rw.refused.<code>``.  A write is charged, in the
transaction that stores it (rw/quota.py), to the writer its timestamp names: a client's own
write is sent by that writer (the frame authenticates it); a *repair* (the timestamp names
another writer: a reader's or a node's write-back, a scrub's rewrite) is taken only when
``b + 1`` other nodes host that very version, asked before storing it, and is then charged
to the version's writer and never refused for quota (``unproven`` otherwise; docs/rw.md,
"Repairs are charged to the version's writer").

A *moved* version (``mv``, issue 35; ``bftfs/fs/generations/mover.py``): the background mover copies
a block's latest version from generation g into g + 1 at its own Time and writer, which
g + 1's nodes do not host yet, so no proof is possible.  A node takes it while its view
has a previous generation and it belongs to the current one (``NodeGeneration.moving``),
charged to the writer it names (as it was in g, and as a repair is) and never refused for
quota; a node that is not moving
treats it as the repair it looks like (``unproven``).  The fragment is checked against the
cross checksum as for every write (docs/threat-model.md says what this lets a client do).

The same per block while the held layout moves partitions (``node/moves.py``): a node takes
moved versions of the blocks whose partition moves to its group, refuses a client's own
new version of a block whose partition moves out of it (``moved``), and forgets no
given-back block while anything moves in.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from bftfs.config import ClusterConfig
from bftfs.ids import NodeId, is_node
from bftfs.net.admission import Admission
from bftfs.net.endpoint import Endpoint
from bftfs.net.quorum import QuorumUnavailable
from bftfs.net.server import HandlerError
from bftfs.node import limits, rw_scrubber
from bftfs.node import rw_catchup as catchup
from bftfs.node.batching import BatchHandler
from bftfs.node.rw_verifier import Verifier
from bftfs.node.store import Store
from bftfs.rw import quota, repairs, replica
from bftfs.rw.batch import KIND_BATCH, MAX_BATCH, MAX_BATCH_BYTES, fragment_bytes
from bftfs.rw.client import max_fragment_of
from bftfs.rw.messages import (
    KIND_HOLD,
    KIND_LIST,
    KIND_NOTIFY,
    KIND_READ_LATEST,
    KIND_READ_PREV,
    KIND_SPACE,
    KIND_TIME,
    KIND_WRITE,
    ListRequest,
    MessageError,
    Notify,
    ReadReply,
    ReadRequest,
    TimeRequest,
    WriteRequest,
    parse_hold,
)
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

T = TypeVar("T")


def register(
    node: Node,
    *,
    history: int = replica.DEFAULT_HISTORY,
    max_ahead_ns: int = DEFAULT_MAX_AHEAD_NS,
    catch_up: bool = True,
) -> RWServer:
    """Register the ``rw.*`` handlers on ``node`` and start its catch-up, verifier and
    scrubber; the server.

    Args:
        history: versions listed in each read reply's history (seed L1155-1157).
        max_ahead_ns: how far past this node's clock a write's time may be.
        catch_up: spawn the catch-up task (catchup.py); the node must be running.  A
            retired node (``node/generation.py``) runs no background task: it serves
            nothing, and its peers are retired too.
    """
    catch_up = catch_up and not node.views.generation.retired
    skips = getattr(node.faults, "skips", ())  # what a ``rational`` test node leaves out
    verify = node.config.verification.enabled and catch_up and "verify" not in skips
    verifier = Verifier(node) if verify else None
    node.verifier = verifier
    if verifier is not None:  # nothing given back is forgotten while objects move here
        verifier.collection.forgetter.held = lambda: (
            node.views.generation.moving() or node.moves.moving_in
        )
    server = RWServer(
        node_id=node.id,
        config=node.config,
        store=node.store,
        endpoint=node.endpoint,
        stats=node.stats,
        admission=node.server.admission,
        clock_ns=node.now_ns,
        log=node.log,
        verifier=verifier,
        client_quota=limits.quota_bytes(node),
        history=history,
        max_ahead_ns=max_ahead_ns,
    )
    server.moved = lambda block: node.views.generation.moved() or node.moves.block_out(block)
    server.moving = lambda block: node.views.generation.moving() or node.moves.block_in(block)
    server.register_with(node)
    if catch_up and "catchup" not in skips:
        catch_up_blocks = functools.partial(catchup.run, node, max_ahead_ns=max_ahead_ns)
        node.catch_ups["rw"] = catch_up_blocks  # run again after a partition (rejoin.py)
        node.spawn(catch_up_blocks)
    if verifier is not None:
        node.spawn(verifier.run)
    if catch_up and node.config.verification.scrub_seconds > 0 and "scrub" not in skips:
        node.spawn(functools.partial(rw_scrubber.run, node, max_ahead_ns=max_ahead_ns))
    return server


class RWServer:
    """One node's PASIS handlers: each ``on_*`` method answers one request kind."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        config: ClusterConfig,
        store: Store,
        endpoint: Endpoint,
        stats: Counter[str],
        admission: Admission | None,
        clock_ns: Callable[[], int],
        log: logging.Logger,
        verifier: Verifier | None,
        client_quota: int,
        history: int = replica.DEFAULT_HISTORY,
        max_ahead_ns: int = DEFAULT_MAX_AHEAD_NS,
    ) -> None:
        """
        Args:
            node_id: this node.
            config: the cluster (n, b, the other nodes, block sizes, the data limit).
            store: the node's store; steps run in its transactions.
            endpoint: the node's client of the others (a repair's proof).
            stats: the node's counters (``rw.*``).
            admission: the node's per-client admission, told of quota refusals.
            clock_ns: the node's clock (a write's time is judged against it).
            log: the node's logger.
            verifier: the lazy verifier, told of new versions and NOTIFYs, or None.
            client_quota: block-version bytes one client may keep here (``[limits]``).
            history: versions listed in each read reply's history (seed L1155-1157).
            max_ahead_ns: how far past this node's clock a write's time may be.
        """
        self.node_id = node_id
        self.config = config
        self.store = store
        self.endpoint = endpoint
        self.stats = stats
        self.admission = admission
        self.clock_ns = clock_ns
        self.log = log
        self.verifier = verifier
        self.client_quota = client_quota
        self.history = history
        self.max_ahead_ns = max_ahead_ns
        self.n = config.n
        # Files written sequentially have bigger blocks (``[cluster] big_block_size``).
        self.max_fragment = max_fragment_of(config)
        #: Above this many bytes in use new non-empty versions are refused (policy.py).
        self.data_limit = config.verification.data_fraction * config.map_size
        #: From this many bytes in use the node is short of space (its history goes).
        self.pool_limit = config.verification.pool_fraction * config.map_size
        #: Why a client's own new version of a block is refused ``moved`` (the node's
        #: generation frozen, ``node/generation.py``, or the block's partition moving out
        #: of its group, ``node/moves.py``), or None.
        self.moved: Callable[[int], str | None] = lambda block: None
        #: Whether this node takes moved versions of a block (``NodeGeneration.moving``, or
        #: the block's partition moving to its group).
        self.moving: Callable[[int], bool] = lambda block: False
        #: NOTIFY entries received per sending node: its verification work as this node
        #: saw it (``node/contributions.py``).
        self.notified_by: Counter[int] = Counter()

    def register_with(self, node: Node) -> None:
        """Route the ``rw.*`` kinds of ``node`` to this server's methods."""
        handlers = {
            KIND_TIME: self.on_time,
            KIND_WRITE: self.on_write,
            KIND_READ_LATEST: self.on_read_latest,
            KIND_READ_PREV: self.on_read_prev,
        }
        for kind, handler in handlers.items():
            node.register(kind, handler)
        max_fragment = max_fragment_of(self.config)
        batch = BatchHandler(
            node,
            handlers,
            protocol="rw",
            max_items=MAX_BATCH,
            reply_bytes=lambda kind, item: fragment_bytes(kind, item, max_fragment)[1],
            max_reply_bytes=MAX_BATCH_BYTES,
        )
        node.register(KIND_BATCH, batch)
        # Not part of a batch: only catch-up asks, a page at a time.
        node.register(KIND_LIST, self.on_list)
        node.register(KIND_NOTIFY, self.on_notify)
        node.register(KIND_HOLD, self.on_hold, inline=True)
        node.register(KIND_SPACE, self.on_space, inline=True)

    def _parse(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except MessageError as e:
            self.stats["rw.refused.malformed"] += 1
            raise HandlerError("malformed", str(e)) from None

    def _over_quota(self, ctx: RequestContext) -> HandlerError:
        self.stats["rw.refused.quota"] += 1
        if self.admission is not None:
            self.admission.note(ctx.sender, "quota_refused")
        return HandlerError(
            "quota", f"client {ctx.sender} is at its quota of {self.client_quota} bytes here"
        )

    async def _proven(self, req: WriteRequest) -> bool:
        """Whether ``b + 1`` other nodes host the repaired version (repairs.repair_proven):
        asked of every other node, done as soon as enough say so."""
        ask = repairs.proof_request(req.block, req.ts)
        replies: dict[int, ReadReply] = {}

        def accept(peer: Any, raw: Any) -> bool:
            try:
                replies[int(peer)] = ReadReply.from_wire(
                    raw, ask, n=self.n, max_fragment=self.max_fragment
                )
            except MessageError:
                return False
            return True

        def enough(_valid: Any) -> bool:
            return repairs.repair_proven(replies, req.ts, self.config.b)

        others = [NodeId(i) for i in self.config.node_ids if i != int(self.node_id)]
        with contextlib.suppress(QuorumUnavailable):
            await self.endpoint.quorum_call(
                others, ask.kind, ask.to_wire(), enough=enough, accept=accept
            )
        return enough(None)

    async def on_time(self, ctx: RequestContext, payload: Any) -> Any:
        req = self._parse(lambda: TimeRequest.from_wire(payload))
        return self.store.read(lambda kv: replica.time_step(kv, req.block)).to_wire()

    async def on_write(self, ctx: RequestContext, payload: Any) -> Any:
        req = self._parse(
            lambda: WriteRequest.from_wire(payload, n=self.n, max_fragment=self.max_fragment)
        )
        self._check_write(req)
        stale = self.store.read(lambda kv: replica.fresh_conflict(kv, req))
        if stale is not None:
            self.stats["rw.write.stale"] += 1
            return replica.WriteReply(new=False, stale=stale).to_wire()
        here = self.store.read(lambda kv: replica.stored_state(kv, req))
        if here is True:
            self.stats["rw.write.duplicate"] += 1
            return replica.WriteReply(new=False).to_wire()
        moved = self.moved(req.block)
        if moved is not None and not is_node(ctx.sender) and req.ts.writer == int(ctx.sender):
            self.stats["rw.refused.moved"] += 1
            raise HandlerError("moved", moved)
        owner, limit = await self._payer(ctx, req, here)
        if (
            limit is not None
            and here is None
            and quota.over(
                self.store.read(lambda kv: quota.used(kv, owner)),
                replica.version_size(req),
                limit,
                empty=not req.fragment,
            )
        ):
            raise self._over_quota(ctx)  # early, without a place in the next commit
        reply = await self.store.write(
            lambda kv: replica.store_charged(kv, req, owner=owner, quota_bytes=limit)
        )
        if reply is None:
            raise self._over_quota(ctx)
        self._count_stored(ctx, req, here, reply)
        return reply.to_wire()

    def _check_write(self, req: WriteRequest) -> None:
        """Refuse a write the replica's checks refuse, or a new non-empty version when the
        store is nearly full."""
        try:
            replica.check_write(
                req,
                node=self.node_id,
                n=self.n,
                now_ns=self.clock_ns(),
                max_ahead_ns=self.max_ahead_ns,
            )
        except replica.WriteRefused as e:
            self.stats[f"rw.refused.{e.code}"] += 1
            raise HandlerError(e.code, e.message) from None
        if not req.fragment:
            return
        used = self.store.used_scaled()
        if used >= self.pool_limit and self.verifier is not None:
            self.verifier.wake()  # short of space: collect history now (Collection._press)
        if used >= self.data_limit and not self.store.read(
            lambda kv: replica.has_version(kv, req.block, req.ts)
        ):
            self.stats["rw.refused.full"] += 1
            raise HandlerError("full", "this node's store is nearly full")

    async def _payer(
        self, ctx: RequestContext, req: WriteRequest, here: bool | None
    ) -> tuple[int, int | None]:
        """Who a new version is charged to, and their quota (None: never refused)."""
        owner = int(ctx.sender)
        limit: int | None = self.client_quota
        if req.moved and self.moving(req.block):
            # The mover's copy of a version of the previous generation: its writer pays, as
            # there and as for a repair (the mover's own writes stay its own), never
            # refused (the move must finish); no peer can prove it yet.
            self.stats["rw.write.moved"] += 1
            return req.ts.writer, None
        if here is None and repairs.is_repair(req, owner):
            if not await self._proven(req):
                self.stats["rw.refused.unproven"] += 1
                raise HandlerError(
                    "unproven",
                    f"fewer than b + 1 other nodes host version {req.ts!r} of block "
                    f"{req.block:#x}: only its writer may write a version that is new",
                )
            # Someone else's data, which exists already: its writer pays, never refused.
            self.stats["rw.write.repair"] += 1
            owner, limit = req.ts.writer, None
        if is_node(owner):
            limit = None
        return owner, limit

    def _count_stored(
        self, ctx: RequestContext, req: WriteRequest, here: bool | None, reply: Any
    ) -> None:
        if here is False:
            self.stats["rw.write.healed"] += 1  # a damaged stored fragment replaced
            self.log.warning(
                "node %s: block %#x version %s was damaged here; replaced",
                self.node_id,
                req.block,
                req.ts,
            )
        else:
            self.stats["rw.write.new" if reply.new else "rw.write.duplicate"] += 1
        if reply.new and self.verifier is not None:
            self.verifier.wrote(
                req.block, req.ts, int(ctx.sender), len(req.fragment) + len(req.cross_checksum)
            )

    async def _read(self, ctx: RequestContext, payload: Any, prev: bool) -> Any:
        req = self._parse(lambda: ReadRequest.from_wire(payload, prev=prev))
        if self.verifier is not None and not is_node(ctx.sender):
            self.verifier.client_read(req.block)
        return self.store.read(
            lambda kv: replica.read_step(kv, req, history=self.history)
        ).to_wire()

    async def on_read_latest(self, ctx: RequestContext, payload: Any) -> Any:
        return await self._read(ctx, payload, prev=False)

    async def on_read_prev(self, ctx: RequestContext, payload: Any) -> Any:
        return await self._read(ctx, payload, prev=True)

    async def on_list(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            self.stats["rw.refused.forbidden"] += 1
            raise HandlerError("forbidden", "listing blocks is between nodes")
        req = self._parse(lambda: ListRequest.from_wire(payload))
        return self.store.read(lambda kv: replica.list_step(kv, req.after, req.limit)).to_wire()

    async def on_notify(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender) or ctx.sender == self.node_id:
            self.stats["rw.refused.forbidden"] += 1
            raise HandlerError("forbidden", "NOTIFY is between nodes")
        try:
            msg = Notify.from_wire(payload)
        except MessageError as e:
            self.stats["rw.refused.malformed"] += 1
            if self.verifier is not None:
                self.verifier.bad_notify(ctx.sender, str(e))
            raise HandlerError("malformed", str(e)) from None
        self.notified_by[int(ctx.sender)] += len(msg.entries)
        if self.verifier is not None:
            await self.verifier.notified(ctx.sender, msg)
        return {}

    async def on_hold(self, ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender) or ctx.sender == self.node_id:
            self.stats["rw.refused.forbidden"] += 1
            raise HandlerError("forbidden", "HOLD is between nodes")
        self._parse(lambda: parse_hold(payload))
        if self.verifier is not None:
            self.verifier.peer_holds(ctx.sender)
        return {}

    async def on_space(self, ctx: RequestContext, payload: Any) -> Any:
        return space_reply(self.store, self.config)


def space_reply(store: Any, config: Any) -> dict[str, int]:
    """What this node's store uses, and the room it may still count on: pages free inside
    its file plus its share of the free disk (``df`` shows the smaller of the map's room
    and this: issue 67)."""
    reply = {"used": store.used_scaled()}
    share = limits.disk_share(store.path, config)
    if share is not None:  # pages free inside the file are reused before it grows
        reply["free"] = max(0, store.size_bytes() - store.used_recently()) + share
    return reply


def space_handler(node: Node) -> Callable[[RequestContext, Any], Awaitable[Any]]:
    """``rw.space`` for a node that stores blocks in registers (``node/protocols.py``)."""

    async def on_space(ctx: RequestContext, payload: Any) -> Any:
        return space_reply(node.store, node.config)

    return on_space
