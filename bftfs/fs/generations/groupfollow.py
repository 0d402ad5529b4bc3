"""A mount over groups following the layout as groups are added and partitions move
(issue 66; docs/layout.md, "Moving partitions").

``fs/session.open_grouped_session`` opens one endpoint and plain clients per group and a
:class:`GroupFollower`, which the layout tracker tells of every newer layout:

- **groups added**: their endpoints and clients are opened in the background, in group
  order, each held by a task of the session's nursery (a context that opens a nursery
  is left by the task that entered it); the routers' calls to such a group wait for it
  (``fs/clients/grouproutes.py``).  Each new endpoint is hooked like the others: the
  tracker levels layouts over it, and the mount's leases hear its nodes' recalls.
- **partitions moving**: every group partitions move to gets :class:`~bftfs.fs.
  generations.partitions.MovingQU` and ``MovingRW`` as its route, and cross-group
  transactions bring their moving objects over first; a layout that moves nothing (the
  move finished) routes every group to its plain clients again.
- **recalls** from a group's nodes are believed for the objects that group holds or
  that move away from it (``group_pushes``): a source's nodes recall the leases on
  moving objects when they freeze.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import check_identity, client_identity, open_client
from bftfs.crypto import KeyRing
from bftfs.fs.clients import BlockClient, EngineClient
from bftfs.fs.clients.groups import GroupedQU, GroupedRW
from bftfs.fs.generations.partitions import FrozenGate, MovingQU, MovingRW, PartitionRouters
from bftfs.fs.generations.routers import update_mount
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.live import live_group_config
from bftfs.layout.model import Layout, LayoutError
from bftfs.layout.service import GET, LAYOUT_OID, PUT
from bftfs.layout.tracker import ClientLayout
from bftfs.membership.levelling import LAYOUT
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import RWClient, open_rw_client

if TYPE_CHECKING:
    from bftfs.fs.leases import Leases
    from bftfs.net.endpoint import Endpoint

log = logging.getLogger(__name__)

#: Longest one node's layout is waited for by the freeze gate (s).
ASK_TIMEOUT = 5.0
#: First and longest pause before a group a newer layout added is opened again (s).
FIRST_RETRY, MAX_RETRY = 1.0, 30.0


def group_pushes(push: Any, layout_of: Callable[[], Layout], group: int) -> Any:
    """A push handler for group ``group``'s connections: told each node's global id, not
    its index in the group (the ``b + 1`` pushes that make a recall believed come from
    distinct nodes of the cluster), and only the recalls of objects that live on that
    group or move away from it under the layout held then.  A node is trusted about its
    own group's objects only: counted for objects of other groups, liars in two groups
    (one each, as the layout allows) would together make ``b + 1`` pushes and a recall
    believed that no correct node sent."""

    def on_push(node: int, body: Any) -> None:
        layout = layout_of()
        members = layout.groups[group].members
        recall = body.get("recall") if isinstance(body, dict) else None
        if isinstance(recall, list):  # (a malformed one goes on, to be counted as such)
            mine = [o for o in recall if not _an_oid(o) or _of_group(layout, o, group)]
            body = dict(body, recall=mine)
        push(members[int(node)], body)

    return on_push


def _of_group(layout: Layout, oid: int, group: int) -> bool:
    return layout.group_of_object(oid) == group or layout.source_of_object(oid) == group


def _an_oid(o: Any) -> bool:
    """Whether ``o`` can name an object (anything else is left for the votes to count)."""
    return isinstance(o, int) and not isinstance(o, bool)


class GroupFollower:
    """What a mount's clients do as its layout changes (module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        client: str,
        qu: GroupedQU,
        rw: GroupedRW,
        tracker: ClientLayout,
        nursery: trio.Nursery,
        rw_options: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.client = config, client
        self.qu, self.rw, self.tracker = qu, rw, tracker
        self._nursery = nursery
        self._rw_options = rw_options or {}
        #: Each open group's endpoint, by group id.
        self.endpoints: list[Endpoint] = []
        self.leases: Leases | None = None
        self._opening = 0  # groups whose endpoints are open or being opened
        self._opener = trio.Lock()
        self.gate = FrozenGate(lambda: self.qu.layout, self._held_version, qc=config.qc)
        self.routers = PartitionRouters(
            lambda: self.qu.layout, self._plain_qu, self.gate, own_lease_moved=self._let_go
        )
        tracker.on_change.append(self._changed)

    # Opening -------------------------------------------------------------------------------

    def hook(self, ep: Endpoint, group: int) -> None:
        """Hook group ``group``'s open endpoint: layouts levelled (and, once the file
        system is open, :meth:`listen`), recalls heard."""
        self.endpoints.append(ep)
        self.tracker.attach(ep, group)
        if self.leases is not None:
            self._listen(ep, group)

    def _listen(self, ep: Endpoint, group: int) -> None:
        assert self.leases is not None
        members = self.qu.layout.groups[group].members
        self.leases.listen(ep, list(range(len(members))))
        ep.on_push = group_pushes(ep.on_push, lambda: self.qu.layout, group)

    def start(self, endpoints: Sequence[Endpoint]) -> None:
        """The session opened ``endpoints`` (groups ``0..``): hook them, and follow the
        layout held now (a mount opened during a move routes by it)."""
        self._opening = len(endpoints)
        for g, ep in enumerate(endpoints):
            self.hook(ep, g)
        self._route(self.qu.layout)

    def listen(self, leases: Leases | None) -> None:
        """The file system is open: its leases hear every group's recalls."""
        self.leases = leases
        if leases is not None:
            for g, ep in enumerate(self.endpoints):
                self._listen(ep, g)

    def _changed(self, old: Layout, new: Layout) -> None:
        if len(new.groups) > self._opening:
            self._nursery.start_soon(self._open_added, len(new.groups))
            self._opening = len(new.groups)
        self._route(new)

    async def _open_added(self, upto: int) -> None:
        """Open the groups up to ``upto`` not opened yet, in order; a group that cannot be
        opened now (its configuration, a key) is tried again after a growing pause, the
        calls routed to it waiting meanwhile: the mount goes on with the others."""
        pause = FIRST_RETRY
        async with self._opener:  # one opener at a time: each group is opened once
            while len(self.endpoints) < upto:
                g = len(self.endpoints)
                try:
                    await self._nursery.start(self._hold_group, g)
                except Exception as e:  # noqa: BLE001 - the session must outlive it
                    log.warning(
                        "session: cannot open group %d yet (%s): again in %.0f s", g, e, pause
                    )
                    await trio.sleep(pause)
                    pause = min(2 * pause, MAX_RETRY)
                    continue
                log.info(
                    "session: group %d (added by layout %d) is open", g, self.qu.layout.version
                )

    async def _hold_group(self, g: int, *, task_status: trio.TaskStatus[None]) -> None:
        """Open group ``g``'s endpoint and clients and hold them while the session runs."""
        # (from the layout: a mount's cluster.toml may predate the group's nodes)
        part = live_group_config(self.config, self.qu.layout, g)
        await check_identity(
            part, KeyRing(client_identity(part, self.client), part.node_public_keys())
        )
        async with (
            open_client(part, self.client) as ep,
            open_rw_client(ep, part, **self._rw_options) as rw,
        ):
            self.qu.add_group(QUClient(ep, QUThresholds.from_config(part), client_id=ep.pid))
            self.rw.add_group(rw)
            self.hook(ep, g)
            self._route(self.qu.layout)
            task_status.started()
            await trio.sleep_forever()

    async def consult_service(self) -> None:
        """Take the layout the layout service holds if it is newer than the mount's, and
        publish the mount's where the service holds an older one or none
        (``layout/service.py``: the nodes check the signature, so any client may); its
        failure is logged: handshakes level layouts anyway."""
        layout = self.qu.layout
        client = self.qu.clients[layout.objects[0]]
        try:
            held = await client.query(LAYOUT_OID, GET)
            there = codec.decode(held, self.tracker.admin).version if held else 0
            if there > self.tracker.number:
                self.tracker.offer(held)
            elif there < self.tracker.number:
                await client.update(LAYOUT_OID, PUT, self.tracker.blob)
                log.info(
                    "session: published layout %d (the service held %d)", layout.version, there
                )
        except Exception as e:  # noqa: BLE001 - an optional source of layouts
            log.info("session: the layout service: %s", e)

    # Routing -------------------------------------------------------------------------------

    def _route(self, layout: Layout) -> None:
        """Each group partitions move to (and whose clients are open) calls through the
        moving routers; every other group through its plain clients."""
        for routes in (self.qu.routes, self.rw.routes):
            routes.targets.clear()
        self.qu.bring = None
        if not layout.moving:
            return
        for g in range(len(self.qu.clients)):
            if layout.moving_in(g):
                self.qu.routes.targets[g] = MovingQU(self._plain_qu(g), self.routers)
                base = self.rw.clients[g]
                assert isinstance(base, RWClient)  # groups run PASIS
                self.rw.routes.targets[g] = MovingRW(
                    base, lambda: self.qu.layout, self._plain_rw, self.gate
                )
        self.qu.bring = self._bring

    async def _bring(self, objects: list[int], arg: Any) -> None:
        await self.routers.bring(objects, update_mount(arg))

    def _plain_qu(self, g: int) -> EngineClient:
        return self.qu.clients[g]

    def _plain_rw(self, g: int) -> BlockClient:
        return self.rw.clients[g]

    def _let_go(self, oids: list[int]) -> None:
        if self.leases is not None:
            self.leases.let_go(oids)

    async def _held_version(self, group: int, index: int) -> int | None:
        if group >= len(self.endpoints):
            return None
        return await held_version(self.endpoints[group], index, self.tracker.admin)


async def held_version(ep: Endpoint, index: int, admin: bytes) -> int | None:
    """The layout version node ``index`` of ``ep``'s group holds (its signed layout,
    checked; None when it does not answer in :data:`ASK_TIMEOUT` or answers garbage)."""
    with trio.move_on_after(ASK_TIMEOUT):
        try:
            blob = await ep.call(NodeId(index), LAYOUT.get, None)
            return codec.decode(blob, admin).version
        except LayoutError as e:
            log.warning("node %d: a bad layout: %s", index, e)
        except Exception as e:  # a node's failure is its own: asked again
            log.debug("node %d: layout.get: %s", index, e)
    return None
