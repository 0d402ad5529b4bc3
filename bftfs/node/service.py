"""A storage node: its store, its listener, its handlers, and its client of the others.

The node owns one LMDB :class:`~bftfs.node.store.Store`, one listening socket served by a
:class:`~bftfs.net.server.Server` (handshake, authenticated dispatch, fault hooks; the same
transport code a client speaks) and an :class:`~bftfs.net.endpoint.Endpoint` for
node-to-node calls.  Protocol modules register their handlers (``bftfs/node/protocols.py``)
through :meth:`Node.register`; handlers get a :class:`RequestContext` naming the
authenticated sender and the node.  Handlers refuse with ``HandlerError``
(``bftfs.net.server``); anything else is logged, counted and answered as ``internal``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bftfs import WIRE_VERSION, __version__
from bftfs.config import ClusterConfig
from bftfs.crypto import Identity, KeyRing
from bftfs.ids import PrincipalId
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.net.server import FastHandler, FaultHooks, HandlerError, Server
from bftfs.node import limits, rejoin
from bftfs.node.findings import Findings
from bftfs.node.method_costs import MethodCosts
from bftfs.node.moves import PartitionMoves
from bftfs.node.protocols import register_all
from bftfs.node.recalls import Recalls
from bftfs.node.store import Store, StoreFull
from bftfs.node.views import NodeViews
from bftfs.node.yielding import Foreground, Gate
from bftfs.qu.objects import ObjectType

if TYPE_CHECKING:
    from bftfs.node.rw_verifier import Verifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestContext:
    """Who sent a request (authenticated) and which node is handling it."""

    sender: PrincipalId
    node: Node


Handler = Callable[[RequestContext, Any], Awaitable[Any]]


class Node:
    """One storage node. Run with :meth:`run`; protocol modules call :meth:`register`."""

    #: What each Q/U method costs here (``node/method_costs.py``), once Q/U is served.
    method_costs: MethodCosts | None = None
    #: The check of the ids a request names (``node/placement.py``; None: every id).
    placement: Callable[[str, Any], None] | None = None
    #: The partitions the held layout moves out of and into this node's group
    #: (``node/moves.py``; nothing without a layout), which the protocol servers ask.
    moves: PartitionMoves
    #: Called once the node listens (its store open, its nursery running).
    when_serving: list[Callable[[Node], None]]

    def __init__(
        self,
        config: ClusterConfig,
        identity: Identity,
        *,
        listeners: list[trio.SocketListener] | None = None,
        faults: FaultHooks | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        endpoint_options: dict[str, Any] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        extra_object_types: Sequence[ObjectType] = (),
        rejoin_heartbeat: float | None = rejoin.DEFAULT_HEARTBEAT,
        serve_registers: bool = False,
    ) -> None:
        #: The view the node holds (node/views.py): it decides who may connect.
        self.views = NodeViews(
            config, config.node(identity.pid).data_dir, identity.pid, identity.public
        )
        config = self.views.config
        self.config = config
        self.id = identity.pid
        self.spec = config.node(self.id)
        self.keyring = KeyRing(identity, config.public_keys())
        self.log = logging.getLogger(f"bftfs.node.{self.id}")
        self.faults, self.now_ns, self.max_frame = faults, clock_ns, max_frame
        #: Q/U object types served besides the file system's, and whether Listeners registers
        #: are: as whoever starts the node asks (``bftfs node --test-objects``, ``--listeners``).
        self.extra_object_types, self.serve_registers = tuple(extra_object_types), serve_registers
        #: Answers the connections other principals open to this node.
        self.server: Server[RequestContext] = Server(
            self.keyring,
            context=lambda sender: RequestContext(sender, self),
            max_frame=max_frame,
            faults=faults,
            log=self.log,
            name=f"node {self.id}",
        )
        #: Requests by kind and outcome; protocol handlers add their own counters.
        self.stats = self.server.stats
        #: Per-client admission (``[limits]``, node/limits.py); nodes are exempt.
        self.server.admission = limits.admission_for(self)
        #: Frames and connections refused, by reason.
        self.rejected = self.server.rejected
        #: What every background step awaits: client requests go first (node/yielding.py).
        self.gate = Gate(
            Foreground(
                lambda: self.server.client_inflight, lambda: self.server.last_client_request
            ),
            self.stats,
        )
        #: Lease recalls pushed to their holders (node/recalls.py).
        self.recalls = Recalls(self.server.push, self.stats)
        self._listeners = listeners
        self.moves, self.when_serving = PartitionMoves(), []
        self._endpoint_options = endpoint_options or {}
        self._nursery: trio.Nursery | None = None
        self.store: Store = None  # type: ignore[assignment]  # set in run()
        self.endpoint: Endpoint = None  # type: ignore[assignment]  # set in run()
        self.started = time.time()
        #: The lazy-verification task (node/rw_verifier.py), when the policy runs one.
        self.verifier: Verifier | None = None
        #: What verification and scrub found, kept in the store (node/findings.py).
        self.findings = Findings(self)
        self.protocols: list[str] = []
        #: ``host:port`` of the node's Prometheus metrics, when it serves them (node/main.py).
        self.metrics_address: str | None = None
        #: Progress of background work by name (``qu.catchup``, ``rw.catchup``): plain
        #: values a protocol module keeps current, shown by ``bftfs status``.
        self.progress: dict[str, dict[str, Any]] = {}
        #: Set when the background work of the same name has finished (tests wait on it).
        self.finished: dict[str, trio.Event] = {}
        #: The protocols' start-up catch-ups by name, run again when the node comes back
        #: from being cut off (``rejoin.py``; ``None``: no heartbeats, no re-runs).
        self.catch_ups: dict[str, Callable[[], Awaitable[None]]] = {}
        self.rejoin_heartbeat = rejoin_heartbeat
        self.register("ping", _ping, inline=True)
        self.register("stats", _stats, inline=True)
        self.views.attach(self)
        # A status poll is not foreground work: it must not hold up lazy verification.
        self.server.monitoring.update(("ping", "stats"))

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        inline: bool = False,
        fast: FastHandler | None = None,
    ) -> None:
        """Route requests of ``kind`` to ``handler`` (one handler per kind; the built-in
        ``ping`` and ``stats`` may be replaced).  See :meth:`bftfs.net.server.Server.register`
        for ``inline`` and ``fast``.
        """
        retired = self.views.generation.check  # a retired node answers almost nothing

        def gate(kind: str, payload: Any) -> None:
            retired(kind)
            if self.placement is not None:
                try:
                    self.placement(kind, payload)
                except HandlerError:
                    self.stats["refused.misplaced"] += 1
                    raise

        self.server.register(
            kind,
            _full_is_refused(handler, kind, gate),
            inline=inline,
            fast=None if fast is None else _full_is_refused_now(fast, kind, gate),
            replace=kind in ("ping", "stats"),
        )

    def handler(self, kind: str) -> Handler | None:
        return self.server.handler(kind)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background for the node's lifetime."""
        assert self._nursery is not None, "node not running"
        self._nursery.start_soon(fn, *args)

    @property
    def last_client_request(self) -> float:
        """trio time of the latest request from a client (``Server.last_client_request``)."""
        return self.server.last_client_request

    @property
    def lmdb_path(self) -> Path:
        return self.spec.data_dir / "lmdb"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        self.store = Store(
            self.lmdb_path,
            map_size=self.config.map_size,
            durable=self.config.durable,
            reserve_fraction=1.0 - self.config.verification.data_fraction,
        )
        try:
            addresses = {s.id: (s.host, s.port) for s in self.config.nodes}
            async with open_endpoint(self.keyring, addresses, **self._endpoint_options) as ep:
                self.endpoint = ep
                self.views.started(self)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.store.committer)
                    nursery.start_soon(self.findings.run)
                    self.protocols = register_all(self, self.extra_object_types)
                    if self.rejoin_heartbeat is not None:
                        nursery.start_soon(
                            functools.partial(
                                rejoin.run, self, self.catch_ups, heartbeat=self.rejoin_heartbeat
                            )
                        )
                    listeners = self._listeners
                    if listeners is None:
                        listeners = await trio.open_tcp_listeners(
                            self.spec.port, host=self.spec.host
                        )
                    self._listeners = None  # a restarted node binds afresh
                    port = listeners[0].socket.getsockname()[1]
                    await nursery.start(trio.serve_listeners, self.server.serve, listeners)
                    self.log.info("node %s listening on %s:%s", self.id, self.spec.host, port)
                    for hook in self.when_serving:
                        hook(self)
                    task_status.started(port)
        finally:
            self._nursery = None
            self.store.close()

    def statistics(self) -> dict[str, Any]:
        """Counters and sizes for ``bftfs status`` (plain values, ready for the wire)."""
        return {
            "node": self.id,
            "version": __version__,
            "wire": WIRE_VERSION,
            "store_format": self.store.format if self.store is not None else None,
            "address": self.spec.address,
            "view": self.views.number,
            "uptime_s": round(time.time() - self.started, 1),
            "lmdb_bytes": self.store.size_bytes() if self.store is not None else 0,
            # Pages in use now (the verifier's figure in "progress" is from its last step).
            "used_bytes": self.store.used_recently() if self.store is not None else 0,
            "commits": self.store.commits if self.store is not None else 0,
            "requests": dict(self.stats),
            "rejected": dict(self.rejected),
            "traffic": dict(self.server.traffic),
            "protocols": self.protocols,
            "progress": {k: dict(v) for k, v in self.progress.items()},
            # Per Q/U method: requests, seconds to answer, CPU of steps (issue 62).
            "methods": self.method_costs.snapshot() if self.method_costs is not None else {},
            "limits": limits.statistics(self),
            "metrics": self.metrics_address,
            # The clients connected now, wherever their mounts run (issue 67).
            "sessions": self.server.sessions(),
            # The version each peer connected to this node runs (issue 67: upgrades).
            "peer_versions": self.server.peers(),
            # Capacity (issue 67): what the map may hold and the disk under the data
            # directory; ``bftfs status`` says nearfull/full from them.
            "map_bytes": self.config.map_size,
            "disk": limits.disk_space(self.spec.data_dir),
        }


def _full_is_refused(handler: Handler, kind: str, gate: Callable[[str, Any], None]) -> Handler:
    """A handler whose store write ran out of space answers ``full`` (the client reports
    ENOSPC), not ``internal``; ``gate(kind, payload)`` first (a retired node refuses
    ``kind``, a node of a group an id it does not hold)."""

    @functools.wraps(handler)
    async def wrapper(ctx: RequestContext, payload: Any) -> Any:
        gate(kind, payload)
        try:
            return await handler(ctx, payload)
        except StoreFull as e:
            ctx.node.stats["refused.full"] += 1
            raise HandlerError("full", str(e)) from None

    return wrapper


def _full_is_refused_now(
    fast: FastHandler, kind: str, gate: Callable[[str, Any], None]
) -> FastHandler:
    @functools.wraps(fast)
    def wrapper(ctx: Any, payload: Any) -> Any:
        gate(kind, payload)
        try:
            return fast(ctx, payload)
        except StoreFull as e:
            ctx.node.stats["refused.full"] += 1
            raise HandlerError("full", str(e)) from None

    return wrapper


async def _ping(ctx: RequestContext, payload: Any) -> Any:
    return {"node": ctx.node.id, "time_ns": ctx.node.now_ns(), "echo": payload}


async def _stats(ctx: RequestContext, payload: Any) -> Any:
    return ctx.node.statistics()
