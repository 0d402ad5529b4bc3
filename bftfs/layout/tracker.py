"""A mount's layout tracker (docs/layout.md, "Installing a layout on running processes"):
the layout a client of a cluster of groups holds, learnt newer from any node, and what
taking one changes.

The client has one endpoint per group (``fs/session.open_grouped_session``).  Each says
the held version in its handshakes (where a one-group cluster says its view number: a
cluster of groups has no views) and hears the nodes' versions there and in their pushes.
A node ahead: the client fetches its layout (``layout.get``) and takes it if the
administrator signed it, its version is above the held one and a running client can
follow it (``layout/live.unsupported_change``); the session with that node is then made
again under the new keys.  A node behind: the client sends it the held one
(``layout.install``), which is how a node that was down learns it.  A forged, older or
conflicting layout is dropped (counted): no node can make a client take one.

Taking a layout that replaced nodes: each group endpoint's key ring holds the group's new
keys and reaches the newcomers at their addresses (the connection to a replaced machine
ends), and ``on_change`` (the routers, ``fs/clients/groups.py``) runs on the new layout.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from bftfs.config import ClusterConfig
from bftfs.ids import NodeId, PrincipalId
from bftfs.layout import codec, live
from bftfs.layout.model import Layout, LayoutError
from bftfs.membership.levelling import LAYOUT, Ask, Leveller, level_session
from bftfs.membership.signed import Verdict
from bftfs.net.endpoint import Endpoint
from bftfs.net.session import Session

log = logging.getLogger(__name__)

#: Longest a fetch or send of a layout to one node may take.
NODE_TIMEOUT = 10.0


class ClientLayout:
    """The layout one client holds over ``cluster``'s groups; :meth:`attach` hooks it
    into each group's endpoint."""

    def __init__(self, cluster: ClusterConfig, layout: Layout, blob: bytes) -> None:
        if cluster.admin_key is None:
            raise LayoutError("a layout needs the administrator key in cluster.toml")
        self.cluster, self.admin = cluster, cluster.admin_key
        self.layout, self.blob = layout, blob
        #: Layouts fetched and dropped (forged, older, conflicting, not followable).
        self.dropped = 0
        #: Called with (old, new) once a newer layout is taken.
        self.on_change: list[Callable[[Layout, Layout], None]] = []
        self.leveller = Leveller(self, LAYOUT, NODE_TIMEOUT)
        self._eps: dict[int, Endpoint] = {}

    @property
    def number(self) -> int:
        return self.layout.version

    def attach(self, ep: Endpoint, group: int) -> None:
        """Hook into group ``group``'s endpoint: say our version, level with its nodes'."""
        self._eps[group] = ep
        ep.view_number = self.number
        ep.on_peer_view = functools.partial(self._heard, group)
        ep.admit = self.admit

    def _heard(self, group: int, node: NodeId, number: int) -> None:
        ep = self._eps.get(group)
        if ep is not None:
            self.leveller.heard(ep.spawn, ep.call, node, number, key=(group, node))

    async def admit(self, node: NodeId, session: Session, ask: Ask) -> bool:
        """A new session carries requests once the node holds our layout (False: we just
        took its newer one: handshake again under its keys)."""
        return await level_session(self, LAYOUT, node, session.peer_view, ask) != "fetched"

    async def take(self, blob: Any) -> None:
        """:meth:`offer`, as levelling calls it."""
        self.offer(blob)

    def offer(self, blob: Any) -> bool:
        """Take the layout in ``blob`` if the administrator signed it, it is newer and
        a running client can follow it; whether it was taken."""
        try:
            layout = codec.decode(blob, self.admin)
        except LayoutError as e:
            self.dropped += 1
            log.debug("dropped a layout: %s", e)
            return False
        verdict = codec.judge(self.layout, layout)
        if verdict is not Verdict.NEWER:
            self.dropped += verdict is not Verdict.SAME
            return False
        why = live.unsupported_change(self.layout, layout)
        if why is not None:
            self.dropped += 1
            log.warning("client: layout %d not followed while mounted: %s", layout.version, why)
            return False
        assert isinstance(blob, bytes)
        old, self.layout, self.blob = self.layout, layout, blob
        for group, ep in self._eps.items():
            ep.view_number = layout.version
            self._follow(ep, old, layout, group)
        for hook in self.on_change:
            hook(old, layout)
        log.info("client: now on %s", layout.describe())
        return True

    def _follow(self, ep: Endpoint, old: Layout, new: Layout, group: int) -> None:
        """Group ``group``'s endpoint reaches the group's nodes as ``new`` names them."""
        before, after = old.group_nodes(group), new.group_nodes(group)
        if before == after:
            return
        ep.keyring.replace_peers({PrincipalId(i): n.public_key for i, n in enumerate(after)})
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            if a != b:
                ep.moved(NodeId(i), (b.host, b.port))
