"""The administrator's side of a layout taken while the cluster runs (docs/layout.md,
"Replacing a node of a group"): the next version naming a newcomer in a leaving node's
place, written beside ``cluster.toml``, and pushed to the running nodes of every group.

A new machine gets a new global id (node ids in ``cluster.toml`` are ``0..N-1`` in
order, so the leaving node's entry stays there, in no group: its process is refused by
every correct node and client from the push on) and takes the leaving node's index in its
group: the same Q/U server and PASIS fragment index, so nothing moves; it catches up from
the group's other nodes once started, as a replaced node of one group does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from bftfs.config import ClusterConfig, NodeSpec, save
from bftfs.crypto import AdminKey, Identity, KeyFileError, KeyRing
from bftfs.ids import NodeId
from bftfs.layout import builder, codec
from bftfs.layout.groups import group_config, load_layout, store_layout
from bftfs.layout.model import Layout, LayoutError, LayoutNode
from bftfs.membership.levelling import LAYOUT
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import RemoteError, TransportError


@dataclass(frozen=True)
class Replacement:
    """What :func:`replace_node` made: the new configuration and layout, and the
    newcomer."""

    config: ClusterConfig
    layout: Layout
    blob: bytes
    newcomer: NodeSpec
    group: int
    index: int


def replace_node(
    cfg: ClusterConfig, path: Path, leaving: int, address: tuple[str, int], data_dir: Path | None
) -> Replacement:
    """Replace node ``leaving`` (global id) of the held layout by a new machine at
    ``address``: a new key in its (empty) data directory, a node entry appended to
    ``cluster.toml`` (the leaving one stays, in no group), the next layout version signed
    and stored (``layout/groups.store_layout``).  Not pushed: :func:`push`.

    Raises:
        LayoutError: no layout, the node is in no group, the data directory holds a
            store, or the new layout breaks a rule (nothing is written then but the key).
    """
    held = load_layout(cfg)
    if held is None:
        raise LayoutError("this cluster has no layout (one group): `bftfs node replace` it")
    key = AdminKey.load(cfg.admin_key_path)
    old = cfg.node(NodeId(leaving))
    new_id = len(cfg.nodes)
    new_dir = (data_dir or cfg.home / f"node{new_id}").resolve()
    if (new_dir / "lmdb").exists():
        raise LayoutError(f"{new_dir} holds a node's store: the newcomer starts empty")
    host, port = address
    if any((s.host, s.port) == (host, port) for s in cfg.nodes):
        raise LayoutError(f"{host}:{port} is a node's address in cluster.toml already")
    ident = Identity.generate(NodeId(new_id))
    spec = NodeSpec(NodeId(new_id), host, port, ident.public, new_dir, domain=old.domain)
    newcomer = LayoutNode(new_id, host, port, ident.public, spec.trust_domain)
    layout = builder.replace_node(held, leaving, newcomer)  # raises before anything is kept
    ident.save(new_dir / "private" / "key")
    blob = codec.sign(layout, key)
    grown = replace(cfg, nodes=(*cfg.nodes, spec)).validate()
    save(grown, path)  # first the newcomer's entry, then the layout naming it
    store_layout(grown, blob)
    group = next(g for g in layout.groups if new_id in g.members)
    return Replacement(grown, layout, blob, spec, group.id, group.members.index(new_id))


@dataclass
class Pushed:
    """Which nodes (global ids) took the layout, refused it, or did not answer."""

    acked: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    unreachable: dict[int, str] = field(default_factory=dict)


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
    learn it from their group's peers or from mounts (``membership/levelling.py``)."""
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
        async with (
            open_endpoint(ring, addresses, timeout=timeout) as ep,
            trio.open_nursery() as nursery,
        ):
            for i, global_id in enumerate(members):
                if global_id not in skip:
                    nursery.start_soon(one, ep, NodeId(i), global_id)

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
