"""An in-process cluster: every node in this trio loop, over real loopback TCP and real LMDB.

Protocol tests use it to get real framing, MACs, group commit and connection handling
without process start-up costs, and to inject faults deterministically
(:mod:`bftfs.testing.faults`).  Ports come from the OS (listeners are bound before the
configuration is written, so no port is ever guessed); each node has its own LMDB directory
under the test's temporary directory, so crash-recover reopens the same data.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from bftfs.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INLINE_LIMIT,
    MIN_MAP_SIZE,
    ClientSpec,
    ClusterConfig,
    NodeSpec,
    default_sizes,
)
from bftfs.crypto import AdminKey, Identity, KeyRing
from bftfs.ids import NodeId, client_id
from bftfs.membership.admin import current, init_view, new_chain, with_view_keys
from bftfs.membership.configview import write_signed
from bftfs.membership.view import Generation, ViewNode, sign
from bftfs.membership.viewkeys import AdminChains
from bftfs.net.endpoint import Endpoint
from bftfs.node.service import Node
from bftfs.policy import LimitsPolicy, RetentionPolicy, VerificationPolicy
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.timestamp import MAX_OBJECTS
from bftfs.testing.faults import FaultInjector
from bftfs.testing.testobjects import OBJECT_TYPES as TEST_TYPES

#: Test-friendly transport timing: resend quickly, give up within seconds.
TEST_ENDPOINT = {"resend_after": 0.05, "timeout": 5.0, "connect_timeout": 1.0}


class Cluster:
    """Handles to a running in-process cluster (built by :func:`open_cluster`)."""

    def __init__(
        self,
        config: ClusterConfig,
        node_ids: list[Identity],
        client_ids: list[Identity],
        nursery: trio.Nursery,
        seed: int,
        endpoint_options: dict[str, Any],
        rejoin_heartbeat: float | None = None,
    ) -> None:
        self.config = config
        self._rejoin_heartbeat = rejoin_heartbeat
        #: The nodes' clock (tests of history move it days ahead); None: the real one.
        self.node_clock_ns: Callable[[], int] | None = None
        #: The administrator key, when the cluster was opened with ``views``.
        self.admin_key: AdminKey | None = None
        self.rng = random.Random(seed)
        self.nodes: list[Node] = [None] * config.n  # type: ignore[list-item]
        self.faults = [
            FaultInjector(random.Random(self.rng.getrandbits(64)), self, i) for i in range(config.n)
        ]
        self._node_identities = node_ids
        self._client_identities = client_ids
        self._nursery = nursery
        self._scopes: list[trio.CancelScope | None] = [None] * config.n
        self._stopped: list[trio.Event] = [trio.Event() for _ in range(config.n)]
        self._clients: dict[int, Endpoint] = {}
        self._endpoint_options = endpoint_options
        self.crashed: set[int] = set()

    @property
    def addresses(self) -> dict[NodeId, tuple[str, int]]:
        return {s.id: (s.host, s.port) for s in self.config.nodes}

    def client(self, k: int = 0) -> Endpoint:
        """The endpoint of the ``k``-th configured client (created on first use)."""
        if k not in self._clients:
            ident = self._client_identities[k]
            ring = KeyRing(ident, self.config.node_public_keys())
            self._clients[k] = Endpoint(
                ring, self.addresses, self._nursery, **self._endpoint_options
            )
        return self._clients[k]

    def as_node(self, i: int) -> Endpoint:
        """A new endpoint speaking to the other nodes as node ``i`` (what only nodes may
        ask: listings, catch-up), with connections of its own."""
        ring = KeyRing(self._node_identities[i], self.config.node_public_keys())
        return Endpoint(ring, self.addresses, self._nursery, **self._endpoint_options)

    def twin(self, k: int = 0) -> Endpoint:
        """Another endpoint of the ``k``-th configured client: a second mount of one client
        identity (two machines with the same bundle), with connections of its own."""
        ring = KeyRing(self._client_identities[k], self.config.node_public_keys())
        return Endpoint(ring, self.addresses, self._nursery, **self._endpoint_options)

    def client_identity(self, k: int = 0) -> Identity:
        """The private identity of the ``k``-th configured client (for raw-protocol tests)."""
        return self._client_identities[k]

    def stranger(self) -> Endpoint:
        """An endpoint with a fresh identity that is *not* in the configuration."""
        ident = Identity.generate(client_id(len(self._client_identities) + 99))
        ring = KeyRing(ident, self.config.node_public_keys())
        return Endpoint(ring, self.addresses, self._nursery, **self._endpoint_options)

    async def _run_node(
        self,
        i: int,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stopped = self._stopped[i] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[i] = scope
                node = Node(
                    self.config,
                    self._node_identities[i],
                    listeners=listeners,
                    faults=self.faults[i],
                    endpoint_options=self._endpoint_options,
                    extra_object_types=TEST_TYPES,
                    rejoin_heartbeat=self._rejoin_heartbeat,
                    clock_ns=self.node_clock_ns or time.time_ns,
                )
                self.nodes[i] = node
                await node.run(task_status=task_status)
        finally:
            stopped.set()

    async def start(self, i: int, listeners: list[trio.SocketListener]) -> None:
        await self._nursery.start(self._run_node, i, listeners)

    def crash(self, i: int) -> None:
        """Stop node ``i`` at once: connections drop, unacknowledged work is lost."""
        scope = self._scopes[i]
        if scope is not None:
            scope.cancel()
        self.crashed.add(i)

    async def recover(self, i: int) -> None:
        """Restart node ``i`` on the same LMDB directory and port."""
        await self._stopped[i].wait()
        spec = self.config.node(i)
        listeners = await trio.open_tcp_listeners(spec.port, host=spec.host)
        await self.start(i, listeners)
        self.crashed.discard(i)

    async def wait_stopped(self, i: int) -> None:
        await self._stopped[i].wait()


def qu_client(cluster: Cluster, k: int, seed: int = 0, **options: Any) -> QUClient:
    """A Q/U client of the ``k``-th configured client: seeded backoff (``seed``) and request
    ids in a range of its own, so several clients of one test never reuse a request id;
    ``options`` go to :class:`QUClient` (e.g. its ``sleep``)."""
    return QUClient(
        cluster.client(k),
        QUThresholds.from_config(cluster.config),
        client_id=int(client_id(k)),
        rng=random.Random(seed * 31 + k),
        seq_start=1_000_000 * (k + 1),
        **options,
    )


@asynccontextmanager
async def open_cluster(
    tmp_path: Path,
    *,
    t: int = 1,
    b: int = 1,
    n: int | None = None,
    qc: int | None = None,
    m: int | None = None,
    clients: int = 2,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    durable: bool = False,
    map_size: int = 64 * MIN_MAP_SIZE,
    endpoint_options: dict[str, Any] | None = None,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    big_block_size: int | None = None,
    verification: VerificationPolicy | None = None,
    retention: RetentionPolicy | None = None,
    limits: LimitsPolicy | None = None,
    rejoin_heartbeat: float | None = None,
    node_clock_ns: Callable[[], int] | None = None,
    engine: str = "qu",
    views: bool = False,
    previous: ClusterConfig | None = None,
    max_objects: int = MAX_OBJECTS,
) -> AsyncIterator[Cluster]:
    """Start a cluster of ``n`` nodes in this trio loop; stop everything on exit.

    ``durable`` defaults to False here (tests run faster without fsync; crash tests that
    need it turn it on). The defaults for ``n``, ``qc`` and ``m`` follow
    :func:`bftfs.config.default_sizes`.  Lazy verification is off unless ``verification``
    is given: its timing-driven background reads would make the other tests' counters
    (rounds, repairs) depend on the scheduler; the tests of t5_rw_lazy.py turn it on.  For
    the same reason nodes send no heartbeats (``node/rejoin.py``) unless
    ``rejoin_heartbeat`` is given.  ``node_clock_ns``: the nodes' clock (history tests
    move it days ahead instead of waiting).  ``engine``: the metadata engine
    (``[cluster] engine``, docs/fab.md).  ``previous`` (with ``views``): another
    cluster's configuration, named as the previous generation of this cluster's first
    view (generation 2): its nodes then take the background mover's copies and forget no
    given-back block (issue 35, ``fs/generations/mover.py``); the other cluster is not told.
    ``max_objects``: what its clients name in one Q/U operation (``[cluster] max_objects``).
    """
    n_, qc_, m_ = default_sizes(t, b, n, qc, m)
    node_idents, client_idents = _identities(n_, clients)
    async with _listening(n_) as listeners:
        config = ClusterConfig(
            t=t,
            b=b,
            qc=qc_,
            m=m_,
            block_size=block_size,
            map_size=map_size,
            durable=durable,
            engine=engine,
            nodes=_node_specs(tmp_path, listeners, node_idents),
            clients=_client_specs(client_idents),
            home=tmp_path,
            inline_limit=inline_limit,
            big_block_size=big_block_size,
            verification=verification or VerificationPolicy(mode="off"),
            retention=retention or RetentionPolicy(),
            limits=limits or LimitsPolicy(),
            max_objects=max_objects,
        ).validate()
        config, admin_key = _with_views(config, previous) if views else (config, None)
        async with _running(
            config,
            (node_idents, client_idents),
            listeners,
            random.Random(seed).getrandbits(64),
            dict(TEST_ENDPOINT, **(endpoint_options or {})),
            rejoin_heartbeat,
            node_clock_ns,
            admin_key,
        ) as cluster:
            yield cluster


def _identities(n: int, clients: int) -> tuple[list[Identity], list[Identity]]:
    """Fresh key pairs of ``n`` nodes and ``clients`` clients.  Keys need not be
    reproducible (their values never steer a protocol decision), but the fault RNG is."""
    return (
        [Identity.generate(NodeId(i)) for i in range(n)],
        [Identity.generate(client_id(k)) for k in range(clients)],
    )


@asynccontextmanager
async def _listening(n: int) -> AsyncIterator[list[list[trio.SocketListener]]]:
    """Listeners of ``n`` nodes on ports the OS picks on loopback, closed on exit."""
    listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(n)]
    try:
        yield listeners
    finally:
        for ls in listeners:
            for lst in ls:
                lst.socket.close()


def _node_specs(
    home: Path, listeners: list[list[trio.SocketListener]], idents: list[Identity]
) -> tuple[NodeSpec, ...]:
    """Each node on its listener's port, its data under ``home/node<i>``."""
    return tuple(
        NodeSpec(
            NodeId(i),
            "127.0.0.1",
            ls[0].socket.getsockname()[1],
            idents[i].public,
            home / f"node{i}",
        )
        for i, ls in enumerate(listeners)
    )


def _client_specs(idents: list[Identity]) -> tuple[ClientSpec, ...]:
    return tuple(
        ClientSpec(client_id(k), f"client{k}", ident.public) for k, ident in enumerate(idents)
    )


def _with_views(
    config: ClusterConfig, previous: ClusterConfig | None
) -> tuple[ClusterConfig, AdminKey]:
    """``config`` with an administrator key and its first view (with ``previous``: of
    generation 2, moving from ``previous``'s nodes)."""
    admin_key = AdminKey.generate()
    config = replace(config, admin_key=admin_key.public).validate()
    admin_key.save(config.admin_key_path)
    init_view(config, admin_key)
    if previous is not None:
        moving_from(config, admin_key, previous)
    return config, admin_key


@asynccontextmanager
async def _running(
    config: ClusterConfig,
    identities: tuple[list[Identity], list[Identity]],
    listeners: list[list[trio.SocketListener]],
    seed: int,
    endpoint_options: dict[str, Any],
    rejoin_heartbeat: float | None,
    node_clock_ns: Callable[[], int] | None,
    admin_key: AdminKey | None,
) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` over ``config`` in a nursery of its own, each node started on its
    listeners; every node and endpoint cancelled on exit."""
    node_idents, client_idents = identities
    async with trio.open_nursery() as nursery:
        cluster = Cluster(
            config,
            node_idents,
            client_idents,
            nursery,
            seed,
            endpoint_options,
            rejoin_heartbeat=rejoin_heartbeat,
        )
        cluster.node_clock_ns = node_clock_ns
        cluster.admin_key = admin_key
        for i, ls in enumerate(listeners):
            await cluster.start(i, ls)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def moving_from(config: ClusterConfig, admin_key: AdminKey, previous: ClusterConfig) -> None:
    """Replace ``config``'s view 1 (not taken yet) with one of generation 2 whose previous
    generation is ``previous``'s nodes (each given a chain here, kept under
    ``<home>/previous``, so the view can name their keys for it)."""
    view, _ = current(config)
    for s in previous.nodes:
        new_chain(config, config.home / "previous" / f"node{s.id}", s.public_key, view.number)
    rows = tuple(ViewNode(s.id, s.host, s.port, s.public_key) for s in previous.nodes)
    gen = Generation(1, previous.t, previous.b, previous.qc, previous.m, rows)
    moved = replace(view, generation=2, previous=gen)
    write_signed(
        config.view_path, sign(with_view_keys(AdminChains(config.admin_key_path), moved), admin_key)
    )
