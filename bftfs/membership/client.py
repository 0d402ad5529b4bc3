"""A client's view tracker (seed 000's ``ViewTracker``, [003 L3984-4031]): the view a client
holds, and what it does when a handshake shows a node ahead or behind.

A client starts with the view beside its configuration (``view.signed``, which bundles
carry).  A node ahead: the client fetches that node's view and keeps it if the
administrator signed it and it is newer (only in memory: the operator's files are the
operator's).  A node behind (it was down while the view changed): the client sends it the
view it holds, which is how a node can learn a view from a client.  A forged or older view
is dropped: the node that sent it cannot make the client take it.

Per-view keys (seed 000's forgetting protocol, docs/membership.md): when the held view
names each node's key for it, a session carries requests only once the node proved, in its
handshake, that it holds that very view (:meth:`admit`).  A node ahead gives its view first
(the client takes it and handshakes again), a node behind is given ours first (it takes it
and proves it at the next handshake).  Nodes of an ended view have forgotten its keys: a
client that has heard of nothing newer gets no session from them.

A view that replaces a node (docs/membership.md, "Replacing a node") changes the client's
key ring and the node's address at once: the connection to the old machine ends, and the
old key is refused from then on (a handshake under it cannot authenticate), whatever the
old machine still runs.

Generations (docs/membership.md, "Generations"): node ids repeat across generations, so a
client holding a view with a ``previous`` generation talks to each generation through an
endpoint of its own.  One :class:`ClientViews` serves both: ``attach(ep)`` for the view's
own generation, ``attach(ep2, generation="previous")`` for the previous one; each endpoint's
key ring and addresses follow its generation's nodes, and its sessions are admitted on the
proofs of that generation's rows (:func:`admit_session`'s ``which``).  A view that changes
the generation calls :attr:`ClientViews.on_generation` (the session rewires its Q/U and
PASIS clients: their thresholds change too); until then the current endpoint follows the
new generation's nodes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from bftfs.config import ClusterConfig
from bftfs.ids import NodeId, PrincipalId
from bftfs.membership.configview import starting_view
from bftfs.membership.levelling import VIEW, Leveller, Unlevelled, level_session
from bftfs.membership.view import (
    CURRENT,
    PREVIOUS,
    Verdict,
    View,
    ViewError,
    decode,
    judge,
    moved_nodes,
)
from bftfs.membership.viewkeys import proof_ok
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.session import Session

log = logging.getLogger(__name__)

#: What a node says when it refuses a revoked client (``node/views.py``): the view number.
_REVOKED = re.compile(r"revoked (?:in view|\(not a client of view) (\d+)")


class ViewUnproven(Unlevelled):
    """A node cannot prove it holds the view it claims (docs/membership.md, "Per-view
    keys"): no request goes to it until it can."""


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
        #: Sessions refused because the node could not prove it holds our view.
        self.unproven = 0
        #: The endpoint of each generation attached (``"current"``, ``"previous"``).
        self._eps: dict[str, Endpoint] = {}
        #: Fetches from nodes ahead, sends to nodes behind (one at a time per node).
        self.leveller = Leveller(self, VIEW, NODE_TIMEOUT)
        #: Called with (old, new) when a view taken changes the generation or ends a move.
        self.on_generation: Callable[[View, View], None] | None = None
        self._b = config.b
        #: Nodes that refused this client as revoked, with the view they named.
        self.revoked_by: dict[tuple[str, NodeId], int] = {}
        #: The view this client was revoked in, once ``b + 1`` nodes refused it so (at
        #: least one of them correct); None while it is not known to be revoked.
        self.revoked_in: int | None = None

    @property
    def number(self) -> int:
        return self.view.number

    @property
    def _ep(self) -> Endpoint | None:
        return self._eps.get(CURRENT)

    def attach(self, ep: Endpoint, generation: str = CURRENT) -> None:
        """Hook into ``ep`` (opened from the configuration, or for the previous generation
        from ``configview.config_of_generation``): check every new session (:meth:`admit`),
        hear the view numbers nodes push, and reach the nodes of ``generation`` as the held
        view names them (a configuration older than its view file names a replaced node's
        old machine).

        Raises:
            ViewError: ``generation`` is ``"previous"`` and the held view has none.
        """
        if generation == PREVIOUS and self.view.previous is None:
            raise ViewError(f"view {self.number} has no previous generation")
        self._eps[generation] = ep
        ep.view_number = self.number
        ep.on_peer_view = lambda node, number: self._heard(generation, node, number)
        ep.on_refused = lambda node, why: self.refused(generation, node, why)
        if self.admin is not None:
            ep.admit = self.admit if generation == CURRENT else self.admit_previous
        if self.blob is not None:
            self._follow(ep, self.view.as_generation(generation))

    def refused(self, generation: str, node: NodeId, why: str) -> None:
        """A node refused this client's handshake, saying ``why``.  A revocation is this
        client's state, not the node's fault (issue 60 item 17): once ``b + 1`` nodes
        refused it as revoked, one of them is correct and the client is revoked
        (:attr:`revoked_in`: the view most of them named).  Fewer could be Byzantine nodes
        refusing a valid client: their refusals stay faults (``Endpoint.faults``)."""
        m = _REVOKED.search(why)
        if m is None or self.revoked_in is not None:
            return
        self.revoked_by[(generation, node)] = int(m.group(1))
        if len(self.revoked_by) > self._b:
            votes = Counter(self.revoked_by.values()).most_common()
            self.revoked_in = votes[0][0]
            log.warning(
                "client revoked in view %d (refused by nodes %s): every operation is "
                "answered EACCES from now on; unmount",
                self.revoked_in,
                sorted(int(n) for _, n in self.revoked_by),
            )

    @staticmethod
    def _follow(ep: Endpoint, view: View) -> None:
        ep.keyring.replace_peers({PrincipalId(int(n.id)): n.public_key for n in view.nodes})
        for n in view.nodes:
            if ep.addresses.get(n.id) != (n.host, n.port):
                ep.moved(n.id, (n.host, n.port))

    async def admit(
        self, node: NodeId, session: Session, ask: Callable[[str, Any], Awaitable[Any]]
    ) -> bool:
        """:func:`admit_session` for this client (``Endpoint.admit``)."""
        return await admit_session(self, node, session, ask)

    async def admit_previous(
        self, node: NodeId, session: Session, ask: Callable[[str, Any], Awaitable[Any]]
    ) -> bool:
        """:func:`admit_session` with a node of the previous generation."""
        return await admit_session(self, node, session, ask, PREVIOUS)

    async def take(self, blob: Any) -> None:
        """:meth:`offer`, as :func:`admit_session` calls it."""
        self.offer(blob)

    def _heard(self, generation: str, node: NodeId, number: int) -> None:
        ep = self._eps.get(generation)
        if ep is None or self.admin is None:
            return
        self.leveller.heard(ep.spawn, ep.call, node, number, key=(generation, node))

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
        was = {CURRENT: CURRENT, PREVIOUS: PREVIOUS}  # each endpoint's generation in ``old``
        if view.generation > old.generation:
            was[PREVIOUS] = CURRENT
            self._advance(old, view)
        for generation, ep in self._eps.items():
            ep.view_number = view.number
            if generation == PREVIOUS and view.previous is None:
                continue  # the move is finished: nothing more to reach there
            before, after = old.as_generation(was[generation]), view.as_generation(generation)
            if moved_nodes(before, after):  # a node replaced: its new key, its new address
                ep.keyring.replace_peers(
                    {PrincipalId(int(n.id)): n.public_key for n in after.nodes}
                )
                reconnect_moved(ep, before, after)
        log.info("client: now in %s", view.describe())
        if (old.generation, old.previous) != (view.generation, view.previous) and (
            self.on_generation is not None
        ):
            self.on_generation(old, view)
        return True

    def _advance(self, old: View, view: View) -> None:
        """A view of a later generation: the endpoint of the generation held so far keeps
        its nodes (it does not follow the new generation's, whose ids repeat): it becomes
        the previous generation's when ``view`` moves from it, and is let go otherwise (the
        move already finished: its nodes are retired).  The session (``on_generation``)
        attaches an endpoint for the new generation."""
        ep = self._eps.pop(CURRENT, None)
        self._eps.pop(PREVIOUS, None)
        if ep is None:
            return
        prev = view.previous
        if prev is not None and prev.same_as(old.current):
            self._eps[PREVIOUS] = ep
            ep.on_peer_view = lambda node, number: self._heard(PREVIOUS, node, number)
            if self.admin is not None:
                ep.admit = self.admit_previous


class ViewHolder(Protocol):
    """Who holds a view and checks sessions against it: a client (:class:`ClientViews`) or
    a node (``node/views.py``)."""

    view: View
    blob: bytes | None
    #: Sessions refused because the node could not prove it holds the view held here.
    unproven: int

    @property
    def number(self) -> int:
        """The held view's number."""

    async def take(self, blob: Any) -> None:
        """Take the view in ``blob`` if validly signed and newer; never raises."""


async def admit_session(
    holder: ViewHolder,
    node: NodeId,
    session: Session,
    ask: Callable[[str, Any], Awaitable[Any]],
    which: str = CURRENT,
) -> bool:
    """Whether the new ``session`` with ``node`` may carry requests (seed 000's
    ``ViewTracker.receive``, [003 L4403-4440]): True when the node holds the view
    ``holder`` holds and, if that view has per-view keys, proves it; False to handshake
    again once the views are level: a node ahead gave us its (newer, validly signed) view,
    or a node behind took ours.  ``which``: the generation of the view ``node`` is of
    (``"previous"``: its proof is checked against the previous generation's rows).

    Raises:
        ViewUnproven: the node claims our view but cannot prove it holds it (a node of an
            ended view, which forgot its key, or an impostor), or claims a newer one it
            cannot show.
        TransportError: the connection failed while views were exchanged.
    """
    ours = holder.view.number
    try:
        levelled = await level_session(holder, VIEW, node, session.peer_view, ask)
    except Unlevelled as e:
        if not e.refused:
            holder.unproven += 1
        raise ViewUnproven(str(e), refused=e.refused) from e
    if levelled == "fetched":
        return False
    if levelled == "sent":
        return not holder.view.has_view_keys  # a node that took it proves it at once
    if which == PREVIOUS and holder.view.previous is None:
        holder.unproven += 1
        raise ViewUnproven(f"view {ours} has no previous generation: node {node} is retired")
    ring = holder.view.as_generation(which)
    if not ring.has_view_keys:
        return True
    nodes = ring.nodes
    key = nodes[int(node)].view_key if 0 <= int(node) < len(nodes) else b""
    if proof_ok(key, session.proof_message, session.peer_proof):
        return True
    holder.unproven += 1
    raise ViewUnproven(
        f"node {node} does not prove it holds view {ours} (its key for that view is not the "
        "one the view names: a node of an ended view, which forgot the key, or an impostor)"
    )


async def generation_status(ep: Endpoint, node_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each of ``node_ids``'s answer to ``gen.status`` through ``ep`` (an endpoint of their
    generation): ``{"g", "frozen", "retired", "view"}``; a node that did not answer, or
    answered something else, is left out (node/generation.py)."""
    out: dict[int, dict[str, Any]] = {}

    async def one(node: int) -> None:
        try:
            got = await ep.call(NodeId(node), "gen.status", None)
        except (TransportError, RemoteError) as e:
            log.debug("node %s: no generation status: %s", node, e)
            return
        if isinstance(got, dict) and {"g", "frozen", "retired", "view"} <= set(got):
            out[node] = got

    async with trio.open_nursery() as nursery:
        for node in node_ids:
            nursery.start_soon(one, node)
    return out


def reconnect_moved(ep: Endpoint, old: View, new: View) -> list[int]:
    """Reconnect ``ep`` to each node ``new`` gives another address or key than ``old``
    (its key ring already holds ``new``'s keys): the connection to the old machine ends and
    the next goes to the new address.  Nodes and clients both call it; the ids moved."""
    moved = moved_nodes(old, new)
    for n in new.nodes:
        if int(n.id) in moved:
            ep.moved(n.id, (n.host, n.port))
    return moved
