"""Per-node and per-link fault injection for the in-process cluster.

A :class:`FaultInjector` sits inside one node (``Node(faults=...)``) and decides, for every
frame and request that reaches that node, whether to corrupt, drop, duplicate, delay or
reorder it, and whether to drop the reply.  Faults can be set for all senders or for one
link (``injector.link(peer)``).  Every random choice comes from the injector's seeded
``random.Random``, so a failing schedule can be replayed.  ``byzantine(kind, wrapper)`` swaps
the node's handler for one request kind: ``wrapper(ctx, payload, honest)`` may call the real
handler and lie about its answer, or never call it.  ``fab(behaviour)`` makes the node's
FaB engine Byzantine: the behaviour rewrites what its core sends (``node/fab_server.py``
takes the rewriting from :meth:`FaultInjector.fab_rewrite`).

Crash and crash-recover act on the whole node and are driven by the cluster
(``bftfs.testing.cluster``); the injector only forwards them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bftfs.ids import PrincipalId, client_id
from bftfs.testing.byzantine.fab import Behaviour as FabBehaviour
from bftfs.testing.byzantine.fab import Liar

if TYPE_CHECKING:
    from bftfs.fab.messages import Message
    from bftfs.fab.replica import Replica, Send
    from bftfs.node.service import Handler, RequestContext
    from bftfs.testing.cluster import Cluster

Wrapper = Callable[["RequestContext", Any, "Handler"], Awaitable[Any]]


@dataclass
class LinkFaults:
    """Fault rates for the messages on one link (or all links) into a node."""

    drop_p: float = 0.0
    duplicate_p: float = 0.0
    delay_s: float = 0.0
    reorder_s: float = 0.0
    corrupt_p: float = 0.0

    def drop(self, p: float) -> LinkFaults:
        """Lose each request, and independently each reply, with probability ``p``."""
        self.drop_p = p
        return self

    def duplicate(self, p: float) -> LinkFaults:
        """Deliver each request twice with probability ``p`` (as a resending client would)."""
        self.duplicate_p = p
        return self

    def delay(self, seconds: float) -> LinkFaults:
        """Hold every request for ``seconds`` before handling it."""
        self.delay_s = seconds
        return self

    def reorder(self, max_delay: float) -> LinkFaults:
        """Hold each request a random time up to ``max_delay``, so later ones overtake it."""
        self.reorder_s = max_delay
        return self

    def corrupt(self, p: float) -> LinkFaults:
        """Flip one bit of a received frame with probability ``p`` (the MAC must catch it)."""
        self.corrupt_p = p
        return self

    def clear(self) -> LinkFaults:
        self.drop_p = self.duplicate_p = self.delay_s = self.reorder_s = self.corrupt_p = 0.0
        return self


class FaultInjector:
    """The faults of one node; the node consults it through the ``FaultHooks`` protocol."""

    def __init__(self, rng: random.Random, cluster: Cluster | None = None, index: int = 0):
        self.rng = rng
        self.all = LinkFaults()
        self.links: dict[PrincipalId, LinkFaults] = {}
        self.overrides: dict[str, Wrapper] = {}
        #: The FaB engine's Byzantine behaviour (:meth:`fab`); None: honest.
        self.fab_behaviour: FabBehaviour | None = None
        #: The node's FaB core, once its engine started (:meth:`fab_rewrite`).
        self.fab_replica: Replica | None = None
        self._victim = int(client_id(0))
        self._cluster = cluster
        self._index = index
        self.corrupted = 0
        self.dropped = 0
        self.duplicated = 0

    # Configuration (what tests call) ------------------------------------------------------
    def link(self, peer: int) -> LinkFaults:
        """The faults of requests from ``peer`` only (overrides the all-links setting)."""
        return self.links.setdefault(PrincipalId(peer), LinkFaults())

    def drop(self, p: float) -> LinkFaults:
        return self.all.drop(p)

    def duplicate(self, p: float) -> LinkFaults:
        return self.all.duplicate(p)

    def delay(self, seconds: float) -> LinkFaults:
        return self.all.delay(seconds)

    def reorder(self, max_delay: float) -> LinkFaults:
        return self.all.reorder(max_delay)

    def corrupt(self, p: float) -> LinkFaults:
        return self.all.corrupt(p)

    def fab(self, behaviour: FabBehaviour | None, victim: int = int(client_id(0))) -> None:
        """Make this node's FaB engine Byzantine: ``behaviour`` rewrites what its core
        sends (:mod:`bftfs.testing.byzantine.fab`; None: honest again).  ``victim``: the
        client a made-up request claims to come from."""
        self.fab_behaviour = behaviour
        self._victim = victim

    def byzantine(self, kind: str, wrapper: Wrapper) -> None:
        """Replace this node's handler for ``kind`` by ``wrapper(ctx, payload, honest)``."""
        self.overrides[kind] = wrapper

    def honest(self, kind: str | None = None) -> None:
        """Undo :meth:`byzantine` for ``kind`` (or for every kind)."""
        if kind is None:
            self.overrides.clear()
        else:
            self.overrides.pop(kind, None)

    def clear(self) -> None:
        """Remove every link fault and Byzantine override."""
        self.all.clear()
        self.links.clear()
        self.overrides.clear()
        self.fab_behaviour = None

    def crash(self) -> None:
        """Stop the node abruptly (see ``Cluster.crash``)."""
        assert self._cluster is not None
        self._cluster.crash(self._index)

    async def recover(self) -> None:
        """Restart the node on its LMDB directory and port (see ``Cluster.recover``)."""
        assert self._cluster is not None
        await self._cluster.recover(self._index)

    # Hooks (what the node calls) ----------------------------------------------------------
    def _faults(self, sender: PrincipalId | None) -> LinkFaults:
        if sender is not None:
            lf = self.links.get(sender)
            if lf is not None:
                return lf
        return self.all

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes:
        lf = self._faults(sender)
        if lf.corrupt_p and frame and self.rng.random() < lf.corrupt_p:
            self.corrupted += 1
            buf = bytearray(frame)
            buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
            return bytes(buf)
        return frame

    def plan(self, sender: PrincipalId) -> list[float]:
        lf = self._faults(sender)
        if lf.drop_p and self.rng.random() < lf.drop_p:
            self.dropped += 1
            return []
        copies = 2 if lf.duplicate_p and self.rng.random() < lf.duplicate_p else 1
        if copies == 2:
            self.duplicated += 1
        return [
            lf.delay_s + (self.rng.uniform(0, lf.reorder_s) if lf.reorder_s else 0.0)
            for _ in range(copies)
        ]

    def drop_reply(self, sender: PrincipalId) -> bool:
        lf = self._faults(sender)
        return bool(lf.drop_p) and self.rng.random() < lf.drop_p

    def fab_rewrite(self, replica: Replica) -> Callable[[Send], list[tuple[int, Message]] | None]:
        """The node's FaB core is ``replica`` (kept in :attr:`fab_replica` for the tests to
        read); its sends go through :attr:`fab_behaviour`, honest while it is None."""
        self.fab_replica = replica

        def rewrite(send: Send) -> list[tuple[int, Message]] | None:
            if self.fab_behaviour is None:
                return None
            return self.fab_behaviour(Liar(replica, self.rng, self._victim), send)

        return rewrite

    def handler(self, kind: str) -> Wrapper | None:
        return self.overrides.get(kind) if self.overrides else None
