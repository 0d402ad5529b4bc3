"""The administrator's side of views: issue the next view, write it where the operator keeps
the cluster, and push it to the nodes (seed 000's ``newView``, [003 L4376-4402]).

Issuing is local and ordered so that a command killed at any point can be run again: the
client's key file first, then the signed view (``view.signed``, the commit point), then
``cluster.toml`` rewritten to match.  Pushing sends the signed view to every node over the
ordinary authenticated transport (``view.install``) as one of the cluster's clients, and
succeeds once a quorum ``q`` acknowledged (a node that already holds it acknowledges too);
nodes forward it to each other and nodes down meanwhile learn it when they come back, so
the rest follow.  ``bftfs view push`` pushes the current view again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from bftfs import config as cfgmod
from bftfs.config import ClusterConfig, ConfigError
from bftfs.crypto import AdminKey, Identity, KeyFileError
from bftfs.ids import NodeId, client_id
from bftfs.membership.configview import apply, read_signed, view_of, write_signed
from bftfs.membership.view import (
    Retired,
    View,
    ViewClient,
    ViewError,
    ViewNode,
    check_generations,
    generation_rule,
    sign,
)
from bftfs.membership.viewkeys import AdminChains, Chain, save_node_chain
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError

#: Seconds the push waits for the nodes beyond a quorum once a quorum acknowledged.
GRACE = 1.0


def admin_key(cfg: ClusterConfig) -> AdminKey:
    """The administrator key, checked against ``[cluster] admin_key``.

    Raises:
        ConfigError: the cluster has no admin key (made before views: ``bftfs view adopt``).
        KeyFileError: the key file is missing here (not the operator's directory?) or is
            another key.
    """
    if cfg.admin_key is None:
        raise ConfigError(
            "this cluster has no administrator key (made before views): `bftfs view adopt` "
            "gives it one (docs/membership.md, Migration)"
        )
    key = AdminKey.load(cfg.admin_key_path)
    if key.public != cfg.admin_key:
        raise KeyFileError(f"{cfg.admin_key_path} is not the key [cluster] admin_key names")
    return key


def current(cfg: ClusterConfig) -> tuple[View, bytes]:
    """The newest view the operator issued (``view.signed`` beside the configuration).

    Raises:
        ConfigError: no admin key, or no signed view (``bftfs view adopt``).
        ViewError: the file is not a view the administrator signed.
    """
    if cfg.admin_key is None:
        admin_key(cfg)  # raises, naming the way out
    assert cfg.admin_key is not None
    found = read_signed(cfg.view_path, cfg.admin_key)
    if found is None:
        raise ConfigError(f"no signed view at {cfg.view_path} (`bftfs view adopt` makes one)")
    return found


def issue(cfg: ClusterConfig, path: Path, view: View, key: AdminKey) -> tuple[ClusterConfig, bytes]:
    """Sign ``view`` (with each node's key for it, when the cluster has per-view keys),
    write it (the commit point) and ``cluster.toml`` to match; the new configuration and the
    signed bytes.  Then the administrator's chains move to the view (it forgets the older
    views' keys as the nodes do: membership/viewkeys.py).

    A view of a new generation is issued with that generation's configuration (its nodes'
    data directories; ``configview.config_of_generation`` makes one): ``cfg`` must name
    every node of a view with a previous generation, and all but at most ``t`` (replaced)
    of any other's.

    Raises:
        ConfigError: ``cfg`` is another generation's configuration.
    """
    known = {(int(s.id), s.public_key) for s in cfg.nodes}
    unknown = [int(n.id) for n in view.nodes if (int(n.id), n.public_key) not in known]
    if (view.previous is not None and unknown) or len(unknown) > max(view.t, 1):
        raise ConfigError(
            f"view {view.number} names nodes {unknown} this configuration does not (a new "
            "generation's): issue it with that generation's configuration"
        )
    new = apply(cfg, view)
    chains = AdminChains(cfg.admin_key_path)
    view = with_view_keys(chains, view)
    blob = sign(view, key)
    write_signed(cfg.view_path, blob)
    cfgmod.save(new, path)
    if chains.exists():
        chains.forget_before(_machines(view), view.number)
    return new, blob


def _machines(view: View) -> list[bytes]:
    """The long-term keys of every node machine ``view`` names, both generations' while a
    move runs (the administrator keeps their chains: the previous generation's nodes
    prove the view too)."""
    previous = [] if view.previous is None else [n.public_key for n in view.previous.nodes]
    return [n.public_key for n in view.nodes] + previous


def with_view_keys(chains: AdminChains, view: View) -> View:
    """``view`` naming each node's key for it (derived from that machine's chain), in both
    generations while a move runs; as it is when the cluster has no per-view keys (made
    before them: docs/membership.md).

    Raises:
        ChainError: a machine without a chain here (a new generation's node must have one:
            :func:`new_chain` when it is made).
    """
    if not chains.exists():
        return replace(view, nodes=tuple(replace(n, view_key=b"") for n in view.nodes))

    def keyed(nodes: tuple[ViewNode, ...]) -> tuple[ViewNode, ...]:
        keys = chains.view_keys([n.public_key for n in nodes], view.number)
        return tuple(replace(n, view_key=k) for n, k in zip(nodes, keys, strict=True))

    previous = view.previous
    if previous is not None:
        previous = replace(previous, nodes=keyed(previous.nodes))
    return replace(view, nodes=keyed(view.nodes), previous=previous)


def with_generation(
    view: View,
    nodes: list[ViewNode] | tuple[ViewNode, ...],
    t: int,
    b: int,
    qc: int,
    m: int,
    *,
    engine: str = "qu",
) -> View:
    """The view starting a move to a new generation (docs/membership.md, "Generations"):
    numbered one higher, generation one higher, ``nodes`` (new machines, ids 0..n-1) with
    thresholds ``t``, ``b``, ``qc``, ``m``, and ``view``'s own generation as the previous
    one (its rows as they are; their view keys are given when the view is issued).

    Raises:
        ConfigError: the FaB engine (``engine``), a move still running, or a rule broken
            (the message names it).
    """
    if engine == "fab":
        raise ConfigError("the FaB engine cannot change generation yet (docs/fab.md)")
    if view.previous is not None:
        raise ConfigError(
            f"view {view.number} still moves from generation {view.previous.number} to "
            f"{view.generation}: finish that move first (finished_generation)"
        )
    rows = tuple(ViewNode(n.id, n.host, n.port, n.public_key) for n in nodes)
    why = generation_rule(len(rows), t, b, qc, m)
    if why is not None:
        raise ConfigError(
            f"{len(view.nodes)} -> {len(rows)} nodes with t = {t}, b = {b}, qc = {qc}, m = {m} "
            f"breaks {why}"
        )
    new = replace(
        view,
        number=view.number + 1,
        t=t,
        b=b,
        qc=qc,
        m=m,
        nodes=rows,
        generation=view.generation + 1,
        previous=replace(view.current, nodes=tuple(replace(n, view_key=b"") for n in view.nodes)),
    )
    if [int(n.id) for n in rows] != list(range(len(rows))):
        raise ConfigError("the new generation's node ids must be 0..n-1 in order")
    try:
        check_generations(new)
    except ViewError as e:
        raise ConfigError(str(e)) from None
    return new


def finished_generation(view: View) -> View:
    """The view that ends a move (docs/membership.md, "Generations"): numbered one higher,
    the same generation, no previous one: the previous generation's nodes are retired.

    Raises:
        ConfigError: ``view`` is not moving from a previous generation.
    """
    if view.previous is None:
        raise ConfigError(
            f"view {view.number} (generation {view.generation}) moves from no previous "
            "generation: nothing to finish"
        )
    return replace(view, number=view.number + 1, previous=None)


def new_chain(cfg: ClusterConfig, data_dir: Path, node_public: bytes, number: int) -> None:
    """A chain for the node machine whose data directory is ``data_dir`` (its long-term key
    ``node_public``), anchored at view ``number``: written in its data directory (bundles
    carry it) and kept by the administrator.  Nothing when the cluster has no per-view keys,
    unless it is being made (``number`` 1)."""
    chains = AdminChains(cfg.admin_key_path)
    if not chains.exists() and number != 1:
        return
    chain = Chain.generate(number)
    save_node_chain(data_dir, chain)
    chains.add(node_public, chain)


def adopt(cfg: ClusterConfig, path: Path) -> tuple[ClusterConfig, bytes]:
    """Give a cluster made before views an administrator key and view 1 (its current
    membership).  Nodes read the admin key from ``cluster.toml`` when they start: they take
    views after their next restart (docs/membership.md, Migration).

    Raises:
        ConfigError: the cluster has an admin key already.
    """
    if cfg.admin_key is not None:
        raise ConfigError("this cluster has an administrator key already")
    key = AdminKey.generate()
    key.save(cfg.admin_key_path)
    with_key = replace(cfg, admin_key=key.public).validate()
    _new_chains(with_key)
    return issue(with_key, path, view_of(with_key, 1), key)


def give_view_keys(cfg: ClusterConfig, path: Path) -> tuple[ClusterConfig, bytes, View, bool]:
    """Give a cluster with views but without per-view keys (made before them) a chain per
    node and issue the next view with its keys (docs/membership.md, "Migration"); the new
    configuration, the signed view, the view, and whether it was issued now (False: the
    current view has keys already, pushed again).  Each node's chain is written in its data
    directory here: a node on another machine needs that file before it takes the view.
    Running nodes load it when they take the view: no restart.

    Raises:
        ConfigError: no admin key or no signed view.
    """
    key = admin_key(cfg)
    view, blob = current(cfg)
    if view.has_view_keys:
        return cfg, blob, view, False
    number = view.number + 1
    chains = {s.public_key: Chain.generate(number) for s in cfg.nodes}
    for spec in cfg.nodes:  # (a rerun after a kill before the view: new chains, all again)
        save_node_chain(spec.data_dir, chains[spec.public_key])
    AdminChains(cfg.admin_key_path).save(chains)
    new, blob = issue(cfg, path, replace(view, number=number), key)
    return new, blob, current(new)[0], True


def _new_chains(cfg: ClusterConfig) -> None:
    """Every node's chain, anchored at view 1, in its data directory and the
    administrator's (a cluster being made, or given views)."""
    for spec in cfg.nodes:
        new_chain(cfg, spec.data_dir, spec.public_key, 1)


def init_view(cfg: ClusterConfig, key: AdminKey) -> bytes:
    """View 1 of a cluster ``bftfs init`` just made, with per-view node keys, written
    beside its configuration (each node's chain in its data directory)."""
    _new_chains(cfg)
    chains = AdminChains(cfg.admin_key_path)
    view = with_view_keys(chains, view_of(cfg, 1))
    blob = sign(view, key)
    write_signed(cfg.view_path, blob)
    chains.forget_before([n.public_key for n in view.nodes], 1)
    return blob


def with_client(view: View, name: str, public_key: bytes, next_number: int) -> View:
    """``view`` + client ``name`` (a new id: ``next_number``), numbered one higher."""
    if view.client(name) is not None:
        raise ConfigError(f"client {name!r} is in view {view.number} already")
    added = ViewClient(client_id(next_number), name, public_key)
    return replace(view, number=view.number + 1, clients=(*view.clients, added))


def _named(view: View, name: str) -> ViewClient:
    """Client ``name`` of ``view``.

    Raises:
        ConfigError: ``view`` has no such client.
    """
    spec = view.client(name)
    if spec is None:
        raise ConfigError(f"no client {name!r} in view {view.number}")
    return spec


def without_client(view: View, name: str) -> View:
    """``view`` without client ``name`` (its id retired for good), numbered one higher."""
    spec = _named(view, name)
    return replace(
        view,
        number=view.number + 1,
        clients=tuple(c for c in view.clients if c.name != name),
        retired=(*view.retired, Retired(spec.id, spec.name, spec.public_key)),
    )


def rekeyed(view: View, name: str, public_key: bytes) -> View:
    """``view`` with client ``name``'s key replaced (same id: history stays its own)."""
    _named(view, name)
    return replace(
        view,
        number=view.number + 1,
        clients=tuple(
            replace(c, public_key=public_key) if c.name == name else c for c in view.clients
        ),
    )


def with_node(view: View, node: int, host: str, port: int, public_key: bytes) -> View:
    """``view`` with node ``node`` at ``host:port`` under ``public_key`` (a new machine
    replacing it: same id, so same place in every quorum and erasure code), numbered one
    higher.

    Raises:
        ConfigError: ``view`` has no such node, or another node has that address.
    """
    if not 0 <= node < len(view.nodes):
        raise ConfigError(f"no node {node} in view {view.number} (nodes 0..{len(view.nodes) - 1})")
    for n in view.nodes:
        if n.id != node and (n.host, n.port) == (host, port):
            raise ConfigError(f"{host}:{port} is node {n.id}'s address in view {view.number}")
    nodes = tuple(
        replace(n, host=host, port=port, public_key=public_key) if n.id == node else n
        for n in view.nodes
    )
    return replace(view, number=view.number + 1, nodes=nodes)


def new_client_key(cfg: ClusterConfig, name: str, number: int) -> Identity:
    """A fresh key pair for client ``name`` (id ``number``), written where the operator
    keeps client keys (bundles are made from there)."""
    ident = Identity.generate(client_id(number))
    ident.save(cfg.client_key_path(name))
    return ident


@dataclass
class PushResult:
    """What the nodes answered to one push."""

    number: int
    quorum: int
    acked: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    unreachable: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return len(self.acked) >= self.quorum


def pusher(cfg: ClusterConfig, avoid: str | None = None) -> str:
    """The client the push speaks as: the oldest whose key is here (not ``avoid``, the one
    being revoked or rekeyed: nodes may already refuse it).

    Raises:
        ConfigError: no client key here to speak with.
    """
    for c in sorted(cfg.clients, key=lambda c: c.id):
        if c.name != avoid and cfg.client_key_path(c.name).exists():
            return c.name
    raise ConfigError(
        f"no client key under {cfg.home / 'clients'} to push the view with (the nodes take a "
        "view from any client; `bftfs view push --as NAME`)"
    )


async def push(
    cfg: ClusterConfig, blob: bytes, number: int, *, as_client: str, timeout: float = 10.0
) -> PushResult:
    """Send the signed view to every node; return once every node answered, or a quorum
    acknowledged and :data:`GRACE` more seconds passed, or ``timeout`` passed."""
    from bftfs.crypto import KeyRing
    from bftfs.net.endpoint import open_endpoint

    who = cfg.client(as_client)
    me = Identity.load(who.id, cfg.client_key_path(as_client))
    if me.public != who.public_key:
        raise KeyFileError(f"{cfg.client_key_path(as_client)} is not client {as_client!r}'s key")
    result = PushResult(number, cfg.q)
    ring = KeyRing(me, cfg.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    settled = trio.Event()  # every node answered, or a quorum did and the grace passed
    answered = [0]

    async def grace() -> None:
        await trio.sleep(GRACE)
        settled.set()

    async def one(ep: Endpoint, nursery: trio.Nursery, node: NodeId) -> None:
        try:
            await ep.call(node, "view.install", blob)
            result.acked.append(node)
            if len(result.acked) == result.quorum:
                nursery.start_soon(grace)
        except RemoteError as e:
            result.refused[node] = str(e)
        except TransportError as e:
            result.unreachable[node] = str(e)
        answered[0] += 1
        if answered[0] == len(cfg.nodes):
            settled.set()

    async with open_endpoint(ring, addresses, timeout=timeout, resend_after=0.5) as ep:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for node in cfg.node_ids:
                    nursery.start_soon(one, ep, nursery, node)
                await settled.wait()
                nursery.cancel_scope.cancel()
    for node in cfg.node_ids:
        if node not in result.acked and node not in result.refused:
            result.unreachable.setdefault(node, "no answer in time")
    result.acked.sort()
    return result


__all__ = [
    "PushResult",
    "ViewError",
    "adopt",
    "admin_key",
    "current",
    "finished_generation",
    "init_view",
    "issue",
    "give_view_keys",
    "new_chain",
    "push",
    "pusher",
    "rekeyed",
    "with_client",
    "with_generation",
    "with_node",
    "with_view_keys",
    "without_client",
]
