"""Fail fast when the cluster is not there (issue 67; etcdctl's ``--dial-timeout``, 2 s).

A command that needs the cluster (the history commands, ``restore``, ``verify``) waited
out every retry of its protocol client - 50 s - before saying that the cluster does not
answer, when no node even accepted a connection.  Before it starts, each node's port is
tried for :data:`DIAL_TIMEOUT` seconds: once ``n - t`` accept (no operation completes with
fewer live), the command runs, however slowly they then answer (slow is not unavailable);
if fewer do, it stops with exit 4 naming the nodes that refused.  The probes send nothing:
a node counts them apart from the connections it refuses (``probes``)."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from bftfs.cli.common import EXIT_CLUSTER, QuietError
from bftfs.config import ClusterConfig, NodeSpec

#: Seconds the nodes' ports are tried before the command gives up.
DIAL_TIMEOUT = 2.0
#: Seconds between rounds of tries at the nodes that have not accepted yet.
RETRY = 0.2


async def accepting(cfg: ClusterConfig, timeout: float = DIAL_TIMEOUT) -> set[int]:
    """The nodes whose port accepted a connection within ``timeout`` seconds (stops as
    soon as ``n - t`` have)."""
    need = cfg.n - cfg.t
    up: set[int] = set()
    with trio.move_on_after(timeout):
        while True:
            async with trio.open_nursery() as nursery:
                for spec in cfg.nodes:
                    if spec.id not in up:
                        nursery.start_soon(_try, spec.id, spec.host, spec.port, up)
            if len(up) >= need:
                return up
            await trio.sleep(RETRY)  # refused at once: try again shortly, within the budget
    return up


async def listening(nodes: Sequence[NodeSpec], timeout: float = DIAL_TIMEOUT) -> set[int]:
    """The nodes of ``nodes`` whose port accepts a connection now: one try each, at once
    (a push skips the others rather than wait out its retries: ``bftfs group add`` on a
    cluster not running returns at once; they learn the layout later)."""
    up: set[int] = set()
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for spec in nodes:
                nursery.start_soon(_try, spec.id, spec.host, spec.port, up)
    return up


async def _try(node: int, host: str, port: int, up: set[int]) -> None:
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError):
        return
    up.add(node)
    await stream.aclose()


def require_reachable(cfg: ClusterConfig, timeout: float = DIAL_TIMEOUT) -> None:
    """Return once ``n - t`` nodes accept connections; else raise a clear error.

    Raises:
        QuietError: fewer than ``n - t`` nodes accepted within ``timeout`` (exit 4)."""
    up = trio.run(accepting, cfg, timeout)
    if len(up) >= cfg.n - cfg.t:
        return
    down = [s.id for s in cfg.nodes if s.id not in up]
    raise QuietError(
        f"the cluster does not answer: node(s) {', '.join(map(str, down))} refuse connections "
        f"or do not accept within {timeout:g} s, and {cfg.n - cfg.t} of {cfg.n} must "
        "(is it up? bftfs status)",
        EXIT_CLUSTER,
    )
