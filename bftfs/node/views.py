"""A node's view (docs/membership.md): the one it starts with, the ones it is offered, and
what taking a newer one changes while the node runs.

Requests (any authenticated principal may send them: the administrator's signature, not the
sender, makes a view believable, seed 000 [003 L3984-4031]):

- ``view.get`` -> the signed view the node holds (bytes), or None when it holds none;
- ``view.install`` (a signed view) -> ``{"view": N, "installed": bool}``; refused with
  ``no_views`` (the cluster has no admin key), ``bad_view`` (malformed, not signed by the
  administrator, breaking a rule), ``stale_view`` (older than the node's),
  ``conflicting_view`` (another view with the node's number) or ``unsupported_view`` (a
  change ``view.unsupported_change`` refuses: nodes or thresholds within one generation, a
  generation change out of order, any on the FaB engine).  The same view again is
  acknowledged, so an administrator's push can be rerun.

Taking a newer view, in this order: the signed bytes are written durably to
``node<I>/view.signed`` (a restarted node never falls back), then the key ring holds exactly
the view's principals, the sessions of every principal revoked or rekeyed end, those
principals are told why when they call again (``Server.refused``), and the view is
forwarded once to the other nodes.  Whoever is behind learns from the handshake's view
number (``net/session.py``): a node behind fetches from the node ahead, a node ahead sends
its view to the node behind; clients do the same with nodes (``membership/client.py``).

Per-view keys (``membership/viewkeys.py``): the node signs every handshake's proof with its
key for the view it holds.  Taking a newer view, right after writing the view file and
before anything else, it moves its chain to that view on disk (``node<I>/private/
view-chain``, fsync'd): the older view's key can no longer be computed from anything it
keeps.

Generations (docs/membership.md, "Generations: the nodes"; ``node/generation.py``): the node
runs on its own generation of the view it holds (:attr:`NodeViews.flat`): a node of the
``previous`` generation keeps that generation's peers, keys and thresholds, proves the view
with its ``previous`` row's key and forwards views to its own generation's nodes only (node
ids repeat across generations: the key ring tells them apart); a retired node keeps the
peers it had and proves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from nacl.signing import SigningKey

from bftfs.config import ClusterConfig
from bftfs.crypto import KeyRing, pairwise_key
from bftfs.ids import NodeId, PrincipalId, is_node
from bftfs.membership.client import admit_session, reconnect_moved
from bftfs.membership.configview import (
    NODE_VIEW_FILE,
    apply,
    starting_view,
    view_of,
    write_signed,
)
from bftfs.membership.levelling import VIEW, Leveller
from bftfs.membership.view import (
    CURRENT,
    Verdict,
    View,
    ViewError,
    ViewNode,
    decode,
    ended_principals,
    judge,
    rekeyed_nodes,
    unsupported_change,
)
from bftfs.membership.viewkeys import Chain, ChainError, load_node_chain, save_node_chain
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import HandlerError
from bftfs.net.session import Session
from bftfs.node.generation import NodeGeneration
from bftfs.node.rekey import Rekey

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

log = logging.getLogger(__name__)

#: Longest a forward, fetch or send of a view to one peer may take (it is retried by the
#: next handshake with that peer anyway).
PEER_TIMEOUT = 10.0


class NodeViews:
    """The view one node holds and the changes taking a newer one makes.

    Built before the node's key ring (the view decides who may connect); :meth:`attach`
    then hooks it into the node's server and :meth:`started` into its endpoint.
    """

    def __init__(
        self, config: ClusterConfig, data_dir: Path, node_id: int, public_key: bytes
    ) -> None:
        self.base = config
        self.path = data_dir / NODE_VIEW_FILE
        self.view: View
        self.blob: bytes | None
        self.view, self.blob = starting_view(config, data_dir)
        #: Where this node stands in the held view's generations (node/generation.py).
        self.generation = NodeGeneration(self.view, node_id, public_key, data_dir)
        #: The held view as this node's generation sees it (``View.as_generation``): its
        #: peers, their keys and proofs, its thresholds.
        self.flat = self._flat(self.view, view_of(config), self.generation.which)
        #: The configuration as the held view has it (what the node runs on).
        self.config = config if self.blob is None else apply(config, self.flat)
        self._node: Node | None = None
        self._rekey: Rekey | None = None
        self._data_dir = data_dir
        #: This machine's chain at the held view (None: no per-view keys), and the view's
        #: private key derived from it (in memory only).
        self.chain: Chain | None = None
        self._key: SigningKey | None = None
        self._lock = trio.Lock()
        #: Fetches from nodes ahead, sends to nodes behind (one at a time per peer).
        self.leveller = Leveller(self, VIEW, PEER_TIMEOUT, self._fetch_failed)
        #: Called with the node once its endpoint is open (a cluster of groups' layout,
        #: ``node/layouts.py``, hooks the handshakes after the views do).
        self.when_started: list[Callable[[Node], None]] = []

    @property
    def number(self) -> int:
        return self.view.number

    @staticmethod
    def _flat(view: View, last: View, which: str | None) -> View:
        """``view`` as generation ``which`` of it sees it; for a retired node (None),
        ``last`` (the generation it ran in) with ``view``'s number and clients, and no view
        keys: it proves no view any more."""
        if which is not None:
            return view.as_generation(which)
        return replace(
            last,
            number=view.number,
            clients=view.clients,
            retired=view.retired,
            nodes=tuple(replace(n, view_key=b"") for n in last.nodes),
        )

    def attach(self, node: Node) -> None:
        """Serve ``view.get``/``view.install`` and hear callers' view numbers."""
        self._node = node
        self.generation.attach(node)
        node.server.view_number = self.number
        for r in self.view.retired:  # revoked before this start: still told why
            if r.public_key:
                node.server.refused[r.id] = (
                    pairwise_key(node.keyring.me, r.public_key),
                    f"revoked (not a client of view {self.number})",
                )
        node.server.on_peer_view = self._heard
        node.server.prove = self._prove
        self._take_key(self.flat, self._ratchet(self.view))
        node.register("view.get", self._get, inline=True)
        node.register("view.install", self._install)

    def started(self, node: Node) -> None:
        """The node's endpoint is open: tell peers our number, hear theirs."""
        node.endpoint.view_number = self.number
        node.endpoint.on_peer_view = self._heard
        node.endpoint.admit = self.admit
        self._rekey = Rekey(node, self._data_dir)
        self._rekey.start(self.flat)
        self._check_replaced(self.flat)
        self.generation.started()
        for hook in self.when_started:
            hook(node)

    def rekey_to(self, config: ClusterConfig) -> None:
        """Rewrite the stored Q/U authenticators under ``config``'s node keys (a layout
        replaced a node of this node's group: ``node/layouts.py``), as a view replacing a
        node does."""
        if self._rekey is not None:
            self._rekey.start(view_of(config))

    async def admit(
        self, peer: NodeId, session: Session, ask: Callable[[str, Any], Awaitable[Any]]
    ) -> bool:
        """Whether a new session with ``peer`` may carry this node's requests
        (``Endpoint.admit``): as a client's, only once the peer proved it holds our view
        (``membership.client.admit_session``), so that nodes of an ended view feed a node
        that missed the change no catch-up either."""
        if self.base.admin_key is None:
            return True
        return await admit_session(self, peer, session, ask, self.generation.which or CURRENT)

    @property
    def unproven(self) -> int:
        """Sessions with peers refused: they could not prove they hold our view (the node's
        ``view_unproven`` count, in ``bftfs status``'s statistics)."""
        return 0 if self._node is None else self._node.stats["view_unproven"]

    @unproven.setter
    def unproven(self, count: int) -> None:
        if self._node is not None:
            self._node.stats["view_unproven"] = count

    async def take(self, blob: Any) -> None:
        """:meth:`offer` as a peer's handshake calls it (the peer claimed a newer view): a
        view refused is counted as a failed fetch and logged."""
        try:
            await self.offer(blob, source="a peer's handshake")
        except HandlerError as e:
            if self._node is not None:
                self._node.stats["view_fetch_failed"] += 1
            log.debug("node: a peer's view refused: %s", e)

    async def _get(self, ctx: RequestContext, payload: Any) -> Any:
        return self.blob

    async def _install(self, ctx: RequestContext, payload: Any) -> Any:
        installed = await self.offer(payload, source=f"principal {ctx.sender}")
        return {"view": self.number, "installed": installed}

    async def offer(self, blob: Any, *, source: str) -> bool:
        """Take the view in ``blob`` if it is newer; whether it was taken (False: the same
        view, already held).

        Raises:
            HandlerError: refused (module docstring), the reason in the message.
        """
        admin = self.base.admin_key
        if admin is None:
            raise HandlerError("no_views", "this cluster has no administrator key")
        try:
            view = decode(blob, admin)
        except ViewError as e:
            raise HandlerError("bad_view", str(e)) from None
        async with self._lock:
            verdict = judge(self.view, view)
            if verdict is Verdict.SAME:
                return False
            if verdict is Verdict.OLDER:
                raise HandlerError(
                    "stale_view",
                    f"view {view.number} is older than view {self.number}, which this node holds",
                )
            if verdict is Verdict.CONFLICT:
                raise HandlerError(
                    "conflicting_view",
                    f"another view numbered {view.number} is held here: the administrator "
                    "key signed two different views with one number",
                )
            why = unsupported_change(self.view, view, self.base.engine)
            if why is not None:
                raise HandlerError("unsupported_view", f"view {view.number}: {why}")
            gen = self.generation
            which = gen.placed(view)[1]
            flat = self._flat(view, self.flat, which)
            try:
                config = self.config if which is None else apply(self.base, flat)
            except ViewError as e:
                raise HandlerError("bad_view", str(e)) from None
            assert isinstance(blob, bytes)  # decode checked it
            try:
                await trio.to_thread.run_sync(write_signed, self.path, blob)
                await trio.to_thread.run_sync(gen.save_own, view)
                chain = await trio.to_thread.run_sync(self._ratchet, view)
            except OSError as e:  # not acknowledged: offered again, it is written again
                log.error("node: cannot write view %d or its chain: %s", view.number, e)
                raise HandlerError("io_error", f"cannot write view {view.number}: {e}") from None
            self._switch(view, flat, blob, config, source)
            self._take_key(flat, chain)
            gen.take(view)
        self._forward(blob)
        return True

    def _switch(
        self, view: View, flat: View, blob: bytes, config: ClusterConfig, source: str
    ) -> None:
        """Run on ``view`` from now on (the file is written): keys, sessions, refusals.
        ``flat``: ``view`` as this node's generation sees it (its peers and their keys:
        node ids repeat across generations, so a node of the previous generation never
        takes the new generation's nodes for its peers)."""
        node = self._node
        assert node is not None
        old = self.flat
        ended = ended_principals(old, flat)
        old_keys = old.public_keys()
        for pid in ended:
            key = old_keys[pid]
            reason = (
                f"its key was replaced in view {view.number}"
                if flat.public_keys().get(pid) is not None
                else f"revoked in view {view.number}"
            )
            node.server.refused[PrincipalId(pid)] = (pairwise_key(node.keyring.me, key), reason)
        for pid in flat.public_keys():  # re-admitted or rekeyed back: no longer refused
            if pid not in ended:
                node.server.refused.pop(PrincipalId(pid), None)
        node.keyring.replace_peers({PrincipalId(p): k for p, k in flat.public_keys().items()})
        self.view, self.flat, self.blob, self.config = view, flat, blob, config
        node.config = config
        node.server.view_number = view.number
        if node.endpoint is not None:
            node.endpoint.view_number = view.number
        closed = node.server.end_sessions(ended)
        # Clients connected here may stay connected for long (a mount) and would hear of
        # the view at their next handshake only: tell them now, so they stop talking to a
        # replaced node's old machine, or to a generation now frozen.
        for c in view.clients:
            node.server.push(c.id, {"view": view.number})
        moved = node.endpoint is not None and reconnect_moved(node.endpoint, old, flat)
        if moved and self._rekey is not None:  # a node replaced: its new machine from now on
            self._rekey.start(flat)
        self._check_replaced(flat)
        self._tell_old_machines(old, flat, blob)
        node.stats["views_taken"] += 1
        node.log.info(
            "node %s: took %s from %s; ended %d session(s) of %s",
            node.id,
            view.describe(),
            source,
            closed,
            sorted(ended) or "nobody",
        )

    def _ratchet(self, view: View) -> Chain | None:
        """This machine's chain moved to ``view`` and written over the older one (the
        forgetting: seed 000 [003 L3931-3946]; after a crash between the view file and this,
        the next start moves it); None without per-view keys.  Runs before the view is
        acknowledged, in a worker thread (it fsyncs)."""
        held = self.chain
        if held is None:  # at start, or a cluster given per-view keys while we ran
            try:
                held = load_node_chain(self._data_dir)
            except ChainError as e:
                log.error("node: %s: this node cannot prove any view", e)
                return None
        if held is None or not view.has_view_keys:
            return held
        if held.number > view.number:  # written past the view held: never, unless tampered
            log.error(
                "node: its view chain is at view %d, past view %d which it holds: it cannot "
                "prove view %d (and never can again)",
                held.number,
                view.number,
                view.number,
            )
            return held
        if held.number < view.number:
            try:
                held = held.at(view.number)
            except ChainError as e:  # (views are numbered one by one: never)
                log.error("node: %s", e)
                return None
            save_node_chain(self._data_dir, held)
        return held

    def _take_key(self, view: View, chain: Chain | None) -> None:
        """Sign handshakes with ``view``'s key from now on (none: no proofs, which clients
        of a view with per-view keys refuse)."""
        self.chain = chain
        self._key = None
        node = self._node
        assert node is not None
        if chain is None or not view.has_view_keys or chain.number != view.number:
            return
        key = chain.signing_key()
        if int(node.id) >= len(view.nodes):
            return  # (a node of no generation of the view)
        if bytes(key.verify_key) != view.nodes[int(node.id)].view_key:
            if view.nodes[int(node.id)].public_key == node.keyring.me.public:
                log.error("node %s: its chain gives no key of view %d", node.id, view.number)
            return  # (a replaced machine: the view names the newcomer's key)
        self._key = key

    def _prove(self, number: int, message: bytes) -> bytes:
        """The handshake's proof that this node holds view ``number`` (``Server.prove``)."""
        key = self._key
        if key is None or number != self.number:
            return b""
        return bytes(key.sign(message).signature)

    def _check_replaced(self, view: View) -> None:
        """Say so when ``view`` gives this node's id another key: this process runs on a
        machine that was replaced, every correct node and client refuses it, and the
        operator should stop it (it keeps running, refused, until then)."""
        node = self._node
        assert node is not None
        mine = view.nodes[int(node.id)] if int(node.id) < len(view.nodes) else None
        if mine is None or mine.public_key != node.keyring.me.public:
            node.progress["view"] = {"state": "replaced", "view": view.number}
            node.log.warning(
                "node %s: view %d gives node %s another key (a new machine replaced this "
                "one): every node and client refuses this process; stop it",
                node.id,
                view.number,
                node.id,
            )

    def _forward(self, blob: bytes) -> None:
        """Send a view just taken to every other node once (those that have it answer at
        once): a push that reached only a quorum still reaches every node that is up."""
        node = self._node
        if node is None or node._nursery is None or node.endpoint is None:
            return
        for spec in self.config.nodes:
            if spec.id != node.id:
                self.leveller.send(node.spawn, node.endpoint.call, spec.id, blob)

    def _tell_old_machines(self, old: View, view: View, blob: bytes) -> None:
        """Send ``view`` once to the old machine of each node it replaced, at its old address
        under its old key, so that, correct, it forgets ``old``'s key too (the seed's new
        servers forwarding the view to the old ones, [003 L11341-11395]); it is refused
        everything else from now on."""
        node = self._node
        if node is None or node._nursery is None:
            return
        for i in rekeyed_nodes(old, view):
            if i != node.id:
                node.spawn(self._send_old, old.nodes[i], blob)

    async def _send_old(self, machine: ViewNode, blob: bytes) -> None:
        node = self._node
        assert node is not None
        ring = KeyRing(node.keyring.me, {machine.id: machine.public_key})
        try:
            with trio.move_on_after(PEER_TIMEOUT):
                async with open_endpoint(ring, {machine.id: (machine.host, machine.port)}) as ep:
                    await ep.call(machine.id, "view.install", blob, timeout=PEER_TIMEOUT)
        except (TransportError, RemoteError) as e:
            log.debug("node %s: the old machine of node %s: %s", node.id, machine.id, e)

    def _heard(self, peer: PrincipalId, number: int) -> None:
        """A handshake told us ``peer`` holds view ``number``: fetch it from a node ahead,
        send ours to a node behind (clients fetch and send themselves;
        ``membership/levelling.py``)."""
        node = self._node
        if node is None or node._nursery is None or not is_node(peer) or peer == node.id:
            return
        if self.base.admin_key is None:
            return
        self.leveller.heard(node.spawn, node.endpoint.call, NodeId(peer), number)

    def _fetch_failed(self, peer: NodeId, e: BaseException) -> None:
        if self._node is not None:
            self._node.stats["view_fetch_failed"] += 1
