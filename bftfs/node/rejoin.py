"""Catch-up after a partition: a node that was cut off from the others and comes back
runs its start-up catch-ups again.

A node that restarts catches up at start (``qu_catchup.py``, ``rw_catchup.py``).  A node
that keeps running while its network is cut (a pulled cable, a partitioned host) misses
every update made meanwhile just the same, but nothing restarts it: clients repair what
they touch, and lazy verification only looks at blocks that reached the node.  So every
node pings its peers every ``heartbeat`` seconds; when it reached fewer than
``n - 1 - t`` of them (more peers silent than the cluster tolerates down: from its side,
it is the one cut off) for ``isolated_rounds`` heartbeats in a row, and then reaches
enough again, it runs every registered catch-up once more (one at a time per protocol;
one already running is not started twice).  A single peer down, or ``t`` of them, is the
normal degraded state and triggers nothing.

The decision is :class:`Reachability` (pure); :func:`run` is the thin trio driver.
``node.progress["rejoin"]`` shows what it sees (``bftfs status``), with ``peers``: for each
peer whether the last heartbeat reached it and when one last did (the node's metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import PrincipalId
from bftfs.net.errors import RemoteError, TransportError

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

log = logging.getLogger(__name__)

#: Seconds between two rounds of pings (each ping waits at most this long).
DEFAULT_HEARTBEAT = 2.0
#: Rounds below the threshold before the node counts as cut off (one slow round on a busy
#: machine is not a partition).
ISOLATED_ROUNDS = 2


class Reachability:
    """Whether a node is cut off, from how many peers answered each round."""

    def __init__(self, needed: int, isolated_rounds: int = ISOLATED_ROUNDS) -> None:
        self.needed = needed
        self.isolated_rounds = isolated_rounds
        self.below = 0  # rounds in a row with fewer than ``needed`` peers
        self.rejoins = 0

    @property
    def cut_off(self) -> bool:
        return self.below >= self.isolated_rounds

    def observe(self, reachable: int) -> bool:
        """Record one round; whether the node has just come back from being cut off."""
        if reachable < self.needed:
            self.below += 1
            return False
        back = self.cut_off
        self.below = 0
        if back:
            self.rejoins += 1
        return back


async def _reached(node: NodeParts, peer: PrincipalId, timeout: float) -> bool:
    try:
        await node.endpoint.call(peer, "ping", None, timeout=timeout)
    except (TransportError, RemoteError):
        return False
    return True


async def run(
    node: NodeParts,
    catch_ups: dict[str, Callable[[], Awaitable[None]]],
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> None:
    """Ping the peers forever; re-run ``catch_ups`` (by name) when the node rejoins."""
    cfg = node.config
    peers = [PrincipalId(s.id) for s in cfg.nodes if s.id != node.id]
    seen = Reachability(needed=max(1, len(peers) - cfg.t))
    progress = node.progress["rejoin"] = {"state": "connected", "reachable": len(peers)}
    #: Per peer, for ``bftfs status`` and the metrics: whether the last heartbeat reached
    #: it and when one last did (wall-clock seconds; None: never since this node started).
    heard: dict[str, dict[str, Any]] = {
        str(p): {"reached": False, "last_heard": None} for p in peers
    }
    progress["peers"] = heard
    running: set[str] = set()

    async def again(name: str, fn: Callable[[], Awaitable[None]]) -> None:
        running.add(name)
        try:
            await fn()
        finally:
            running.discard(name)

    async with trio.open_nursery() as nursery:
        while True:
            answers: dict[PrincipalId, bool] = {}

            async def ping(peer: PrincipalId, answers: dict[PrincipalId, bool] = answers) -> None:
                answers[peer] = await _reached(node, peer, heartbeat)

            async with trio.open_nursery() as pings:
                for peer in peers:
                    pings.start_soon(ping, peer)
            reachable = sum(answers.values())
            now = time.time()
            for peer, reached in answers.items():
                heard[str(peer)]["reached"] = reached
                if reached:
                    heard[str(peer)]["last_heard"] = round(now, 3)
            back = seen.observe(reachable)
            progress.update(
                state="cut off" if seen.cut_off else "connected",
                reachable=reachable,
                rejoins=seen.rejoins,
            )
            if back:
                log.info(
                    "node %s reaches %d of %d peers again after being cut off: catching up",
                    node.id,
                    reachable,
                    len(peers),
                )
                node.stats["rejoin.catch_ups"] += 1
                for name, fn in catch_ups.items():
                    if name not in running:
                        nursery.start_soon(again, name, fn)
            await trio.sleep(heartbeat)
