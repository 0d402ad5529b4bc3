"""A file system connected to a cluster: what a mount (or any program) opens.

The fs layer builds its protocol clients - the authenticated endpoint, the Q/U client and
the PASIS client - from the cluster configuration, so the FUSE layer sees only
:class:`~bftfs.fs.filesystem.FileSystem` (docs/architecture.md, layering).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import check_identity, client_identity, open_client
from bftfs.crypto import KeyRing
from bftfs.fab.metaclient import FabMetaClient
from bftfs.fs.clients import BlockClient, EngineClient, MetadataClient, Seal
from bftfs.fs.clients.groups import GroupedQU, GroupedRW
from bftfs.fs.clients.registerblocks import open_block_client
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.generations import Generations
from bftfs.fs.generations.groupfollow import GroupFollower
from bftfs.fs.history import FabPast, Past
from bftfs.layout.groups import group_config, layout_path, load_layout, placed_config
from bftfs.layout.model import Layout
from bftfs.layout.tracker import ClientLayout
from bftfs.membership.client import ClientViews
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import RWClient, open_rw_client

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint

log = logging.getLogger(__name__)

#: Seconds the end of a session goes on sending what it holds back without any of it
#: reaching the servers before it gives up (and says what is lost).  While it delivers,
#: it goes on however long that takes: slow is not unavailable.
WRITE_BACK_STALLED = 60.0
#: Seconds between its passes over what is still held back.
WRITE_BACK_RETRY = 1.0
#: Seconds between its looks at how much is left (progress) during a pass.
WRITE_BACK_WATCH = 0.5


@dataclass
class Session:
    """An open file system and the protocol clients under it (for their statistics)."""

    fs: FileSystem
    qu: MetadataClient  # over QUClient, or FabMetaClient for an engine = "fab" cluster
    rw: BlockClient
    #: The endpoint under both (``bftfs.net.endpoint.Endpoint``: its transport faults).
    endpoint: Endpoint | None = None
    #: The clients of each generation the session spans (``fs/generations/clients.py``).
    generations: Generations | None = None
    #: Changes the session's end could not send and lost (:func:`write_back_at_end`):
    #: the mount daemon tells ``bftfs umount`` (``fuse/control.py`` ``lost_file``).
    lost_at_end: int = 0

    def faults(self) -> dict[int, dict[str, int]]:
        """The faults this client detected, per node and kind: the PASIS client's
        (``corrupt``, ``malformed``, ``refuted``, ``time_ahead``), the Q/U client's
        (``culled``, ``malevolent``, ``malformed``: both clients' malformed replies add up)
        and the transport's (``timeout``, ``unreachable``, frame rejections such as
        ``bad_mac``)."""
        out: dict[int, dict[str, int]] = {}
        sources = [self.rw.faults, self.qu.faults]
        if self.endpoint is not None:
            sources.append(self.endpoint.faults)
        for counter in sources:
            for (node, kind), count in list(counter.items()):
                per = out.setdefault(int(node), {})
                per[kind] = per.get(kind, 0) + count
        return out

    def past(self, config: ClusterConfig) -> Past:
        """History reads over this session's clients (the snapshots a live mount shows
        under ``.snapshots``, ``fs/snapshotdir.py``): no connection of their own.  A FaB
        cluster's are read by its own client (it serves versions; FaB clusters do not
        change generation)."""
        meta: MetadataClient = self.qu
        if config.engine == "fab" and self.generations is not None:
            meta = self.generations.current.qu
        return past_of(config, meta, self.endpoint, self.rw)

    def statistics(self) -> str:
        """What the protocol clients did, for a log at unmount."""
        out = (
            f"Q/U operations:\n{self.fs.method_statistics()}\n"
            f"Q/U client: {self.qu.statistics()}\nPASIS client: {self.rw.statistics()}"
        )
        if self.generations is not None:
            out += f"\ngenerations: {self.generations.statistics()}"
        return out


def metadata_client(config: ClusterConfig, ep: Endpoint) -> EngineClient:
    """The client of the cluster's metadata engine (``[cluster] engine``): the Q/U client,
    or the FaB client with the same calls (docs/fab.md)."""
    if config.engine == "fab":
        return FabMetaClient(ep, [int(s.id) for s in config.nodes], config.b)
    return QUClient(ep, QUThresholds.from_config(config), client_id=ep.pid)


def past_of(config: ClusterConfig, meta: Any, ep: Any, rw: Any) -> Past:
    """History reads over the clients given: Q/U's chains walked, or a FaB cluster's
    versions read (``fs/fabpast.py``)."""
    if config.engine == "fab":
        return FabPast(meta, rw, config.block_size, seal=Seal.of(config))
    th = QUThresholds.from_config(config)
    return Past(meta, PastReader(ep, th), rw, config.block_size, seal=Seal.of(config))


@asynccontextmanager
async def open_session(
    config: ClusterConfig, client: str, *, end_wait: float = WRITE_BACK_STALLED, **options: Any
) -> AsyncIterator[Session]:
    """The file system of ``config``'s cluster as client ``client`` (its key from the
    cluster directory); ``options`` go to :func:`open_file_system`.  ``end_wait``: how
    long the session's end goes on without progress sending what it holds back
    (:func:`write_back_at_end`).  Creates the root
    directory if the cluster has none.  The session follows the view: a change of
    generation while it runs opens the new generation's clients, and the file system
    goes on over both while objects move (``fs/generations/clients.py``)."""
    layout = load_layout(config)
    if layout is not None:  # a cluster of groups (docs/layout.md, "Placement")
        grouped = open_grouped_session(config, layout, client, end_wait=end_wait, **options)
        async with grouped as session:
            yield session
        return
    ident = client_identity(config, client)
    ring = KeyRing(ident, config.node_public_keys())
    await check_identity(config, ring)  # an unknown key fails now, not after every timeout
    views = ClientViews(config)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        ep = await stack.enter_async_context(open_client(config, client, views=views))
        gens = Generations(config, ident, views, stack, nursery, metadata_client)
        await gens.start(ep)
        fs = await stack.enter_async_context(
            open_file_system(gens.qu, gens.rw, gens.config, **options)
        )
        gens.mount = fs.meta.lease_token
        # Read-ahead sized from this endpoint's links (fs/files/window.py): a read takes
        # fragments from m nodes.
        m = gens.config.m
        fs.engine.fetcher.links = lambda: ep.bandwidth_delay(m)
        # A query waiting for another client's publication is told when it lands.
        fs.meta.hints.listen(ep, gens.config.node_ids)
        leases = fs.meta.leases
        if leases is not None:
            # Recalls are pushed by the nodes over this client's connections: keep one
            # open to each node, and give every lease back at the end.
            leases.listen(ep, gens.config.node_ids)
            gens.on_current = leases.listen
            gens.let_go = leases.let_go
            gens.on_new_generation = leases.new_generation
        session = Session(fs, gens.qu, gens.rw, ep, gens)
        try:
            yield session
        finally:  # what closes and failed sends left goes now
            session.lost_at_end = await write_back_at_end(fs, stalled_after=end_wait)
            if leases is not None:
                with trio.move_on_after(5):
                    await leases.release_all()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_grouped_session(
    config: ClusterConfig,
    layout: Layout,
    client: str,
    *,
    end_wait: float = WRITE_BACK_STALLED,
    **options: Any,
) -> AsyncIterator[Session]:
    """:func:`open_session` of a cluster of groups: one endpoint and plain Q/U and PASIS
    clients per group (``layout/groups.group_config``), routed by ``layout``
    (``fs/clients/groups.py``); per-object leases (``PlacedConfig``: no lease sessions);
    no generations (a cluster of groups changes none yet)."""
    qus: list[EngineClient] = []
    rws: list[BlockClient] = []
    async with AsyncExitStack() as stack:
        eps = []
        for g in layout.groups:
            part = group_config(config, layout, g.id)
            await check_identity(
                part, KeyRing(client_identity(part, client), part.node_public_keys())
            )
            ep = await stack.enter_async_context(open_client(part, client))
            eps.append(ep)
            qus.append(metadata_client(part, ep))
            rws.append(await stack.enter_async_context(open_rw_client(ep, part)))
        qu, rw = GroupedQU(layout, qus), GroupedRW(layout, rws)
        tracker = ClientLayout(config, layout, layout_path(config).read_bytes())
        tracker.on_change += [lambda _old, new: qu.switch(new), lambda _old, new: rw.switch(new)]
        # Groups a newer layout adds are held by tasks of this nursery (left last).
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        follower = GroupFollower(config, client, qu, rw, tracker, nursery)
        follower.start(eps)  # newer layouts taken while mounted
        fs = await stack.enter_async_context(
            open_file_system(qu, rw, placed_config(config, layout), **options)
        )
        leases = fs.meta.leases
        follower.listen(leases)  # recalls pushed by each group's nodes
        tracker.on_change.append(lambda _old, new: fs.meta.take_layout(new))
        nursery.start_soon(follower.consult_service)
        session = Session(fs, qu, rw)
        try:
            yield session
        finally:
            session.lost_at_end = await write_back_at_end(fs, stalled_after=end_wait)
            if leases is not None:
                with trio.move_on_after(5):
                    await leases.release_all()


async def write_back_at_end(fs: FileSystem, *, stalled_after: float = WRITE_BACK_STALLED) -> int:
    """The session's end sends everything it holds back (``Outbox.unsent``: creates,
    removals, renames, writes of closed files), pass after pass, for as long as it
    delivers: it gives up only after ``stalled_after`` seconds in which nothing more
    reached the servers (no quorum answers), and then logs what is lost.  How many
    changes were lost (0: all sent).

    It used to stop after a fixed 60 s, delivering or not: a copy of many files to a
    slow cluster (a node being replaced, a busy machine) lost what was still held at the
    unmount, which looked clean."""
    outbox = fs.outbox
    best = outbox.unsent()
    if best == 0:
        return 0
    last_progress = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal best, last_progress
            while True:
                await trio.sleep(WRITE_BACK_WATCH)
                left = outbox.unsent()
                if left < best:  # a new low: a removal re-queued after a failure is none
                    best, last_progress = left, trio.current_time()
                elif trio.current_time() - last_progress >= stalled_after:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        while True:
            try:
                await fs.write_back()
            except Exception as e:  # noqa: BLE001 - tried again while it delivers
                log.info("write-back at the end, a pass failed (tried again): %s", e)
            if outbox.unsent() == 0:
                break
            await trio.sleep(WRITE_BACK_RETRY)
        nursery.cancel_scope.cancel()
    lost = outbox.unsent()
    if lost:
        log.error(
            "write-back at the end: nothing reached the servers for %g s; %d change(s) this"
            " mount still held back (answered creates, removals, renames, writes of closed"
            " files) are lost",
            stalled_after,
            lost,
        )
    return lost


@asynccontextmanager
async def open_past(config: ClusterConfig, client: str) -> AsyncIterator[Past]:
    """History reads of ``config``'s cluster as client ``client`` (``bftfs log``, ``cat
    --at``): no file system is opened, nothing is written."""
    ring = KeyRing(client_identity(config, client), config.node_public_keys())
    await check_identity(config, ring)
    async with open_client(config, client) as ep, open_block_client(ep, config) as rw:
        yield past_of(config, metadata_client(config, ep), ep, rw)


@asynccontextmanager
async def open_protocol_clients(
    config: ClusterConfig, client: str, **rw_options: Any
) -> AsyncIterator[tuple[EngineClient, RWClient]]:
    """The Q/U and PASIS clients of ``config``'s cluster as client ``client``, without a
    file system (``bftfs verify``); ``rw_options`` go to the PASIS client."""
    ring = KeyRing(client_identity(config, client), config.node_public_keys())
    await check_identity(config, ring)
    async with open_client(config, client) as ep, open_rw_client(ep, config, **rw_options) as rw:
        yield metadata_client(config, ep), rw
