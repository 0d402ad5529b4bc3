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

from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from bftfs.config import ClusterConfig, save
from bftfs.crypto import AdminKey, Identity, KeyFileError, KeyRing
from bftfs.ids import NodeId
from bftfs.layout import builder, codec
from bftfs.layout.groups import group_config, layout_path, load_layout
from bftfs.layout.model import Layout, LayoutError
from bftfs.membership.levelling import LAYOUT
from bftfs.membership.viewkeys import replace_durably
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import RemoteError, TransportError


@dataclass(frozen=True)
class Replacement:
    """What :func:`replace_node` made: the configuration and layout before and after,
    the new layout's signed bytes, and where the node is."""

    before: ClusterConfig
    config: ClusterConfig
    layout: Layout
    blob: bytes
    group: int
    index: int


def replace_node(
    cfg: ClusterConfig, path: Path, node: int, address: tuple[str, int], data_dir: Path | None
) -> Replacement:
    """Put node ``node`` (global id) of the held layout on a new machine at ``address``:
    a new key in its (empty) data directory, the next layout version signed with the new
    address and key and stored, and ``cluster.toml`` naming the new machine.  Not pushed:
    :func:`push`.

    Raises:
        LayoutError: no layout, the node is in no group, the data directory holds a
            store, the address is another node's (nothing is written then).
    """
    held = load_layout(cfg)
    if held is None:
        raise LayoutError("this cluster has no layout (one group)")
    host, port = address
    if any((s.host, s.port) == (host, port) for s in cfg.nodes):
        raise LayoutError(f"{host}:{port} is a node's address in cluster.toml already")
    new_dir = (data_dir or cfg.home / f"node{node}.l{held.version + 1}").resolve()
    if (new_dir / "lmdb").exists():
        raise LayoutError(f"{new_dir} holds a node's store: the new machine starts empty")
    ident = Identity.generate(NodeId(node))
    layout = builder.new_machine(held, node, host, port, ident.public)  # raises first
    key = AdminKey.load(cfg.admin_key_path)
    ident.save(new_dir / "private" / "key")
    blob = codec.sign(layout, key)
    codec.accept(held, blob, key.public)
    spec = replace(cfg.node(NodeId(node)), host=host, port=port, public_key=ident.public)
    moved = replace(
        cfg, nodes=tuple(replace(spec, data_dir=new_dir) if s.id == node else s for s in cfg.nodes)
    ).validate()
    replace_durably(layout_path(cfg), blob, 0o644)  # then cluster.toml, which names it
    save(moved, path)
    group = next(g for g in layout.groups if node in g.members)
    return Replacement(cfg, moved, layout, blob, group.id, group.members.index(node))


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
