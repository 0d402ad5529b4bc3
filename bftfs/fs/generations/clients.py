"""The protocol clients of every generation a session spans, opened as the session's view
changes (issue 35; docs/membership.md, "Generations").

A session holds, per live generation, an authenticated endpoint to that generation's nodes
(node ids repeat across generations, so one endpoint and key ring each), a Q/U client and
a PASIS client at that generation's thresholds (``configview.config_of_generation``).  The
file system sees only the switching clients of ``fs/clients/switch.py``; their target is

- the current generation's clients, when the view has no previous generation;
- the routers of ``fs/generations/routers.py`` over the current and previous generation's clients
  while objects move: the Q/U router waits, before its first read of the previous
  generation, until enough of its nodes answer ``gen.status`` frozen.

The view tracker (``membership/client.py``) calls :meth:`Generations.on_generation` when the
session takes a view of a later generation (the endpoint of the generation it held becomes
the previous one's) or the finishing view of a move; a new endpoint and clients are opened
for the new generation in the session's nursery and the targets switch.  Nothing is
remounted: calls in flight on the old generation that its frozen nodes refuse run again
on the new targets (``switch.Switch``).

The view of a new generation reaches the mount before its nodes run (``bftfs generation
new`` issues and pushes it, then the nodes are started): the targets switch to the routers
only once a Q/U quorum of the new nodes answers ``gen.status``
(:func:`~bftfs.fs.generations.routers.wait_answering`); until then the switch is pending
and the calls the frozen nodes refuse wait for it, however long the start takes.  The
leases' sessions then start again in the new generation (``on_new_generation``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import open_nodes
from bftfs.crypto import Identity
from bftfs.fs.clients import BlockClient, EngineClient, Switch, SwitchingQU, SwitchingRW
from bftfs.fs.clients.registerblocks import open_block_client
from bftfs.fs.generations.routers import (
    GenerationalQU,
    GenerationalRW,
    frozen_needed,
    wait_answering,
    wait_frozen,
)
from bftfs.ids import NodeId
from bftfs.membership.client import ClientViews
from bftfs.membership.configview import config_of_generation
from bftfs.membership.view import CURRENT, PREVIOUS, View
from bftfs.qu.classify import QUThresholds
from bftfs.rw.client import RWClient, open_rw_client

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint

log = logging.getLogger(__name__)

#: The request a node answers with its generation's state (``node/generation.py``).
STATUS = "gen.status"


@dataclass
class GenerationStack:
    """One generation's clients: its configuration, endpoint, Q/U and PASIS clients."""

    generation: int
    config: ClusterConfig
    ep: Endpoint
    qu: EngineClient
    rw: BlockClient  # PASIS's, or the register store of a cluster too small for it


class Generations:
    """The clients of the generations a session spans (module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        identity: Identity,
        views: ClientViews,
        stack: AsyncExitStack,
        nursery: trio.Nursery,
        make_qu: Callable[[ClusterConfig, Endpoint], EngineClient],
        rw_options: dict[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._identity = identity
        self.views = views
        self._stack = stack
        self._nursery = nursery
        self._make_qu = make_qu
        self._rw_options = rw_options or {}
        self._lock = trio.Lock()
        self.switch = Switch()
        self.current: GenerationStack
        self.previous: GenerationStack | None = None
        self.qu: SwitchingQU
        self.rw: SwitchingRW
        #: Told each new current generation's endpoint and node ids (the leases listen
        #: there for recalls), and the objects a move took this mount's lease from.
        self.on_current: Callable[[Endpoint, list[int]], None] | None = None
        self.let_go: Callable[[list[int]], Any] | None = None
        #: This mount's number (its leases' token), for the routers.
        self.mount = 0
        #: Told the new current generation's node count when the targets switch to a
        #: later generation (the leases' sessions start again there).
        self.on_new_generation: Callable[[int], None] | None = None

    @property
    def config(self) -> ClusterConfig:
        """The current generation's configuration."""
        return self.current.config

    async def start(self, ep: Endpoint) -> None:
        """Build the clients of the held view's generations; ``ep``: the endpoint
        ``connect.open_client`` opened from the configuration (the current generation's,
        with ``views`` attached)."""
        view = self.views.view
        self.current = await self._stack_on(ep, self._config_of(view, CURRENT), view.generation)
        if view.previous is not None:
            self.previous = await self._open(view, PREVIOUS)
        qu, rw = self._targets(view)
        self.qu, self.rw = SwitchingQU(qu, self.switch), SwitchingRW(rw, self.switch)
        self.views.on_generation = self._on_generation

    def _config_of(self, view: View, which: str) -> ClusterConfig:
        if view.generation == 1 and view.previous is None:
            return self._config  # a view of format 1 or 2: the configuration is the cluster's
        return config_of_generation(self._config, view, which)

    async def _open(self, view: View, which: str) -> GenerationStack:
        """A new endpoint to generation ``which`` of ``view`` (attached to the view
        tracker) and its clients, held open by a task of the session's nursery until the
        session ends (trio: a context that opens a nursery is left by the task that
        entered it)."""
        got: GenerationStack = await self._nursery.start(self._hold, view, which)
        return got

    async def _hold(
        self, view: View, which: str, *, task_status: trio.TaskStatus[GenerationStack]
    ) -> None:
        cfg = self._config_of(view, which)
        number = view.generation if which == CURRENT else view.generation - 1
        async with open_nodes(self._identity, cfg) as ep:
            self.views.attach(ep, which)
            async with open_rw_client(ep, cfg, **self._rw_options) as rw:
                task_status.started(GenerationStack(number, cfg, ep, self._make_qu(cfg, ep), rw))
                await trio.sleep_forever()

    async def _stack_on(self, ep: Endpoint, cfg: ClusterConfig, number: int) -> GenerationStack:
        rw = await self._stack.enter_async_context(open_block_client(ep, cfg, **self._rw_options))
        return GenerationStack(number, cfg, ep, self._make_qu(cfg, ep), rw)

    def _targets(self, view: View) -> tuple[EngineClient, BlockClient]:
        """What the switching clients forward to for ``view``."""
        cur, prev = self.current, self.previous
        if prev is None or view.previous is None:
            return cur.qu, cur.rw
        th = QUThresholds.from_config(prev.config)
        ready = functools.partial(
            wait_frozen,
            functools.partial(self._status, prev.ep),
            [int(s.id) for s in prev.config.nodes],
            frozen_needed(th.n, th.q, th.b),
            generation=prev.generation,
        )
        qu = GenerationalQU(
            cur.qu, prev.qu, ready=ready, mount=self.mount, own_lease_moved=self._let_go
        )
        assert isinstance(cur.rw, RWClient) and isinstance(prev.rw, RWClient)  # PASIS only
        return qu, GenerationalRW(cur.rw, prev.rw)

    async def _until_answering(self, stack: GenerationStack, view: View) -> None:
        """Wait until a Q/U quorum of ``stack``'s nodes (the generation ``view`` starts)
        answer ``gen.status``, or the session took a later view; meanwhile the switch is
        pending, and calls the frozen generation refuses wait for it (``switch.py``).
        Slow is not unavailable: the new nodes start after the view that names them,
        seconds later on a busy machine, and nothing fails for it."""
        nodes = [int(s.id) for s in stack.config.nodes]
        needed = QUThresholds.from_config(stack.config).q
        self.switch.pending = True
        try:
            log.info(
                "session: view %d starts generation %d: waiting for %d of its %d nodes",
                view.number, stack.generation, needed, len(nodes),
            )  # fmt: skip
            await wait_answering(
                functools.partial(self._status, stack.ep),
                nodes,
                needed,
                generation=stack.generation,
                stop=lambda: self.views.view.number != view.number,
            )
        finally:
            self.switch.pending = False

    @staticmethod
    async def _status(ep: Endpoint, node: int) -> Any:
        return await ep.call(NodeId(node), STATUS, None)

    def _let_go(self, oids: list[int]) -> None:
        if self.let_go is not None:
            self.let_go(oids)

    def _on_generation(self, old: View, new: View) -> None:
        """The view tracker took ``new``, of another generation or ending a move."""
        self._nursery.start_soon(self._advance, old, new)

    async def _advance(self, old: View, new: View) -> None:
        async with self._lock:
            # Whether the generation the targets used is gone for this mount (it slept through
            # a move: its nodes are retired and no longer prove the view): calls in flight
            # there, which no node can take, are cut short and run again on the new targets.
            # (A finished move abandons nothing: calls in flight run on the new generation.)
            abandon = False
            later = new.generation > old.generation
            if later:
                held = self.current
                moving = new.previous is not None and held.generation == new.generation - 1
                abandon = not moving
                opened = await self._open(new, CURRENT)
                if moving:
                    # Its nodes may not be started yet (the view comes first): the old
                    # generation's clients stay the targets until a quorum answers.
                    await self._until_answering(opened, new)
                self.previous = held if moving else None
                self.current = opened
                if self.on_current is not None:
                    self.on_current(self.current.ep, [int(s.id) for s in self.current.config.nodes])
            elif new.previous is None:
                self.previous = None  # the move finished: the previous generation retired
            qu, rw = self._targets(new)
            self.qu.target, self.rw.target = qu, rw
            if later and self.on_new_generation is not None:
                self.on_new_generation(self.current.config.n)
            self.switch.switched(abandon=abandon)
            log.info(
                "session: generation %s%s", new.generation,
                "" if self.previous is None else f", moving from {self.previous.generation}",
            )  # fmt: skip

    def statistics(self) -> str:
        """The routers' counters, for the log at unmount."""
        qu, rw = self.qu.target, self.rw.target
        if isinstance(qu, GenerationalQU) and isinstance(rw, GenerationalRW):
            return f"moves {dict(qu.moves)}, blocks read in the previous generation {rw.old_reads}"
        return f"generation {self.current.generation}, retried after a switch {self.switch.retried}"
