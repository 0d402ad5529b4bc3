"""The administrator's side of a layout taken while the cluster runs (docs/layout.md,
"Replacing a node of a group"): the next version naming a node's new machine, written
beside ``cluster.toml``, and pushed to the running nodes of every group.

The new machine keeps the node's global id, group and index (the same Q/U server and
PASIS fragment index, so nothing moves), with a new address, key and data directory, as
a view names a replaced node's new machine: every correct node and client refuses the old
key once it holds the new layout, and the new machine catches up from the group's other
nodes once started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio

from bftfs.config import ClusterConfig
from bftfs.crypto import AdminKey, Identity, KeyFileError, KeyRing
from bftfs.ids import NodeId
from bftfs.layout import builder, codec, pending
from bftfs.layout.groups import check_nodes, group_config, read_layout
from bftfs.layout.model import Layout, LayoutError
from bftfs.layout.service import LAYOUT_OID, PUT
from bftfs.membership.levelling import LAYOUT
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused


@dataclass(frozen=True)
class Replacement:
    """What :func:`replace_node` made: the configuration and layout before and after,
    the new layout's signed bytes, and where the node is.  ``again``: the layout and
    ``cluster.toml`` named the machine already (a command run again: nothing written, the
    old machine's process is not this one's to stop); ``reused_key``: the new machine's
    key was the one an interrupted run left in its data directory."""

    before: ClusterConfig
    config: ClusterConfig
    layout: Layout
    blob: bytes
    group: int
    index: int
    again: bool = False
    reused_key: bool = False


def replace_node(
    cfg: ClusterConfig, path: Path, node: int, address: tuple[str, int], data_dir: Path | None
) -> Replacement:
    """Put node ``node`` (global id) of the held layout on a new machine at ``address``:
    a new key in its (empty) data directory, the next layout version signed with the new
    address and key, its intent kept (the commit point), then the layout and
    ``cluster.toml`` written (``layout/pending.py``).  Not pushed: :func:`push`; the
    intent is removed by :func:`~bftfs.layout.pending.remove` once the old machine's
    process is stopped.

    Run again with the same address it finishes what an interrupted run left: an intent
    is completed first; a layout naming the node at ``address`` that ``cluster.toml`` does
    not yet (an older bftfs interrupted, no intent) is completed from the key in the data
    directory; a key alone in the data directory (interrupted before the intent) is taken
    as the new machine's.  A machine both files name already at ``address`` is
    ``again``.

    Raises:
        LayoutError: no layout, the node is in no group, the data directory holds a
            store or another node's key, the address is another node's (nothing is
            written then).
    """
    done = pending.complete(cfg, path)
    before = cfg if done is None else done.before
    cfg = cfg if done is None else done.config
    got = read_layout(cfg)
    if got is None:
        raise LayoutError("this cluster has no layout (one group)")
    held, held_blob = got
    host, port = address
    mine, spec = held.node(node), cfg.node(NodeId(node))
    if done is not None and (done.pending.node, done.pending.new.host, done.pending.new.port) == (
        node,
        host,
        port,
    ):  # this very replacement, interrupted and now completed
        return Replacement(before, cfg, held, held_blob, *_place(held, node), reused_key=True)
    if (mine.host, mine.port) == (host, port):
        if (spec.host, spec.port, spec.public_key) == (host, port, mine.public_key):
            check_nodes(cfg, held)
            return Replacement(cfg, cfg, held, held_blob, *_place(held, node), again=True)
        return _complete_from_layout(cfg, path, held, held_blob, node, data_dir)
    check_nodes(cfg, held)
    if any((s.host, s.port) == (host, port) for s in cfg.nodes):
        raise LayoutError(f"{host}:{port} is a node's address in cluster.toml already")
    new_dir = (data_dir or cfg.home / f"node{node}.l{held.version + 1}").resolve()
    if (new_dir / "lmdb").exists():
        raise LayoutError(f"{new_dir} holds a node's store: the new machine starts empty")
    ident = _left_key(held, node, new_dir)
    reused = ident is not None
    ident = ident or Identity.generate(NodeId(node))
    layout = builder.new_machine(held, node, host, port, ident.public)  # raises first
    key = AdminKey.load(cfg.admin_key_path)
    if not reused:
        ident.save(new_dir / "private" / "key")
    blob = codec.sign(layout, key)
    codec.accept(held, blob, key.public)
    old = pending.Machine(spec.host, spec.port, spec.public_key, spec.data_dir.resolve())
    intent = pending.Pending(
        node, layout.version, pending.Machine(host, port, ident.public, new_dir), old, blob
    )
    pending.write(cfg, intent)  # the commit point: from here on, completed by any command
    moved, _ = pending.apply(cfg, path, intent)
    return Replacement(cfg, moved, layout, blob, *_place(layout, node), reused_key=reused)


def _place(layout: Layout, node: int) -> tuple[int, int]:
    group = next(g for g in layout.groups if node in g.members)
    return group.id, group.members.index(node)


def _left_key(held: Layout, node: int, new_dir: Path) -> Identity | None:
    """The key an interrupted run left in the new machine's data directory (made, then
    stopped before its intent), to be the new machine's again: nothing it made is lost.

    Raises:
        LayoutError: the key there is a node's in ``held`` (a copied data directory).
        KeyFileError: the key file is unreadable or open to others.
    """
    path = new_dir / "private" / "key"
    if not path.exists():
        return None
    ident = Identity.load(NodeId(node), path)
    owner = next((n.id for n in held.nodes if n.public_key == ident.public), None)
    if owner is not None:
        raise LayoutError(f"{path} is node {owner}'s key: the new machine needs its own")
    return ident


def _complete_from_layout(
    cfg: ClusterConfig,
    path: Path,
    held: Layout,
    blob: bytes,
    node: int,
    data_dir: Path | None,
) -> Replacement:
    """The layout names node ``node``'s new machine and ``cluster.toml`` does not, with
    no intent (a replacement interrupted by a bftfs from before intents): ``cluster.toml``
    completed from the layout and the key in the new machine's data directory (``data_dir``,
    else the default of that layout version).

    Raises:
        LayoutError: that directory holds no key, or not the layout's.
    """
    mine = held.node(node)
    new_dir = (data_dir or cfg.home / f"node{node}.l{held.version}").resolve()
    try:
        ident = Identity.load(NodeId(node), new_dir / "private" / "key")
    except KeyFileError as e:
        raise LayoutError(
            f"layout {held.version} names node {node}'s new machine, cluster.toml does not, "
            f"and {e}: give its data directory with --data-dir"
        ) from None
    if ident.public != mine.public_key:
        raise LayoutError(
            f"{new_dir}/private/key is not the key layout {held.version} names for node "
            f"{node}: give the new machine's data directory with --data-dir"
        )
    spec = cfg.node(NodeId(node))
    old = pending.Machine(spec.host, spec.port, spec.public_key, spec.data_dir.resolve())
    new = pending.Machine(mine.host, mine.port, mine.public_key, new_dir)
    intent = pending.Pending(node, held.version, new, old, blob)
    pending.write(cfg, intent)
    moved, _ = pending.apply(cfg, path, intent)
    return Replacement(cfg, moved, held, blob, *_place(held, node), reused_key=True)


@dataclass
class Pushed:
    """Which nodes (global ids) took the layout, refused it, or did not answer."""

    acked: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    unreachable: dict[int, str] = field(default_factory=dict)
    #: The version the layout service holds after the publish (None: not reached; why).
    published: int | None = None
    unpublished: str = ""


async def push(
    cfg: ClusterConfig,
    layout: Layout,
    blob: bytes,
    as_client: str,
    *,
    skip: frozenset[int] = frozenset(),
    timeout: float = 10.0,
) -> Pushed:
    """Send ``blob`` (``layout`` signed) to every node of every group but ``skip`` (a
    newcomer not started yet), as client ``as_client``; each group's nodes through an
    endpoint of that group's configuration under ``layout``.  Nodes that do not answer
    learn it from their group's peers or from mounts (``membership/levelling.py``).  Then
    the layout is published to the layout service (``layout/service.py``), a Q/U update
    of its group."""
    who = cfg.client(as_client)
    me = Identity.load(who.id, cfg.client_key_path(as_client))
    if me.public != who.public_key:
        raise KeyFileError(f"{cfg.client_key_path(as_client)} is not client {as_client!r}'s key")
    out = Pushed()

    async def group(g: int) -> None:
        part = group_config(cfg, layout, g)
        ring = KeyRing(me, part.node_public_keys())
        addresses = {s.id: (s.host, s.port) for s in part.nodes}
        members = layout.groups[g].members
        async with open_endpoint(ring, addresses, timeout=timeout) as ep:
            async with trio.open_nursery() as nursery:
                for i, global_id in enumerate(members):
                    if global_id not in skip:
                        nursery.start_soon(one, ep, NodeId(i), global_id)
            if g == layout.objects[0] and set(members) & set(out.acked):
                await publish(ep, part)  # the layout service's group (layout/service.py)

    async def publish(ep: Endpoint, part: ClusterConfig) -> None:
        qu = QUClient(ep, QUThresholds.from_config(part), client_id=ep.pid)
        with trio.move_on_after(timeout):
            try:
                out.published = int(await qu.update(LAYOUT_OID, PUT, blob))
            except MethodRefused as e:  # a newer one there already: ours is not the newest
                out.unpublished = str(e)
            except Exception as e:  # noqa: BLE001 - the nodes level it anyway: reported
                out.unpublished = f"{type(e).__name__}: {e}"
            return
        out.unpublished = "no quorum of its group answered in time"

    async def one(ep: Endpoint, index: NodeId, global_id: int) -> None:
        try:
            with trio.fail_after(timeout):
                await ep.call(index, LAYOUT.install, blob)
            out.acked.append(global_id)
        except RemoteError as e:
            out.refused[global_id] = str(e)
        except (TransportError, trio.TooSlowError) as e:
            out.unreachable[global_id] = str(e) or "no answer in time"

    async with trio.open_nursery() as nursery:
        for g in layout.groups:
            nursery.start_soon(group, g.id)
    out.acked.sort()
    return out
