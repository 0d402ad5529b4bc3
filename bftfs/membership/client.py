"""A client's view tracker (seed 000's ``ViewTracker``, [003 L3984-4031]): the view a client
holds, and what it does when a handshake shows a node ahead or behind.

A client starts with the view beside its configuration (``view.signed``, which bundles
carry).  A node ahead: the client fetches that node's view and keeps it if the
administrator signed it and it is newer (only in memory: the operator's files are the
operator's).  A node behind (it was down while the view changed): the client sends it the
view it holds, which is how a node can learn a view from a client.  A forged or older view
is dropped: the node that sent it cannot make the client take it.

A view that replaces a node (docs/membership.md, "Replacing a node") changes the client's
key ring and the node's address at once: the connection to the old machine ends, and the
old key is refused from then on (a handshake under it cannot authenticate), whatever the
old machine still runs.
"""

from __future__ import annotations

import logging

import trio

from bftfs.config import ClusterConfig
from bftfs.ids import NodeId, PrincipalId
from bftfs.membership.configview import starting_view
from bftfs.membership.view import Verdict, View, ViewError, decode, judge, moved_nodes
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError

log = logging.getLogger(__name__)

#: Longest a fetch or send of a view to one node may take.
NODE_TIMEOUT = 10.0


class ClientViews:
    """The view one client holds; :meth:`attach` hooks it into the client's endpoint."""

    def __init__(self, config: ClusterConfig) -> None:
        self.admin = config.admin_key
        self.view: View
        self.blob: bytes | None
        self.view, self.blob = starting_view(config, None)
        #: Views fetched and dropped (not signed by the administrator, or not newer).
        self.dropped = 0
        self._ep: Endpoint | None = None
        self._busy: set[NodeId] = set()

    @property
    def number(self) -> int:
        return self.view.number

    def attach(self, ep: Endpoint) -> None:
        """Hook into ``ep`` (opened from the configuration): hear nodes' view numbers, and
        reach the nodes as the held view names them (a configuration older than its view
        file names a replaced node's old machine)."""
        self._ep = ep
        ep.view_number = self.number
        ep.on_peer_view = self._heard
        if self.blob is not None:
            self._follow(ep, self.view)

    @staticmethod
    def _follow(ep: Endpoint, view: View) -> None:
        ep.keyring.replace_peers({PrincipalId(int(n.id)): n.public_key for n in view.nodes})
        for n in view.nodes:
            if ep.addresses.get(n.id) != (n.host, n.port):
                ep.moved(n.id, (n.host, n.port))

    def _heard(self, node: NodeId, number: int) -> None:
        ep = self._ep
        if ep is None or self.admin is None or node in self._busy:
            return
        if number > self.number:
            ep.spawn(self._fetch, node)
        elif number < self.number and self.blob is not None:
            ep.spawn(self._send, node, self.blob)

    def offer(self, blob: object) -> bool:
        """Take the view in ``blob`` if the administrator signed it and it is newer;
        whether it was taken."""
        if self.admin is None:
            return False
        try:
            view = decode(blob, self.admin)
        except ViewError as e:
            self.dropped += 1
            log.debug("dropped a view: %s", e)
            return False
        if judge(self.view, view) is not Verdict.NEWER:
            self.dropped += judge(self.view, view) is not Verdict.SAME
            return False
        assert isinstance(blob, bytes)
        old, self.view, self.blob = self.view, view, blob
        if self._ep is not None:
            self._ep.view_number = view.number
            if moved_nodes(old, view):  # a node replaced: its new key, its new address
                self._ep.keyring.replace_peers(
                    {PrincipalId(int(n.id)): n.public_key for n in view.nodes}
                )
                reconnect_moved(self._ep, old, view)
        log.info("client: now in %s", view.describe())
        return True

    async def _fetch(self, node: NodeId) -> None:
        ep = self._ep
        assert ep is not None
        self._busy.add(node)
        try:
            with trio.move_on_after(NODE_TIMEOUT):
                self.offer(await ep.call(node, "view.get", None))
        except (TransportError, RemoteError) as e:
            log.debug("no view from node %s: %s", node, e)
        finally:
            self._busy.discard(node)

    async def _send(self, node: NodeId, blob: bytes) -> None:
        ep = self._ep
        assert ep is not None
        self._busy.add(node)
        try:
            with trio.move_on_after(NODE_TIMEOUT):
                await ep.call(node, "view.install", blob)
        except (TransportError, RemoteError) as e:
            log.debug("node %s did not take our view: %s", node, e)
        finally:
            self._busy.discard(node)


def reconnect_moved(ep: Endpoint, old: View, new: View) -> list[int]:
    """Reconnect ``ep`` to each node ``new`` gives another address or key than ``old``
    (its key ring already holds ``new``'s keys): the connection to the old machine ends and
    the next goes to the new address.  Nodes and clients both call it; the ids moved."""
    moved = moved_nodes(old, new)
    for n in new.nodes:
        if int(n.id) in moved:
            ep.moved(n.id, (n.host, n.port))
    return moved
