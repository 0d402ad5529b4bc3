"""Byzantine Listeners in a node process: the ``bl.*`` kinds, registers in LMDB.

A node started with ``bftfs node --listeners`` serves these beside the plain register's
``lr.*`` (:mod:`~bftfs.listeners.nodeside`), on their own database :data:`DB` and their own
table of open reads: a client of the plain register cannot write a Byzantine register
without ``(K, J)``.

- The rules are :class:`~bftfs.listeners.bserver.BNode`'s, run synchronously in the
  handler.  Its registers read the store with the values of STOREs whose commit is still
  under way laid over them (:class:`_Overlay`), and a stored value is committed
  (``Store.write``; synced on a durable store) before the node ACKs it, echoes it or
  forwards it: a quorum of ACKs is a quorum that holds the value.
- Forwarding (S18, D4) is a ``bl.store`` call to every other node over the node's own
  endpoint, in the background; :func:`register` also starts the ``dequeue`` loop (D1,
  every :data:`TWAIT` seconds).
- The ACK (S3) goes to the writer as a push ``{"bl": {"k", "s"}}``, and in the reply when
  the STORE came from the writer itself and was vouched for at once: a writer that
  stopped gets no push and needs none.
- An administrator's revocation is :meth:`BNode.revoke`: ``bftfs client revoke NAME``
  retires the client in a signed view, and the flush loop revokes every client the node's
  view retired (:meth:`BHandlers.follow_revocations`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from bftfs import accounting
from bftfs.ids import NodeId, PrincipalId
from bftfs.listeners import bhistory, blockregs, server
from bftfs.listeners import bmessages as bm
from bftfs.listeners import messages as m
from bftfs.listeners.auth import Macs
from bftfs.listeners.bhistory import Keeper
from bftfs.listeners.bserver import BNode, Forward, StoreResult, Write
from bftfs.listeners.stamps import Sizes, Stamp, Stored
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import HandlerError

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

DB = "blisteners.registers"
#: Block registers' ``K`` and ``J`` (``{"K": ..., "J": ...}`` as a STORE carries them).
PROOFS = "blisteners.proofs"
#: D1's ``Twait``: seconds between flushes of what later copies added to ``J``.
TWAIT = 0.02


def _get(kv: Any, key: bytes) -> Stored | None:
    raw = kv.get(DB, key)
    if raw is None:
        return None
    counter, writer, data = msgpack.unpackb(raw)
    return Stored(Stamp(counter, writer), data)


def put_if_newer(
    key: bytes,
    value: Stored,
    kv: Any,
    keeper: Keeper | None = None,
    proof: dict[str, Any] | None = None,
) -> bool:
    """S6-S7 in the transaction (deterministic in the KV, as ``Store.write`` needs), the
    value charged to its writer ``c`` (:data:`bftfs.accounting.LR`): ``K`` or ``J`` proved
    ``c`` proposed it, whichever node forwarded it.  No quota refuses it here (a correct
    node that refused a vouched write would break Lemma 16): the quota is applied at
    PROPOSE TS (:meth:`BHandlers.on_propose`).  A block register's superseded value is
    retained as history when ``keeper`` is given (:func:`bhistory.retain`), and the
    ``K`` and ``J`` that made it vouched kept as ``proof`` (:data:`PROOFS`: a restarted
    node's catch-up, ``listeners/bsync.py``)."""
    held = _get(kv, key)
    if held is not None and value <= held:
        return False
    if held is not None and keeper is not None:
        bhistory.retain(kv, key, held, keeper)
    record = msgpack.packb([*value.stamp, value.data], use_bin_type=True)
    kv.put(DB, key, record)
    accounting.LR.recharge(kv, b"b" + key, value.stamp.writer, len(key) + len(record))
    if proof is not None:
        packed = msgpack.packb(proof, use_bin_type=True)
        kv.put(PROOFS, key, packed)
        accounting.LR.recharge(kv, b"p" + key, value.stamp.writer, len(key) + len(packed))
    return True


def sync_request(kv: Any, key: bytes) -> dict[str, Any] | None:
    """The STORE that shows another node register ``key``'s value was vouched for: the
    value, its ``K`` and ``J`` (:data:`PROOFS`), a TTL of 0 (the receiver forwards
    nothing); None without a kept proof."""
    value, raw = _get(kv, key), kv.get(PROOFS, key)
    if value is None or raw is None:
        return None
    proof = msgpack.unpackb(raw)
    return {"k": key, "s": value.stamp.wire(), "d": value.data, **proof, "t": 0}


class _Overlay:
    """The store's registers with the STOREs being committed on top (``server.Registers``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pending: dict[bytes, Stored] = {}

    def get(self, key: bytes) -> Stored | None:
        held = self.node.store.read(lambda kv: _get(kv, key))
        mine = self.pending.get(key)
        return mine if held is None or (mine is not None and mine > held) else held

    def put(self, key: bytes, value: Stored) -> None:
        self.pending[key] = value


def _parsed(parse: Callable[..., Any], *args: Any) -> Any:
    try:
        return parse(*args)
    except ValueError as e:
        raise HandlerError("bad_request", str(e)) from None


def _refusing(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except server.Refused as e:
        raise HandlerError("refused", str(e)) from None


class BHandlers:
    """The node's ``bl.*`` handlers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.peers = tuple(int(s.id) for s in node.config.nodes)
        self.regs = _Overlay(node)
        macs = Macs.from_ring(node.keyring, self.peers)
        self.bnode = BNode(macs, Sizes.of(len(self.peers)), self.regs)
        self.stats: Counter[str] = Counter()
        self.quota: int | None = node.config.limits.quota_bytes(node.config.map_size)
        self._view_seen = -1  # no view looked at yet: the first check reads the retired

    def revoke(self, client: int) -> None:
        self.bnode.revoke(client)

    def follow_revocations(self) -> None:
        """Revoke here (Lemma 18) every client the node's view has retired.

        ``bftfs client revoke NAME`` retires the client in a new signed view; the node's
        sessions refuse it from then on, but its proposals already vouched for and its
        STOREs other nodes forward must be refused too, which only :meth:`BNode.revoke`
        does.  Checked when the view number changes (at most every :data:`TWAIT`)."""
        views = self.node.views
        if views.number == self._view_seen:
            return
        self._view_seen = views.number
        for r in views.view.retired:
            if int(r.id) not in self.bnode.revoked:
                self.revoke(int(r.id))

    async def on_ts(self, ctx: RequestContext, payload: Any) -> Any:
        key, hd, last = _parsed(bm.parse_ts_request, payload)
        return bm.ts_reply(*_refusing(self.bnode.query_ts, int(ctx.sender), key, hd, last))

    async def on_propose(self, ctx: RequestContext, payload: Any) -> Any:
        key, ts, hd, last, mm = _parsed(bm.parse_propose_request, payload, self.peers)
        sender = int(ctx.sender)
        used = self.node.store.read(lambda kv: accounting.used(kv, sender))
        if accounting.over(used, len(key) + m.cap_of(key) + 64, self.quota, empty=False):
            # A client that one more register of the largest size would take past its
            # quota gets no TS OK (the size of D is not in a proposal, only hash(D)).
            raise HandlerError("refused", f"quota: client {sender} is near {self.quota} bytes")
        vec = _refusing(self.bnode.propose_ts, int(ctx.sender), key, ts, hd, last, mm)
        return bm.ok_reply(ts, vec)

    async def on_store(self, ctx: RequestContext, payload: Any) -> Any:
        fwd = _parsed(bm.parse_store_request, payload, self.peers)
        w: Write = fwd.write
        res: StoreResult = _refusing(self.bnode.store, int(ctx.sender), w, fwd.j, fwd.ttl)
        if res.stored:
            keeper, proof = None, None
            if blockregs.is_block(w.key):  # history and catch-up (docs/listeners.md)
                keeper = Keeper(self.node.config.retention, self.node.now_ns())
                wire = bm.store_request(Forward(w, self.bnode.vouchers(w), 0))
                proof = {"K": wire["K"], "J": wire["J"]}
            try:
                await self.node.store.write(
                    lambda kv: put_if_newer(w.key, w.value, kv, keeper, proof)
                )
            finally:
                if self.regs.pending.get(w.key) == w.value:
                    del self.regs.pending[w.key]
            self.stats["stored"] += 1
        for echo in res.echoes:  # S4-S5
            body = {bm.PUSH_VALUE: m.value_message(echo.read_id, echo.value)}
            self.node.server.push(PrincipalId(echo.reader), body)
        if res.forward is not None:
            self._forward([res.forward])
        if res.ack and int(ctx.sender) == w.writer:
            return {"a": w.value.stamp.wire()}
        if res.ack:  # S3: to the writer, which may have stopped
            self.node.server.push(PrincipalId(w.writer), bm.ack_push(w.key, w.value.stamp))
        return {}

    def _forward(self, sends: list[Forward]) -> None:
        for fwd in sends:
            self.stats["forwarded"] += 1
            payload = bm.store_request(fwd)
            for peer in self.peers:
                if peer != self.bnode.me:
                    self.node.endpoint.spawn(self._send, NodeId(peer), payload)

    async def _send(self, peer: NodeId, payload: Any) -> None:
        with contextlib.suppress(TransportError, RemoteError):  # links: the peer's to fix
            await self.node.endpoint.call(peer, bm.KIND_STORE, payload, timeout=10.0)

    async def on_read(self, ctx: RequestContext, payload: Any) -> Any:
        key, rid = _parsed(m.parse_read_request, payload)
        value = server.current(self.regs, key)
        self.bnode.table.open(int(ctx.sender), rid, key, value, trio.current_time())
        return m.value_message(rid, value)

    async def on_done(self, ctx: RequestContext, payload: Any) -> Any:
        self.bnode.table.complete(int(ctx.sender), _parsed(m.parse_done_request, payload))
        return {}

    async def flush(self) -> None:
        """D1-D5 every :data:`TWAIT`; reads open past their lifetime dropped."""
        while True:
            await trio.sleep(TWAIT)
            self.follow_revocations()
            if self.bnode.pending:
                self._forward(self.bnode.dequeue())
            self.bnode.table.expire(trio.current_time())
            self.node.progress["blisteners"] = {
                "open_reads": len(self.bnode.table),
                "revoked": sorted(self.bnode.revoked),
                **self.stats,
            }


def register(node: Node) -> BHandlers:
    """Serve Byzantine Listeners registers on ``node``; the handlers (tests use them)."""
    h = BHandlers(node)
    handlers: dict[str, Callable[[RequestContext, Any], Awaitable[Any]]] = {
        bm.KIND_TS: h.on_ts,
        bm.KIND_PROPOSE: h.on_propose,
        bm.KIND_READ: h.on_read,
        bm.KIND_DONE: h.on_done,
    }
    for kind, fn in handlers.items():
        node.register(kind, fn, inline=True)  # none of them waits
    node.register(bm.KIND_STORE, h.on_store)
    node.spawn(h.flush)
    return h
