"""A node process's start-up: its identity, the :class:`~bftfs.node.service.Node`, its
metrics server, and the signals that stop it (``bftfs node --config C --id I`` parses its
options and calls :func:`run`).

What the node serves besides the file system's object types, and any fault hooks, come
from whoever starts it: the CLI's ``--test-objects`` and ``--byzantine`` (the node package
never imports ``bftfs.testing``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from bftfs import metrics as metricsmod
from bftfs import proc, sdnotify
from bftfs.config import ClusterConfig, NodeSpec
from bftfs.crypto import Identity, KeyFileError
from bftfs.gcpace import QUIET, FullCollections, take_over
from bftfs.layout.groups import place_node
from bftfs.layout.service import layout_type
from bftfs.net.server import FaultHooks, Server
from bftfs.node.layouts import NodeLayouts
from bftfs.node.nodemetrics import node_metrics
from bftfs.node.placement import Check, guard
from bftfs.node.protocols import PRODUCTION_TYPES
from bftfs.node.service import Node
from bftfs.node.storeformat import StoreFormatError
from bftfs.qu.objects import ObjectType

log = logging.getLogger(__name__)


E = TypeVar("E", bound=BaseException)


class StartError(Exception):
    """The node cannot start as asked (its port or its metrics port cannot be bound): the
    message says which and why."""


def load_identity(spec: NodeSpec) -> Identity:
    """The node's key pair from ``spec.key_path``, checked against the configuration.

    Raises:
        KeyFileError: the key is missing, unreadable, readable by others, or not this
            node's (its public key is not the one ``cluster.toml`` names).
    """
    ident = Identity.load(spec.id, spec.key_path)
    if ident.public != spec.public_key:
        raise KeyFileError(f"{spec.key_path} does not match node {spec.id}'s public key")
    return ident


def run(
    cfg: ClusterConfig,
    node_id: int,
    *,
    faults: FaultHooks | None = None,
    extra_object_types: Sequence[ObjectType] = (),
    metrics_addr: str = "127.0.0.1",
    metrics_port: int | None = None,
    batch_sched: bool = False,
    serve_registers: bool = False,
) -> None:
    """Run node ``node_id`` of ``cfg`` in this process until SIGTERM or SIGINT; with a
    layout (``bftfs init --groups``), as its index in its group's configuration
    (``layout/groups.place_node``), refusing ids of other groups (``node/placement.py``).

    Args:
        faults: fault hooks (``--byzantine``), or None for a correct node.
        extra_object_types: Q/U object types served besides the file system's.
        metrics_port: serve Prometheus metrics there (0: any free port), or not at all.
        batch_sched: run under SCHED_BATCH (``bftfs up`` asks for it).
        serve_registers: also serve Listeners registers (``--listeners``).

    Raises:
        KeyFileError: see :func:`load_identity`.
        LayoutError: the layout is bad, or puts the node in no group (exit 3).
        StartError: the node's port or its metrics port cannot be bound.
    """
    where = in_group(cfg, node_id, extra_object_types)
    spec = where.config.node(where.index)
    ident = load_identity(spec)
    if batch_sched:
        # A local cluster shares its cores with the client: SCHED_BATCH stops a node that
        # a request wakes from preempting the client mid-fan-out (measured: fan-out to 6
        # local nodes 1.08 ms -> 0.83 ms median). Harmless on a dedicated machine.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    async def main() -> None:
        node = where.node(ident, extra_object_types, faults=faults, serve_registers=serve_registers)
        metrics = None
        port_file = spec.data_dir / "metrics.port"
        port_file.unlink(missing_ok=True)  # an earlier run's: not this one's address
        if metrics_port is not None:
            # Before the node listens: whoever sees it answer finds its metrics.port.
            metrics = _metrics_server(node, metrics_addr, metrics_port)
            node.metrics_address = f"{metrics.address}:{metrics.port}"
        try:
            async with trio.open_nursery() as nursery:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    await nursery.start(node.run)
                    collections = FullCollections(_quiet(node.server))
                    node.progress["gc"] = collections.stats  # (in its stats reply)
                    nursery.start_soon(collections.run)
                    # Listening: a Type=notify unit (bftfs-node@.service) counts as started now.
                    sdnotify.notify(f"READY=1\nSTATUS=node {spec.id} serving {spec.address}")
                    async for sig in signals:
                        log.info(
                            "node %s: %s received, shutting down", spec.id, signal.Signals(sig).name
                        )
                        sdnotify.notify("STOPPING=1")
                        nursery.cancel_scope.cancel()
                        break
        finally:
            if metrics is not None:
                metrics.close()
                port_file.unlink(missing_ok=True)

    proc.keep_big_buffers()
    take_over()  # full collections when no client request is in flight (bftfs/gcpace.py)
    try:
        trio.run(main)
    except (OSError, StoreFormatError, BaseExceptionGroup) as e:
        raise _listen_error(e, spec) from None
    log.info("node %s stopped", spec.id)


@dataclass(frozen=True)
class InGroup:
    """Where node ``node_id`` of a cluster runs (:func:`in_group`): the configuration and
    id it runs as, the check of what it holds and the layout it holds (None, None: a
    cluster of one group)."""

    config: ClusterConfig
    index: int
    placement: Check | None
    layouts: NodeLayouts | None

    def node(
        self, ident: Identity, extra_object_types: Sequence[ObjectType] = (), **options: Any
    ) -> Node:
        """The :class:`Node` (``options`` are its own) serving ``extra_object_types``
        besides the file system's, the ``txn`` type of the layout it holds, and refusing
        what its group does not hold; a new :func:`in_group` for each start (it holds a
        layout once)."""
        if self.layouts is not None:  # the cross-group commit, the layout service
            service = layout_type(self.layouts.admin)  # (layout/nodetxn.py, service.py)
            extra_object_types = (*extra_object_types, self.layouts.txn.type, service)
        node = Node(self.config, ident, extra_object_types=extra_object_types, **options)
        node.placement = self.placement
        if self.layouts is not None:  # newer layouts taken while running (node/layouts.py)
            self.layouts.attach(node)
        return node


def in_group(cfg: ClusterConfig, node_id: int, types: Sequence[ObjectType]) -> InGroup:
    """Where node ``node_id`` runs, serving ``types`` and the file system's in its
    transactions: with a layout (the newer of the cluster's and the node's own copy), as
    its index in its group's configuration (``layout/groups.place_node``: a group added by
    a moving layout is a group as any), refusing other groups' ids (``node/placement.py``);
    else as ``node_id`` of ``cfg``, no check."""
    data_dir = cfg.node(node_id).data_dir
    types = (*types, *PRODUCTION_TYPES)
    placed = place_node(cfg, node_id, data_dir)
    if placed is None:
        return InGroup(cfg, node_id, None, None)
    log.info(
        "node %s runs as node %s of group %s (%s)",
        node_id, placed.index, placed.group, placed.layout.describe(),
    )  # fmt: skip
    layouts = NodeLayouts(cfg, placed, node_id, data_dir, types)
    return InGroup(placed.config, placed.index, guard(placed.layout, placed.group), layouts)


def _quiet(server: Server[Any]) -> Callable[[float], bool]:
    """Whether no client request has been in flight for :data:`gcpace.QUIET` seconds at a
    trio time: when a node's full garbage collection delays nobody."""
    return lambda now: server.client_inflight == 0 and now - server.last_client_request >= QUIET


def _listen_error(e: BaseException, spec: NodeSpec) -> BaseException:
    """A node that could not bind its port: a message naming the port and, for a port in
    use, the process holding it (``proc.describe_port_holder``); a store of a newer format
    (``node/storeformat.py``); anything else unchanged."""
    newer = _first(e, StoreFormatError)
    if newer is not None:
        return StartError(f"node {spec.id}: {newer}")
    os_error = _first(e, OSError)
    if os_error is None:
        return e
    why = os_error.strerror or str(os_error)
    if os_error.errno == errno.EADDRINUSE:
        why += f": {proc.describe_port_holder(spec.port)} (stop it, or give node {spec.id} "
        why += "another port in cluster.toml)"
    return StartError(f"node {spec.id}: cannot listen on {spec.address}: {why}")


def _first(e: BaseException, kind: type[E]) -> E | None:
    """``e`` itself or the first ``kind`` inside it (trio's nurseries group exceptions)."""
    if isinstance(e, kind):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := _first(inner, kind)) is not None:
                return found
    return None


def _metrics_server(node: Node, addr: str, port: int) -> metricsmod.MetricsServer:
    """Serve the node's Prometheus metrics (``--metrics-port``); the port chosen is logged
    and written to ``node<I>/metrics.port`` (``0`` asks the OS for a free one)."""
    try:
        server = metricsmod.serve(addr, port, functools.partial(node_metrics, node))
    except OSError as e:
        raise StartError(
            f"node {node.id}: cannot serve metrics on {addr}:{port}: {e.strerror}"
        ) from None
    (node.spec.data_dir / "metrics.port").write_text(f"{server.address}:{server.port}\n")
    return server
