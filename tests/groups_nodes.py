"""In-process nodes of a cluster of groups, started as ``bftfs node`` starts them
(``node/main.in_group``: the layout held, the placement guard, ``layout.install``), over
real loopback TCP and LMDB, for the tests of layouts on running nodes.

The cluster directory is made by ``local.init_cluster`` on ports the OS picked (bound
first, so no port is ever guessed); a node's listeners are handed to it, and a node
crashed and recovered binds its own port again, as ``testing/cluster.py`` does.  Layouts
are given by the test: :meth:`Groups.hold` stores one beside ``cluster.toml`` (what nodes
start on), :meth:`Groups.install` pushes one to running nodes as ``bftfs`` does.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bftfs import local
from bftfs.config import MIN_MAP_SIZE, ClusterConfig
from bftfs.crypto import AdminKey, Identity, KeyRing
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.groups import group_config, store_layout
from bftfs.layout.model import Layout
from bftfs.net.endpoint import Endpoint
from bftfs.node.main import in_group, load_identity
from bftfs.node.service import Node
from bftfs.policy import VerificationPolicy
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import RWClient
from bftfs.testing.cluster import TEST_ENDPOINT
from bftfs.testing.testobjects import OBJECT_TYPES as TEST_TYPES

#: Lazy verification that never runs by itself (a verifier, hence a forgetter, exists).
BY_HAND = VerificationPolicy(
    mode="lazy", settle_seconds=3600.0, fallback_seconds=3600.0, stream_seconds=0.0
)


class Groups:
    """The cluster's nodes by global id (those started), and clients of each group."""

    def __init__(
        self, cfg: ClusterConfig, nursery: trio.Nursery, listeners: list[list[trio.SocketListener]]
    ) -> None:
        self.cfg = cfg
        self.admin = AdminKey.load(cfg.admin_key_path)
        self.nodes: dict[int, Node] = {}
        self._nursery = nursery
        self._listeners: dict[int, list[trio.SocketListener]] = dict(enumerate(listeners))
        self._scopes: dict[int, trio.CancelScope] = {}
        self._stopped: dict[int, trio.Event] = {}

    def hold(self, layout: Layout) -> bytes:
        """Sign ``layout`` and keep it beside ``cluster.toml`` (nodes start on it); its
        signed bytes."""
        blob = codec.sign(layout, self.admin)
        store_layout(self.cfg, blob)
        return blob

    async def start(self, nid: int) -> Node:
        """Start node ``nid`` (global id) as ``bftfs node`` would; the node, listening."""
        where = in_group(self.cfg, nid, TEST_TYPES)
        ident = load_identity(where.config.node(where.index))
        listeners = self._listeners.pop(nid, None)
        if listeners is None:  # restarted: its own port again
            spec = self.cfg.node(NodeId(nid))
            listeners = await trio.open_tcp_listeners(spec.port, host=spec.host)
        node = where.node(
            ident,
            TEST_TYPES,
            listeners=listeners,
            endpoint_options=TEST_ENDPOINT,
            rejoin_heartbeat=None,
        )
        self.nodes[nid] = node
        await self._nursery.start(self._run, nid, node)
        return node

    async def _run(
        self, nid: int, node: Node, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        stopped = self._stopped[nid] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[nid] = scope
                await node.run(task_status=task_status)
        finally:
            stopped.set()

    async def restart(self, nid: int) -> Node:
        """Stop node ``nid`` at once and start it again on its data."""
        self._scopes[nid].cancel()
        await self._stopped[nid].wait()
        return await self.start(nid)

    def endpoint(self, layout: Layout, group: int, k: int) -> Endpoint:
        """A new endpoint of client ``k`` to group ``group``'s nodes (in-group ids)."""
        cfg = group_config(self.cfg, layout, group)
        spec = self.cfg.clients[k]
        ident = Identity.load(spec.id, self.cfg.client_key_path(spec.name))
        ring = KeyRing(ident, cfg.node_public_keys())
        addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
        return Endpoint(ring, addresses, self._nursery, **TEST_ENDPOINT)

    def qu(self, layout: Layout, group: int, k: int, ep: Endpoint | None = None) -> QUClient:
        """A Q/U client of client ``k`` to group ``group`` (on ``ep``, else a new one)."""
        cfg = group_config(self.cfg, layout, group)
        return QUClient(
            ep or self.endpoint(layout, group, k),
            QUThresholds.from_config(cfg),
            client_id=int(self.cfg.clients[k].id),
            rng=random.Random(k),
            seq_start=1_000_000 * (k + 1),
        )

    def rw(self, layout: Layout, group: int, k: int, ep: Endpoint | None = None) -> RWClient:
        """A PASIS client of client ``k`` to group ``group``."""
        return RWClient(
            ep or self.endpoint(layout, group, k), group_config(self.cfg, layout, group)
        )

    async def install(self, ep: Endpoint, layout: Layout, blob: bytes, group: int) -> None:
        """``layout.install`` to every node of ``group``; each holds ``layout`` after (taken
        now, or forwarded to it by a peer first)."""
        for i in range(len(layout.groups[group].members)):
            got = await ep.call(NodeId(i), "layout.install", blob)
            assert got["layout"] == layout.version, (i, got)


@asynccontextmanager
async def open_groups(home: Path, *, groups: int = 2, clients: int = 2) -> AsyncIterator[Groups]:
    """A cluster directory of ``groups`` groups of six nodes (``t = b = 1``) on ports bound
    here, no node started; everything stopped on exit."""
    listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(6 * groups)]
    try:
        cfg = local.init_cluster(
            home,
            t=1,
            b=1,
            clients=clients,
            groups=groups,
            ports=[ls[0].socket.getsockname()[1] for ls in listeners],
            durable=False,
            map_size=64 * MIN_MAP_SIZE,
            verification=BY_HAND,
            seal=False,
        )
        async with trio.open_nursery() as nursery:
            try:
                yield Groups(cfg, nursery, listeners)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for ls in listeners:
            for lst in ls:
                lst.socket.close()
