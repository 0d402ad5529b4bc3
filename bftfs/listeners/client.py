"""The Listeners register's client over the transport (``bftfs.net``).

:class:`ListenersClient` runs figure 3.1's operations (the pure
:class:`~bftfs.listeners.writer.WriteOp` and :class:`~bftfs.listeners.reader.ReadOp`) on
an :class:`~bftfs.net.endpoint.Endpoint`, whose sessions MAC every frame both ways:

- ``write``: QUERY TS and STORE are each a quorum call to every node (``A`` is every node
  when ``n = 3f + 1``); the calls left in flight go on in the background, so the write
  reaches the stragglers too.
- ``read``: READ goes to every node; the first answers are the calls' replies and the
  echoes are pushes (``Server.push``, ``{"lr": VALUE}``) that the endpoint's ``on_push``
  hands here, by read id.  Once the reader decided, READ COMPLETE goes to every node in
  the background, and the calls still waiting are cancelled.  A read that has not decided
  after :attr:`ListenersClient.read_timeout` seconds (a push lost with its connection, a
  node that dropped the read, section 3.6.1 [003 L2029-2047]) is completed and started
  again under a new read id; :attr:`ListenersClient.stats` counts those restarts.

A writer's timestamps are its own principal id's set (``Cts``), and its last timestamp is
kept across writes (W9: ``last_ts``, "static"), so two concurrent writes of one client pick
different timestamps.  One client object per principal and process: read ids start at a
random point so that two processes of one principal do not share them.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.listeners import messages as m
from bftfs.listeners.reader import ReadOp
from bftfs.listeners.stamps import INITIAL, Sizes, Stamp, Stored
from bftfs.listeners.writer import WriteOp
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError


class ListenersClient:
    """Reads and writes Listeners registers on ``nodes`` through ``endpoint``."""

    #: The read's request kinds and echo push key (Byzantine Listeners has its own:
    #: :mod:`bftfs.listeners.bclient`).
    READ_KIND = m.KIND_READ
    DONE_KIND = m.KIND_DONE
    PUSH_KEY = m.PUSH

    def __init__(
        self,
        endpoint: Endpoint,
        nodes: Sequence[NodeId],
        *,
        read_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.nodes = list(nodes)
        self.sizes = Sizes.of(len(self.nodes))
        self.writer = int(endpoint.pid)
        self.read_timeout = read_timeout
        #: W9's ``last_ts``.
        self.last: Stamp = INITIAL
        self._ids = (rng or random.Random()).randrange(1 << 40) << 20
        #: Open reads by id: the state machine and what wakes its reader.
        self._reads: dict[int, tuple[ReadOp, trio.Event]] = {}
        #: ``reads``, ``writes``, ``read_echoes`` (echoes the reads took), ``echo_reads``
        #: (reads that needed one), ``restarts``, ``dropped`` (answers that did not parse).
        self.stats: Counter[str] = Counter()
        self._chained = endpoint.on_push
        endpoint.on_push = self._pushed

    # -- write (W1-W14) ---------------------------------------------------------
    async def write(self, key: bytes, data: bytes) -> Stamp:
        """Store ``data`` in register ``key``; its timestamp once a quorum holds it.

        Raises:
            QuorumUnavailable: fewer than a quorum of nodes answered in time.
        """
        op = WriteOp(self.sizes, self.nodes, self.writer, self.last, data)

        def on_ts(node: NodeId, reply: Any) -> bool:
            try:
                stamp = m.parse_stamp_reply(reply)
            except ValueError:
                self.stats["dropped"] += 1
                return False
            op.last = max(op.last, self.last)  # a concurrent write of ours picked meanwhile
            value = op.on_ts(int(node), stamp)
            if value is not None:
                self.last = value.stamp  # W9
            return True

        await self.endpoint.quorum_call(
            self.nodes,
            m.KIND_TS,
            m.ts_request(key),
            accept=on_ts,
            enough=lambda _replies: op.value is not None,
        )
        assert op.value is not None
        value = op.value

        def on_ack(node: NodeId, reply: Any) -> bool:
            try:
                op.on_ack(int(node), m.parse_stamp_reply(reply))
            except ValueError:
                self.stats["dropped"] += 1
                return False
            return True

        await self.endpoint.quorum_call(
            self.nodes,
            m.KIND_STORE,
            m.store_request(key, value),
            accept=on_ack,
            enough=lambda _replies: op.done,
        )
        self.stats["writes"] += 1
        return value.stamp

    # -- read (R1-R15) ----------------------------------------------------------
    async def read(self, key: bytes) -> Stored:
        """The value of register ``key`` (the initial ``b""`` at timestamp 0 if never
        written); it tries again, under a new read id, until it decides."""
        while True:
            got = await self._read_once(key)
            if got is not None:
                return got
            self.stats["restarts"] += 1

    async def _read_once(self, key: bytes) -> Stored | None:
        self._ids += 1
        rid = self._ids
        op, decided = ReadOp(self.sizes, self.nodes), trio.Event()
        self._reads[rid] = (op, decided)
        try:
            with trio.move_on_after(self.read_timeout):
                async with trio.open_nursery() as nursery:
                    for node in self.nodes:
                        nursery.start_soon(self._ask, node, key, rid)
                    await decided.wait()
                    nursery.cancel_scope.cancel()
        finally:
            del self._reads[rid]
            for node in self.nodes:  # R14, in the background
                self.endpoint.spawn(self._complete, node, rid)
        if op.decided is not None:
            self.stats["reads"] += 1
            self.stats["read_echoes"] += op.echoes
            self.stats["echo_reads"] += op.echoes > 0
        return op.decided

    async def _ask(self, node: NodeId, key: bytes, rid: int) -> None:
        try:
            reply = await self.endpoint.call(
                node, self.READ_KIND, m.read_request(key, rid), timeout=self.read_timeout
            )
        except (TransportError, RemoteError):
            return  # a node down or refusing: the others decide
        self._value(node, reply)

    def _value(self, node: NodeId, body: Any) -> None:
        """A VALUE from ``node``: a READ's reply or an echo."""
        try:
            rid, value = m.parse_value(body)
        except ValueError:
            self.stats["dropped"] += 1
            return
        entry = self._reads.get(rid)
        if entry is None:
            return  # a read that decided already, or not ours
        op, decided = entry
        if op.on_value(int(node), value) is not None:
            decided.set()

    async def _complete(self, node: NodeId, rid: int) -> None:
        # A node not told drops the read at its lifetime's end.
        with contextlib.suppress(TransportError, RemoteError):
            await self.endpoint.call(node, self.DONE_KIND, m.done_request(rid), timeout=5.0)

    def _pushed(self, node: NodeId, body: Any) -> None:
        if isinstance(body, Mapping) and self.PUSH_KEY in body:
            self._value(node, body[self.PUSH_KEY])
        elif self._chained is not None:
            self._chained(node, body)
