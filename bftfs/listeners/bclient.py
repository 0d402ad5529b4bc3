"""The Byzantine Listeners client over the transport (``bftfs.net``).

:class:`BListenersClient` reads as the plain client does (R1-R15 are the same
[003 L1374-1395]) under the ``bl.read``/``bl.done`` kinds, and writes in three phases
(:class:`~bftfs.listeners.bwriter.BWriteOp`): QUERY TS and PROPOSE TS are quorum calls to
every node; STORE goes to every node and the write returns once a quorum ACKed, in a
STORE's reply or later as a push (a node that vouched for the write only after the other
nodes' forwarding).  :meth:`BListenersClient.prepare` runs the first two phases alone,
which is what a test of a writer that stops before its STOREs uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.listeners import bmessages as bm
from bftfs.listeners.bserver import Forward, Write
from bftfs.listeners.bwriter import BWriteOp
from bftfs.listeners.client import ListenersClient
from bftfs.listeners.stamps import Stamp
from bftfs.net.errors import RemoteError, TransportError


class BListenersClient(ListenersClient):
    """Reads and writes Byzantine Listeners registers on ``nodes`` through ``endpoint``."""

    READ_KIND = bm.KIND_READ
    DONE_KIND = bm.KIND_DONE
    PUSH_KEY = bm.PUSH_VALUE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Writes waiting for ACKs, by (register, timestamp).
        self._writes: dict[tuple[bytes, Stamp], tuple[BWriteOp, trio.Event]] = {}

    async def prepare(self, key: bytes, data: bytes) -> BWriteOp:
        """W1-W13: the write with its ``K``, not yet stored."""
        op = BWriteOp(self.sizes, [int(n) for n in self.nodes], self.writer, self.last, key, data)

        def on_ts(node: NodeId, reply: Any) -> bool:
            try:
                got = bm.parse_ts_reply(reply, len(self.nodes))
            except ValueError:
                self.stats["dropped"] += 1
                return False
            # ``op.last`` stays what QUERY TS sent: the answers' MACs bind it (T3), so a
            # concurrent write of ours that picked meanwhile must not change it (the
            # caller serializes its writes of one register).
            my_ts = op.on_ts(int(node), *got)
            if my_ts is not None:
                self.last = max(self.last, my_ts)  # W10
            return True

        await self.endpoint.quorum_call(
            self.nodes,
            bm.KIND_TS,
            bm.ts_request(key, op.hd, op.last),
            accept=on_ts,
            enough=lambda _r: op.my_ts is not None,
        )
        assert op.my_ts is not None
        my_ts = op.my_ts

        def on_ok(node: NodeId, reply: Any) -> bool:
            try:
                op.on_ok(int(node), *bm.parse_ok_reply(reply, len(self.nodes)))
            except ValueError:
                self.stats["dropped"] += 1
                return False
            return True

        await self.endpoint.quorum_call(
            self.nodes,
            bm.KIND_PROPOSE,
            bm.propose_request(key, my_ts, op.hd, op.last, op.m),
            accept=on_ok,
            enough=lambda _r: op.write is not None,
        )
        return op

    async def store(self, op: BWriteOp) -> Stamp:
        """W14-W18: STORE to every node; the timestamp once a quorum ACKed."""
        w: Write | None = op.write
        assert w is not None
        done = trio.Event()
        self._writes[(w.key, w.value.stamp)] = (op, done)
        payload = bm.store_request(Forward(w, {}, self.sizes.quorum))
        try:
            async with trio.open_nursery() as nursery:
                for node in self.nodes:
                    nursery.start_soon(self._store_at, node, op, done, payload)
                await done.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self._writes[(w.key, w.value.stamp)]
        self.stats["writes"] += 1
        return w.value.stamp

    async def write(self, key: bytes, data: bytes) -> Stamp:
        """Store ``data`` in register ``key``; its timestamp once a quorum holds it."""
        return await self.store(await self.prepare(key, data))

    async def _store_at(self, node: NodeId, op: BWriteOp, done: trio.Event, payload: Any) -> None:
        try:
            reply = await self.endpoint.call(node, bm.KIND_STORE, payload, timeout=30.0)
        except (TransportError, RemoteError):
            return
        if isinstance(reply, Mapping) and "a" in reply:
            try:
                stamp = Stamp.from_wire(reply["a"])
            except ValueError:
                return
            if op.on_ack(int(node), stamp):
                done.set()

    def _pushed(self, node: NodeId, body: Any) -> None:
        if isinstance(body, Mapping) and bm.PUSH in body:
            try:
                key, stamp = bm.parse_ack(body[bm.PUSH])
            except ValueError:
                self.stats["dropped"] += 1
                return
            entry = self._writes.get((key, stamp))
            if entry is not None and entry[0].on_ack(int(node), stamp):
                entry[1].set()
            return
        super()._pushed(node, body)
