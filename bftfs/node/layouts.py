"""The layout a node of a cluster of groups holds while it runs, and what taking a newer
one changes (docs/layout.md, "Installing a layout on running processes").

Requests (any authenticated principal may send them: the administrator's signature, not
the sender, makes a layout believable):

- ``layout.get`` -> the signed layout the node holds (bytes);
- ``layout.install`` (a signed layout) -> ``{"layout": V, "installed": bool}``; refused
  with ``bad_layout`` (malformed, not signed by the administrator, breaking a rule),
  ``stale_layout`` (older than the node's), ``conflicting_layout`` (another layout with
  the node's version) or ``unsupported_layout`` (a change a running node does not follow,
  ``layout/live.unsupported_change``).  The same layout again is acknowledged.

A cluster of groups has no views (its groups' configurations carry no administrator key),
so its handshakes carry the layout version where a view number would go, and a node or
client meeting a party behind or ahead levels them as views are levelled
(``membership/levelling.py``).

Taking a newer layout, in this order: the signed bytes are written durably to
``node<I>/layout.signed`` (a restarted node starts from it, ``node/main.py``), then the
group's configuration is the new layout's: the key ring holds its nodes' keys, a replaced
node's old key is refused (its sessions end, and it is told why when it calls again), the
endpoint reaches the newcomer at its address, the stored Q/U authenticators are rewritten
under the new keys (``node/rekey.py``), the placement guard and the ``txn`` type's keys
are the new layout's; the node's clients are told the new version (a push: mounts fetch
it), and the layout is forwarded once to the other nodes of the group.  A node the
layout leaves out (replaced) keeps running, refused by every correct node, and says so.

A moving layout (docs/layout.md, "Moving partitions") also sets what the node does for
the partitions moving out of its group and into it (``node/moves.py``); when it moves
objects out of the group that did not move out before, the node pushes a recall of the
leases stored here on them to their holders (``node/recalls.recall_stored``), as a
generation's freeze does.  So does a node starting on such a layout, once it listens (it
reaches the holders connected by then; the others' leases end with their terms).  The
finished layout moves nothing: the node then serves only its group's partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bftfs.config import ClusterConfig
from bftfs.crypto import pairwise_key
from bftfs.ids import NodeId, PrincipalId, is_node
from bftfs.layout import codec, live
from bftfs.layout.groups import Placed
from bftfs.layout.model import Layout, LayoutError
from bftfs.layout.nodetxn import LiveTxn
from bftfs.membership.levelling import LAYOUT, Ask, Leveller, level_session
from bftfs.membership.signed import Verdict
from bftfs.net.server import HandlerError
from bftfs.net.session import Session
from bftfs.node.placement import guard
from bftfs.node.recalls import recall_stored
from bftfs.qu.objects import ObjectType

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

log = logging.getLogger(__name__)

#: Longest a forward, fetch or send of a layout to one peer may take.
PEER_TIMEOUT = 10.0
#: The recall of leases on objects moving out: its counters' prefix, its ``finished`` name.
RECALLS = "layout.recalls"


class NodeLayouts:
    """The layout node ``global_id`` holds; :meth:`attach` hooks it into the node (before
    it runs), and the node's views call :meth:`started` once its endpoint is open."""

    def __init__(
        self,
        cluster: ClusterConfig,
        placed: Placed,
        global_id: int,
        data_dir: Path,
        types: Sequence[ObjectType],
    ) -> None:
        assert cluster.admin_key is not None  # a layout is only ever loaded with one
        self.cluster, self.admin = cluster, cluster.admin_key
        self.layout, self.blob, self.group = placed.layout, placed.blob, placed.group
        self.global_id, self.data_dir = global_id, data_dir
        #: The ``txn`` type served (``txn.type``), under the held layout's keys.
        self.txn = LiveTxn(placed.layout, types)
        self.leveller = Leveller(self, LAYOUT, PEER_TIMEOUT, self._fetch_failed)
        self._node: Node | None = None
        self.me = b""  # this machine's public key (known once attached)
        self._lock = trio.Lock()

    @property
    def number(self) -> int:
        return self.layout.version

    def attach(self, node: Node) -> None:
        """Serve ``layout.get``/``layout.install``; say the layout version in handshakes."""
        self._node = node
        self.me = node.keyring.me.public
        node.server.view_number = self.number
        node.server.on_peer_view = self._heard
        node.register("layout.get", self._get, inline=True)
        node.register("layout.install", self._install)
        node.views.when_started.append(self.started)
        if node.moves.hold(self.layout, self.group):  # started on a layout moving objects out
            node.when_serving.append(self._recall)
        node.progress["layout"] = self._progress()

    def started(self, node: Node) -> None:
        """The endpoint is open: say our version to peers, level with theirs."""
        node.endpoint.view_number = self.number
        node.endpoint.on_peer_view = self._heard
        node.endpoint.admit = self.admit

    async def admit(self, peer: NodeId, session: Session, ask: Ask) -> bool:
        """A new session with ``peer`` carries requests once both hold one layout (False:
        we just took its newer one, handshake again under its keys)."""
        return await level_session(self, LAYOUT, peer, session.peer_view, ask) != "fetched"

    def _heard(self, peer: PrincipalId, number: int) -> None:
        node = self._node
        if node is None or node._nursery is None or node.endpoint is None:
            return
        if not is_node(peer) or peer == node.id:  # a client levels by itself
            return
        self.leveller.heard(node.spawn, node.endpoint.call, NodeId(peer), number)

    def _fetch_failed(self, peer: NodeId, e: BaseException) -> None:
        if self._node is not None:
            self._node.stats["layout_fetch_failed"] += 1

    async def take(self, blob: Any) -> None:
        """:meth:`offer` as levelling calls it: a layout refused is counted and logged."""
        try:
            await self.offer(blob, source="a peer")
        except HandlerError as e:
            if self._node is not None:
                self._node.stats["layout_fetch_failed"] += 1
            log.debug("node: a peer's layout refused: %s", e)

    async def _get(self, ctx: RequestContext, payload: Any) -> Any:
        return self.blob

    async def _install(self, ctx: RequestContext, payload: Any) -> Any:
        installed = await self.offer(payload, source=f"principal {ctx.sender}")
        return {"layout": self.number, "installed": installed}

    async def offer(self, blob: Any, *, source: str) -> bool:
        """Take the layout in ``blob`` if it is newer; whether it was taken (False: the
        same layout, already held).

        Raises:
            HandlerError: refused (module docstring), the reason in the message.
        """
        try:
            layout = codec.decode(blob, self.admin)
        except LayoutError as e:
            raise HandlerError("bad_layout", str(e)) from None
        async with self._lock:
            verdict = codec.judge(self.layout, layout)
            if verdict is Verdict.SAME:
                return False
            if verdict is Verdict.OLDER:
                raise HandlerError(
                    "stale_layout",
                    f"layout {layout.version} is older than layout {self.number}, held here",
                )
            if verdict is Verdict.CONFLICT:
                raise HandlerError(
                    "conflicting_layout",
                    f"another layout with version {layout.version} is held here: the "
                    "administrator key signed two",
                )
            why = live.unsupported_change(self.layout, layout)
            if why is not None:
                raise HandlerError("unsupported_layout", f"layout {layout.version}: {why}")
            where = live.place(layout, self.global_id)
            if where is not None and layout.node(self.global_id).public_key != self.me:
                where = None  # a new machine took this node's place: this one is replaced
            try:
                config = (
                    None
                    if where is None
                    else live.live_group_config(self.cluster, layout, where[0])
                )
            except LayoutError as e:
                raise HandlerError("bad_layout", str(e)) from None
            assert isinstance(blob, bytes)  # decode checked it
            try:
                await trio.to_thread.run_sync(live.store_node_layout, self.data_dir, blob)
            except OSError as e:  # not acknowledged: offered again, it is written again
                raise HandlerError("io_error", f"cannot write layout: {e}") from None
            self._switch(layout, blob, config, source)
        self._forward(blob)
        return True

    def _switch(
        self, layout: Layout, blob: bytes, config: ClusterConfig | None, source: str
    ) -> None:
        """Run on ``layout`` from now on (it is written): keys, sessions, addresses."""
        node = self._node
        assert node is not None
        old_layout, self.layout, self.blob = self.layout, layout, blob
        node.server.view_number = layout.version
        if node.endpoint is not None:
            node.endpoint.view_number = layout.version
        self.txn.switch(layout)
        node.progress["layout"] = self._progress()
        if config is None:  # this node was replaced: every correct party refuses it now
            node.progress["layout"]["state"] = "replaced"
            node.log.warning(
                "node %s: layout %d leaves this node out (replaced): every node and client "
                "refuses this process; stop it",
                self.global_id,
                layout.version,
            )
            return
        ended = self._rekeyed(node.config, config, layout.version)
        node.keyring.replace_peers(config.public_keys())
        node.config = config
        node.placement = guard(layout, self.group)
        if node.moves.hold(layout, self.group):
            self._recall(node)
        node.progress["layout"] = self._progress()
        closed = node.server.end_sessions(ended)
        for pid in ended:
            spec = config.node(NodeId(pid))
            if node.endpoint is not None:
                node.endpoint.moved(spec.id, (spec.host, spec.port))
        if ended:
            node.views.rekey_to(config)
        for c in config.clients:  # mounts stay connected: tell them now
            node.server.push(c.id, {"view": layout.version})
        node.stats["layouts_taken"] += 1
        node.log.info(
            "node %s: took layout %d (was %d) from %s; ended %d session(s) of nodes %s",
            self.global_id,
            layout.version,
            old_layout.version,
            source,
            closed,
            sorted(ended) or "none",
        )

    def _recall(self, node: Node) -> None:
        """Objects move out of the group: recall the leases stored here on them."""
        node.log.info(
            "node %s: layout %d moves partitions out of group %d: clients' own new "
            "operations on them are refused `moved` (reads and repairs go on); recalling "
            "their leases",
            self.global_id,
            self.layout.version,
            self.group,
        )
        done = node.finished[RECALLS] = trio.Event()  # (tests wait on it)
        node.spawn(self._recalling, node, done)

    async def _recalling(self, node: Node, done: trio.Event) -> None:
        await recall_stored(node, node.moves.object_out, RECALLS)
        done.set()

    def _progress(self) -> dict[str, Any]:
        """What ``bftfs status`` shows of the held layout (``progress.layout``)."""
        out: dict[str, Any] = {"version": self.layout.version, "group": self.group}
        if self._node is not None and self.layout.moving:
            out["moving"] = {"out": self._node.moves.moving_out, "in": self._node.moves.moving_in}
        return out

    def _rekeyed(self, old: ClusterConfig, new: ClusterConfig, version: int) -> set[int]:
        """The group's node indices ``new`` gives another key or address than ``old``;
        an old key is refused from now on, with the reason."""
        node = self._node
        assert node is not None
        changed: set[int] = set()
        for a, b in zip(old.nodes, new.nodes, strict=True):
            if (a.public_key, a.host, a.port) != (b.public_key, b.host, b.port):
                changed.add(int(a.id))
            if a.public_key != b.public_key:
                node.server.refused[PrincipalId(int(a.id))] = (
                    pairwise_key(node.keyring.me, a.public_key),
                    f"its key was replaced in layout {version}",
                )
        return changed

    def _forward(self, blob: bytes) -> None:
        """Send a layout just taken to every other node of the group once."""
        node = self._node
        if node is None or node._nursery is None or node.endpoint is None:
            return
        for spec in node.config.nodes:
            if spec.id != node.id:
                self.leveller.send(node.spawn, node.endpoint.call, spec.id, blob)
