"""Wiring of the PASIS storage-node steps (replica.py) into a node's request handlers.

Kinds: ``rw.time`` (TIME_REQUEST), ``rw.write`` (WRITE), ``rw.read_latest`` (READ_LATEST),
``rw.read_prev`` (READ_PREV) and ``rw.list`` (the blocks hosted, for another node's catch-up;
only nodes may ask); formats in messages.py.  ``rw.batch`` carries several of those
at once (``rw/batch.py``), answered by the node's generic batch handler
(``node/batching.py``).

Reads run in a read-only transaction on the event loop (MVCC, they never wait for a
commit); writes are checked first (hashing a fragment, outside any transaction) and then
executed through the group-committing ``node.store.write``, so the acknowledgement is durable
when the config says so.

At start-up ``register`` also spawns the catch-up task (catchup.py): a node that was down
fetches its fragments of the blocks written meanwhile, in the background.

A malformed request is refused with ``malformed``; a write that fails validation with the
replica's code (``bad-verifier``, ``bad-fragment``, ``too-far-ahead``...); a client's new
non-empty version beyond its quota (``[limits]``, node/limits.py) with ``quota``.  Refusals
are counted in ``node.stats`` under ``rw.refused.<code>``.  A write is charged, in the
transaction that stores it (rw/quota.py), to the writer its timestamp names: a client's own
write is sent by that writer (the frame authenticates it); a *repair* (the timestamp names
another writer: a reader's or a node's write-back, a scrub's rewrite) is taken only when
``b + 1`` other nodes host that very version, asked before storing it, and is then charged
to the version's writer and never refused for quota (``unproven`` otherwise; docs/rw.md,
"Repairs are charged to the version's writer").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from bftfs.erasure import fragment_size
from bftfs.ids import NodeId, is_node
from bftfs.net.quorum import QuorumUnavailable
from bftfs.node import limits, rw_scrubber
from bftfs.node import rw_catchup as catchup
from bftfs.node.batching import BatchHandler
from bftfs.node.rw_verifier import Verifier
from bftfs.rw import quota, repairs, replica
from bftfs.rw.batch import KIND_BATCH, MAX_BATCH
from bftfs.rw.messages import (
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
)
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

T = TypeVar("T")


def _parse(node: Node, fn: Callable[[], T]) -> T:
    from bftfs.net.server import HandlerError

    try:
        return fn()
    except MessageError as e:
        node.stats["rw.refused.malformed"] += 1
        raise HandlerError("malformed", str(e)) from None


def register(
    node: Node,
    *,
    history: int = replica.DEFAULT_HISTORY,
    max_ahead_ns: int = DEFAULT_MAX_AHEAD_NS,
    catch_up: bool = True,
) -> None:
    """Register the ``rw.*`` handlers on ``node`` and start its catch-up.

    Args:
        history: versions listed in each read reply's history (seed L1155-1157).
        max_ahead_ns: how far past this node's clock a write's time may be.
        catch_up: spawn the catch-up task (catchup.py); the node must be running.
    """
    from bftfs.net.server import HandlerError

    n = node.config.n
    # Files written sequentially have bigger blocks (``[cluster] big_block_size``).
    max_fragment = fragment_size(node.config.max_file_block_size, node.config.m)
    verifier = Verifier(node) if node.config.verification.enabled and catch_up else None
    node.verifier = verifier
    #: Above this many bytes in use new non-empty versions are refused (policy.py).
    data_limit = node.config.verification.data_fraction * node.config.map_size
    #: Block-version bytes one client may keep here (policy.py ``[limits]``).
    client_quota = limits.quota_bytes(node)

    def over_quota(ctx: RequestContext, req: WriteRequest) -> HandlerError:
        node.stats["rw.refused.quota"] += 1
        admission = node.server.admission
        if admission is not None:
            admission.note(ctx.sender, "quota_refused")
        return HandlerError(
            "quota", f"client {ctx.sender} is at its quota of {client_quota} bytes here"
        )

    async def proven(req: WriteRequest) -> bool:
        """Whether ``b + 1`` other nodes host the repaired version (repairs.repair_proven):
        asked of every other node, done as soon as enough say so."""
        ask = repairs.proof_request(req.block, req.ts)
        replies: dict[int, ReadReply] = {}

        def accept(peer: Any, raw: Any) -> bool:
            try:
                replies[int(peer)] = ReadReply.from_wire(raw, ask, n=n, max_fragment=max_fragment)
            except MessageError:
                return False
            return True

        def enough(_valid: Any) -> bool:
            return repairs.repair_proven(replies, req.ts, node.config.b)

        others = [NodeId(i) for i in node.config.node_ids if i != int(node.id)]
        with contextlib.suppress(QuorumUnavailable):
            await node.endpoint.quorum_call(
                others, ask.kind, ask.to_wire(), enough=enough, accept=accept
            )
        return enough(None)

    async def on_time(ctx: RequestContext, payload: Any) -> Any:
        req = _parse(node, lambda: TimeRequest.from_wire(payload))
        return node.store.read(lambda kv: replica.time_step(kv, req.block)).to_wire()

    async def on_write(ctx: RequestContext, payload: Any) -> Any:
        req = _parse(node, lambda: WriteRequest.from_wire(payload, n=n, max_fragment=max_fragment))
        try:
            replica.check_write(
                req, node=node.id, n=n, now_ns=node.now_ns(), max_ahead_ns=max_ahead_ns
            )
        except replica.WriteRefused as e:
            node.stats[f"rw.refused.{e.code}"] += 1
            raise HandlerError(e.code, e.message) from None
        if (
            req.fragment
            and node.store.used_recently() >= data_limit
            and not node.store.read(lambda kv: replica.has_version(kv, req.block, req.ts))
        ):
            node.stats["rw.refused.full"] += 1
            if verifier is not None:
                verifier.wake()  # collect now: the pool is short
            raise HandlerError("full", "this node's store is nearly full")
        stale = node.store.read(lambda kv: replica.fresh_conflict(kv, req))
        if stale is not None:
            node.stats["rw.write.stale"] += 1
            return replica.WriteReply(new=False, stale=stale).to_wire()
        here = node.store.read(lambda kv: replica.stored_state(kv, req))
        if here is True:
            node.stats["rw.write.duplicate"] += 1
            return replica.WriteReply(new=False).to_wire()
        owner = int(ctx.sender)
        limit: int | None = client_quota
        if here is None and repairs.is_repair(req, owner):
            if not await proven(req):
                node.stats["rw.refused.unproven"] += 1
                raise HandlerError(
                    "unproven",
                    f"fewer than b + 1 other nodes host version {req.ts!r} of block "
                    f"{req.block:#x}: only its writer may write a version that is new",
                )
            # Someone else's data, which exists already: its writer pays, never refused.
            node.stats["rw.write.repair"] += 1
            owner, limit = req.ts.writer, None
        if is_node(owner):
            limit = None
        if (
            limit is not None
            and here is None
            and quota.over(
                node.store.read(lambda kv: quota.used(kv, owner)),
                replica.version_size(req),
                limit,
                empty=not req.fragment,
            )
        ):
            raise over_quota(ctx, req)  # early, without a place in the next commit
        charged = await node.store.write(
            lambda kv: replica.store_charged(kv, req, owner=owner, quota_bytes=limit)
        )
        if charged is None:
            raise over_quota(ctx, req)
        reply = charged
        if here is False:
            node.stats["rw.write.healed"] += 1  # a damaged stored fragment replaced
            node.log.warning(
                "node %s: block %#x version %s was damaged here; replaced",
                node.id,
                req.block,
                req.ts,
            )
        else:
            node.stats["rw.write.new" if reply.new else "rw.write.duplicate"] += 1
        if reply.new and verifier is not None:
            verifier.wrote(
                req.block, req.ts, int(ctx.sender), len(req.fragment) + len(req.cross_checksum)
            )
        return reply.to_wire()

    def reader(prev: bool) -> Any:
        async def on_read(ctx: RequestContext, payload: Any) -> Any:
            req = _parse(node, lambda: ReadRequest.from_wire(payload, prev=prev))
            return node.store.read(lambda kv: replica.read_step(kv, req, history=history)).to_wire()

        return on_read

    async def on_list(ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender):
            node.stats["rw.refused.forbidden"] += 1
            raise HandlerError("forbidden", "listing blocks is between nodes")
        req = _parse(node, lambda: ListRequest.from_wire(payload))
        return node.store.read(lambda kv: replica.list_step(kv, req.after, req.limit)).to_wire()

    async def on_notify(ctx: RequestContext, payload: Any) -> Any:
        if not is_node(ctx.sender) or ctx.sender == node.id:
            node.stats["rw.refused.forbidden"] += 1
            raise HandlerError("forbidden", "NOTIFY is between nodes")
        try:
            msg = Notify.from_wire(payload)
        except MessageError as e:
            node.stats["rw.refused.malformed"] += 1
            if verifier is not None:
                verifier.bad_notify(ctx.sender, str(e))
            raise HandlerError("malformed", str(e)) from None
        if verifier is not None:
            await verifier.notified(ctx.sender, msg)
        return {}

    async def on_space(ctx: RequestContext, payload: Any) -> Any:
        return {"used": node.store.used_recently()}

    handlers = {
        KIND_TIME: on_time,
        KIND_WRITE: on_write,
        KIND_READ_LATEST: reader(False),
        KIND_READ_PREV: reader(True),
    }
    for kind, handler in handlers.items():
        node.register(kind, handler)
    node.register(KIND_BATCH, BatchHandler(node, handlers, protocol="rw", max_items=MAX_BATCH))
    # Not part of a batch: only catch-up asks, a page at a time.
    node.register(KIND_LIST, on_list)
    node.register(KIND_NOTIFY, on_notify)
    node.register(KIND_SPACE, on_space, inline=True)
    if catch_up:
        catch_up_blocks = functools.partial(catchup.run, node, max_ahead_ns=max_ahead_ns)
        node.catch_ups["rw"] = catch_up_blocks  # run again after a partition (rejoin.py)
        node.spawn(catch_up_blocks)
    if verifier is not None:
        node.spawn(verifier.run)
    if catch_up and node.config.verification.scrub_seconds > 0:
        node.spawn(functools.partial(rw_scrubber.run, node, max_ahead_ns=max_ahead_ns))
