"""The Listeners register in a node process: its four request kinds, registers in LMDB.

Every node registers these handlers (``bftfs/node/protocols.py``); the register is a
service beside the cluster's metadata engine, not yet one the file system uses (issue 68:
``bftfs init --engine listeners`` is a later step, docs/listeners.md).

- The registers live in the node's store, database :data:`DB`: ``key -> [counter,
  writer, data]``.  A STORE is acknowledged only once its transaction committed
  (``Store.write``; synced on a durable store), so a node killed after acknowledging keeps
  the value; W14's quorum of acknowledgements is a quorum that holds it.
- The open reads (:class:`~bftfs.listeners.server.ListenerTable`) are in memory: a
  restarted node has none, and a reader whose read it dropped starts that read again after
  its own time-out (:mod:`bftfs.listeners.client`).
- A write is echoed (``Server.push``) after its commit, to the open reads of its register
  that began below its timestamp; a Byzantine node of a test rewrites its echoes through
  its fault hooks' ``listeners_push`` (``bftfs/testing/byzantine/listeners.py``).
- The sender of every request is the one the session authenticated (each frame carries a
  MAC): a STORE's timestamp must be of the sender's own set.

The node is taken duck-typed (``TYPE_CHECKING`` only): ``listeners`` does not import
``node``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from bftfs import accounting
from bftfs.ids import PrincipalId
from bftfs.listeners import bnodeside, server
from bftfs.listeners import messages as m
from bftfs.listeners.stamps import Stamp, Stored
from bftfs.net.server import HandlerError

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

#: The store's database of registers.
DB = "listeners.registers"
#: Seconds between sweeps of reads open past their lifetime.
SWEEP = 5.0


class KVRegisters:
    """:class:`~bftfs.listeners.server.Registers` over a store transaction's KV view."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    def get(self, key: bytes) -> Stored | None:
        raw = self.kv.get(DB, key)
        if raw is None:
            return None
        counter, writer, data = msgpack.unpackb(raw)
        return Stored(Stamp(counter, writer), data)

    def put(self, key: bytes, value: Stored) -> None:
        self.kv.put(DB, key, msgpack.packb([*value.stamp, value.data], use_bin_type=True))


def _parsed(parse: Callable[[Any], Any], payload: Any) -> Any:
    try:
        return parse(payload)
    except ValueError as e:
        raise HandlerError("bad_request", str(e)) from None


class Handlers:
    """The node's ``lr.*`` handlers over its store, its server's pushes and one table."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = server.ListenerTable()
        self.stats: Counter[str] = Counter()
        rewrite = getattr(node.faults, "listeners_push", None)
        self.rewrite: Callable[[int, Any], list[Any]] | None = rewrite
        self.byzantine: bnodeside.BHandlers | None = None
        #: Bytes one client may keep here, registers included (``node/limits.py``).
        self.quota: int | None = node.config.limits.quota_bytes(node.config.map_size)

    async def on_ts(self, ctx: RequestContext, payload: Any) -> Any:
        key = _parsed(m.parse_ts_request, payload)
        stamp = self.node.store.read(lambda kv: server.query_ts(KVRegisters(kv), key))
        return m.stamp_reply(stamp)

    async def on_store(self, ctx: RequestContext, payload: Any) -> Any:
        key, value = _parsed(m.parse_store_request, payload)
        step = functools.partial(accept_step, int(ctx.sender), key, value, self.quota)
        try:
            took = await self.node.store.write(step)
        except server.Refused as e:
            raise HandlerError("refused", str(e)) from None
        self.stats["stored" if took else "older"] += 1
        for echo in self.table.echoes(key, value):
            body = m.echo_push(echo.read_id, echo.value)
            bodies = [body] if self.rewrite is None else self.rewrite(echo.reader, body)
            for b in bodies:
                self.node.server.push(PrincipalId(echo.reader), b)
        return m.stamp_reply(value.stamp)

    async def on_read(self, ctx: RequestContext, payload: Any) -> Any:
        key, rid = _parsed(m.parse_read_request, payload)
        value = self.node.store.read(lambda kv: server.current(KVRegisters(kv), key))
        # No wait between the read of the value and the listener's baseline: a STORE
        # committed after the read is echoed, one before it is in the answer.
        self.table.open(int(ctx.sender), rid, key, value, trio.current_time())
        return m.value_message(rid, value)

    async def on_done(self, ctx: RequestContext, payload: Any) -> Any:
        rid = _parsed(m.parse_done_request, payload)
        self.table.complete(int(ctx.sender), rid)
        return {}

    def progress(self) -> dict[str, Any]:
        """The figures of ``bftfs status`` (``progress.listeners``)."""
        return {
            "open_reads": len(self.table),
            "echoed": self.table.echoed,
            "dropped_reads": self.table.dropped,
            **self.stats,
        }

    async def sweep(self) -> None:
        """Drop reads open past their lifetime (a reader that never completes)."""
        while True:
            await trio.sleep(SWEEP)
            self.table.expire(trio.current_time())
            self.node.progress["listeners"] = self.progress()


def stored_size(key: bytes, value: Stored) -> int:
    """What a register costs its writer: its name and its record, as the store holds them."""
    return len(key) + len(msgpack.packb([*value.stamp, value.data], use_bin_type=True))


def accept_step(sender: int, key: bytes, value: Stored, quota: int | None, kv: Any) -> bool:
    """The STORE's store step (deterministic in the KV, as ``Store.write`` needs): the
    value taken if newer, charged to its writer (:data:`bftfs.accounting.LR`, the value it
    replaces given back to its own); a value that grows its writer past ``quota`` (block
    versions, Q/U records and registers together) is refused, one that shrinks never."""
    regs = KVRegisters(kv)
    held = regs.get(key)
    if held is not None and value.stamp <= held.stamp:
        return server.accept(regs, sender, key, value)  # refused or older: nothing charged
    size = stored_size(key, value)
    mine = stored_size(key, held) if held is not None and held.stamp.writer == sender else 0
    if accounting.over(accounting.used(kv, sender), size - mine, quota, empty=size <= mine):
        raise server.Refused(f"quota: client {sender} is past {quota} bytes here")
    took = server.accept(regs, sender, key, value)
    if took:
        accounting.LR.recharge(kv, b"l" + key, sender, size)
    return took


def register(node: Node) -> Handlers:
    """Serve Listeners registers on ``node``; the handlers (tests read their table)."""
    h = Handlers(node)
    handlers: dict[str, Callable[[RequestContext, Any], Awaitable[Any]]] = {
        m.KIND_TS: h.on_ts,
        m.KIND_READ: h.on_read,
        m.KIND_DONE: h.on_done,
    }
    for kind, fn in handlers.items():
        node.register(kind, fn, inline=True)  # none of them waits
    node.register(m.KIND_STORE, h.on_store)
    node.progress["listeners"] = h.progress()
    node.spawn(h.sweep)
    h.byzantine = bnodeside.register(node)  # the Byzantine-client variant beside it
    return h
