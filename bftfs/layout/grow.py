"""Groups added to a cluster of groups, and the move they start ended (docs/layout.md,
"Adding groups"): ``bftfs group add`` makes new nodes and the next layout with new groups
of them (``builder.grow``: each map moves to the new groups what their shares need, the
old maps named as the ones the partitions move from); ``bftfs group finish`` issues the
layout that ends the move (``builder.finish_move``).

``group add`` writes two files that must agree, ``cluster.toml`` (the new nodes' ids,
addresses, keys and data directories) and ``layout.signed`` (the new layout naming them);
no rename covers both.  So, as ``bftfs node replace`` does (``layout/pending.py``), it keeps
an intent, ``layout.growing``, completed by whoever reads the cluster next.  The order:

1. each new node's key in its data directory (``node<I>/private/key``, fsync'd).  A run
   cut here leaves keys that nothing names; the next run takes them again (no second set
   of nodes) and may choose other ports, nothing having named the first ones;
2. the intent (fsync'd, atomic rename): the new layout's signed bytes and the new nodes.
   The commit point: from here on the groups are added, whatever stops the command;
3. ``cluster.toml`` with the new nodes appended.  It comes before the layout because a
   configuration naming more nodes than the held layout is one every process reads as
   before (the newcomers are in no group yet), while a layout naming nodes
   ``cluster.toml`` lacks is refused (``groups.check_nodes``): so a process reading the
   files alone (a node started by systemd, the mount helper) never meets a mismatch;
4. ``layout.signed`` (the new version);
5. the command's own work (``cli/growing.py``): the new nodes started here when the
   cluster runs here, the layout pushed to every node;
6. the intent removed.

Every command reading the cluster completes 3 and 4 from an intent it finds
(:func:`complete`, idempotent: it writes only what is behind); the next ``bftfs group add``
does 5 and 6.  Completing needs no administrator key (the layout in the intent is signed,
and checked as any layout is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bftfs.config import ClusterConfig, ConfigError, NodeSpec
from bftfs.config.model import domain_rule
from bftfs.crypto import AdminKey, Identity, KeyFileError
from bftfs.ids import NodeId
from bftfs.layout import builder, codec
from bftfs.layout.groups import (
    check_nodes,
    layout_path,
    load_layout,
    read_layout,
    store_layout,
)
from bftfs.layout.model import Layout, LayoutError, LayoutNode
from bftfs.layout.pending import FORMAT, read_intent_file, save_durably, unlink_durably
from bftfs.membership.viewkeys import replace_durably

#: A ``bftfs group add`` committed and not finished, beside ``cluster.toml``.
GROWING_FILE = "layout.growing"


class OneGroup(LayoutError):
    """The cluster has no layout: one group, made without ``bftfs init --groups``."""


class GrowRefused(LayoutError):
    """What was asked cannot be done (the layout still moves, domains that make no group,
    an address taken): nothing was written.  The CLI answers it as a usage error."""


@dataclass(frozen=True)
class NewNode:
    """A node ``bftfs group add`` makes: its global id, address, key and data directory,
    and its trust domain as given (empty: its own, ``node<id>``)."""

    id: int
    host: str
    port: int
    public_key: bytes
    data_dir: Path
    domain: str = ""

    def spec(self) -> NodeSpec:
        """The node as ``cluster.toml`` names it."""
        return NodeSpec(
            NodeId(self.id), self.host, self.port, self.public_key, self.data_dir, self.domain
        )

    def layout_node(self) -> LayoutNode:
        """The node as a layout names it (``builder.nodes_of`` reads a spec so)."""
        return LayoutNode(self.id, self.host, self.port, self.public_key, self.spec().trust_domain)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "public_key": self.public_key.hex(),
            "data_dir": str(self.data_dir),
            "domain": self.domain,
        }

    @classmethod
    def from_json(cls, d: Any) -> NewNode:
        return cls(
            int(d["id"]),
            str(d["host"]),
            int(d["port"]),
            bytes.fromhex(d["public_key"]),
            Path(d["data_dir"]),
            str(d["domain"]),
        )


@dataclass(frozen=True)
class Growing:
    """A ``bftfs group add`` decided: layout ``version`` (signed bytes ``blob``) adds
    groups of ``nodes``."""

    version: int
    nodes: tuple[NewNode, ...]
    blob: bytes

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": self.version,
            "nodes": [n.to_json() for n in self.nodes],
            "layout": self.blob.hex(),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def growing_path(cfg: ClusterConfig) -> Path:
    """Where the intent of a ``bftfs group add`` is kept (beside ``cluster.toml``)."""
    return cfg.home / GROWING_FILE


def read_intent(cfg: ClusterConfig) -> Growing | None:
    """The intent kept beside ``cluster.toml``, or None.

    Raises:
        LayoutError: the file is unreadable or malformed (named).
    """
    return read_intent_file(
        growing_path(cfg),
        "a `bftfs group add`'s intent",
        lambda doc: Growing(
            int(doc["version"]),
            tuple(NewNode.from_json(n) for n in doc["nodes"]),
            bytes.fromhex(doc["layout"]),
        ),
    )


def remove_intent(cfg: ClusterConfig) -> None:
    """Forget the intent, the command's work done (durably: step 6 of the module
    docstring)."""
    unlink_durably(growing_path(cfg))


def group_size(layout: Layout) -> int:
    """The nodes in each group of ``layout`` (new groups are made as large)."""
    return len(layout.groups[0].members)


@dataclass(frozen=True)
class Grown:
    """What :func:`grow` did: the layout before, ``cluster.toml`` and the layout after
    (signed: ``blob``), the new nodes and the ids whose key an interrupted run had made."""

    before: Layout
    config: ClusterConfig
    layout: Layout
    blob: bytes
    nodes: tuple[NewNode, ...]
    reused: tuple[int, ...] = ()


def grow(
    cfg: ClusterConfig,
    path: Path,
    count: int,
    addresses: Sequence[tuple[str, int]],
    domains: Sequence[str] = (),
) -> Grown:
    """Add ``count`` groups of new nodes (one per address, in id order after the last
    node; each in ``domains[i]``, or its own domain without them) to the held layout, as
    steps 1-4 of the module docstring; the command does the rest.

    Raises:
        OneGroup: the cluster has no layout.
        GrowRefused: its layout still moves, the counts do not match, an address is a
            node's, the domains cannot make the groups (nothing is written then).
        LayoutError: a file is bad, a leftover data directory holds a store, the
            administrator key is not ``cluster.toml``'s.
        KeyFileError: the administrator key is missing or unreadable.
    """
    held = growable(cfg)
    size = group_size(held)
    want = count * size
    if count < 1 or len(addresses) != want or (domains and len(domains) != want):
        raise GrowRefused(
            f"{count} group(s) of {size} nodes need {want} new nodes: {len(addresses)} "
            f"addresses and {len(domains)} domains given"
        )
    made = [_new_node(cfg, held, len(cfg.nodes) + i, a, domains) for i, a in enumerate(addresses)]
    nodes = tuple(n for n, _ in made)
    try:  # everything checked before anything is written
        replace(cfg, nodes=cfg.nodes + tuple(n.spec() for n in nodes)).validate()
        layout = builder.grow(held, count, [n.layout_node() for n in nodes], size)
    except ConfigError as e:  # a LayoutError too
        raise GrowRefused(str(e)) from None
    key = AdminKey.load(cfg.admin_key_path)
    if key.public != cfg.admin_key:  # else the intent would name a layout nobody takes
        raise LayoutError(f"{cfg.admin_key_path} is not the administrator key of cluster.toml")
    blob = codec.sign(layout, key)
    codec.accept(held, blob, key.public)
    for node, ident in made:
        if ident is not None:
            _save_key(ident, node.data_dir / "private" / "key")
    intent = Growing(layout.version, nodes, blob)
    replace_durably(growing_path(cfg), intent.to_bytes(), 0o644)  # the commit point
    after, taken, _ = apply(cfg, path, intent)
    reused = tuple(n.id for n, ident in made if ident is None)
    return Grown(held, after, taken, blob, nodes, reused)


def growable(cfg: ClusterConfig, *, moving_ok: bool = False) -> Layout:
    """The held layout, if groups may be added to it (``moving_ok``: a layout still
    moving will do, for what ends or shows the move).

    Raises:
        OneGroup: no layout.
        GrowRefused: its partitions still move.
    """
    held = load_layout(cfg)
    if held is None:
        raise OneGroup(
            "this cluster is one group (made without `bftfs init --groups G`): groups are "
            "added to, and partitions moved in, a cluster of groups only"
        )
    if held.moving and not moving_ok:
        raise GrowRefused(
            f"layout {held.version} still moves partitions to the groups added last: finish "
            "it first (`bftfs group move`, then `bftfs group finish`; `bftfs group show` "
            "says how far it is)"
        )
    return held


def _new_node(
    cfg: ClusterConfig,
    held: Layout,
    node: int,
    address: tuple[str, int],
    domains: Sequence[str],
) -> tuple[NewNode, Identity | None]:
    """New node ``node`` at ``address`` in ``node<I>`` under the cluster directory, and its
    key to save (None: the key an interrupted run left there, taken again).

    Raises:
        GrowRefused: the address is a node's, or the domain breaks its rule.
        LayoutError: the data directory holds a store, or is a node's already.
    """
    host, port = address
    taken = next((s.id for s in cfg.nodes if (s.host, s.port) == (host, port)), None)
    if taken is not None:
        raise GrowRefused(f"{host}:{port} is node {taken}'s address already")
    domain = domains[node - len(cfg.nodes)] if domains else ""
    if domain and (why := domain_rule(domain)) is not None:
        raise GrowRefused(f"domain {domain!r} {why}")
    data_dir = (cfg.home / f"node{node}").resolve()
    if (data_dir / "lmdb").exists() or any(s.data_dir.resolve() == data_dir for s in cfg.nodes):
        raise LayoutError(
            f"{data_dir} holds a node's store or is a node's directory: a new node starts "
            "empty (move it away)"
        )
    left = _left_key(held, node, data_dir / "private" / "key")
    ident = left or Identity.generate(NodeId(node))
    made = NewNode(node, host, port, ident.public, data_dir, domain)
    return made, None if left is not None else ident


def _left_key(held: Layout, node: int, path: Path) -> Identity | None:
    """The key an interrupted run left at ``path`` (made, then cut before its intent), to
    be the node's again; None when there is none or it is unreadable (a write cut short:
    nothing names it, a new one is made).

    Raises:
        LayoutError: the key there is a node's in ``held`` (a copied data directory).
    """
    if not path.exists():
        return None
    try:
        ident = Identity.load(NodeId(node), path)
    except KeyFileError:
        return None
    owner = next((n.id for n in held.nodes if n.public_key == ident.public), None)
    if owner is not None:
        raise LayoutError(f"{path} is node {owner}'s key: a new node needs its own")
    return ident


def _save_key(ident: Identity, path: Path) -> None:
    """Save a new node's key and make it durable before the intent names it (a power cut
    must not leave an intent naming a key whose file came back empty)."""
    ident.save(path)
    for target in (path, path.parent, path.parent.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply(cfg: ClusterConfig, path: Path, p: Growing) -> tuple[ClusterConfig, Layout, bool]:
    """Make ``cluster.toml`` (at ``path``) then ``layout.signed`` say what ``p`` says,
    writing only what is behind; the configuration and layout now held, and whether
    anything was written.  Idempotent.  A layout newer than ``p``'s held meanwhile (a
    ``bftfs node replace`` after the add) is left as it is.

    Raises:
        LayoutError: the intent's layout is not the administrator's or does not name its
            nodes; ``cluster.toml`` names one of them under another key (edited meanwhile);
            the held layout is neither ``p``'s nor the one before (``OSError`` as it is
            when a write failed).
    """
    admin = cfg.admin_key
    if admin is None:
        raise LayoutError("cluster.toml has no administrator key ([cluster] admin_key)")
    layout = codec.decode(p.blob, admin)
    named = {n.id: n for n in layout.nodes}
    if layout.version != p.version or any(named.get(n.id) != n.layout_node() for n in p.nodes):
        raise LayoutError(f"{growing_path(cfg)}: its layout does not name its new nodes")
    got = read_layout(cfg)
    held = None if got is None else got[0]
    if held is not None and held.version > p.version:
        return cfg, held, False  # issued after both files were written: nothing behind
    wrote = False
    grown = _with_nodes(cfg, p)
    if grown is not cfg:
        save_durably(grown, path)
        cfg, wrote = grown, True
    try:
        taken = codec.accept(held, p.blob, admin)
    except LayoutError as e:
        raise LayoutError(
            f"{growing_path(cfg)} (layout {p.version}) disagrees with {layout_path(cfg)}: {e}"
        ) from None
    if taken is not held:
        replace_durably(layout_path(cfg), p.blob, 0o644)
        wrote = True
    check_nodes(cfg, taken)
    return cfg, taken, wrote


def _with_nodes(cfg: ClusterConfig, p: Growing) -> ClusterConfig:
    """``cfg`` with ``p``'s nodes it lacks appended (``cfg`` itself when it has them).

    Raises:
        LayoutError: it names one of them under another key, or they break a rule.
    """
    have = {int(s.id): s for s in cfg.nodes}
    for n in p.nodes:
        if n.id in have and have[n.id].public_key != n.public_key:
            raise LayoutError(
                f"cluster.toml names node {n.id} under another key than {growing_path(cfg)}: "
                "edited meanwhile; put it back by hand"
            )
    missing = tuple(n.spec() for n in p.nodes if n.id not in have)
    if not missing:
        return cfg
    try:
        return replace(cfg, nodes=cfg.nodes + missing).validate()
    except ConfigError as e:
        raise LayoutError(f"cluster.toml with the nodes of {growing_path(cfg)}: {e}") from None


@dataclass(frozen=True)
class Completed:
    """An intent found and completed: ``config`` and ``layout`` are the files now,
    ``wrote`` whether this completion wrote either."""

    intent: Growing
    config: ClusterConfig
    layout: Layout
    wrote: bool

    @property
    def overtaken(self) -> bool:
        """A later layout is held (the add's is in the past: only its nodes are left)."""
        return self.layout.version > self.intent.version


def complete(cfg: ClusterConfig, path: Path) -> Completed | None:
    """Complete the ``bftfs group add`` whose intent is kept beside ``cluster.toml`` (at
    ``path``, loaded as ``cfg``), if any (:func:`apply`); the intent stays until that
    command has started and pushed (:func:`remove_intent`).

    Raises:
        LayoutError: the intent is bad or disagrees with the files, or a write failed: the
            message names the intent and that the next command completes it once fixed.
    """
    p = read_intent(cfg)
    if p is None:
        return None
    try:
        after, layout, wrote = apply(cfg, path, p)
    except OSError as e:
        raise LayoutError(
            f"an interrupted `bftfs group add` (layout {p.version}, {growing_path(cfg)}) "
            f"cannot be completed: {e.strerror or e}; once that is fixed, any bftfs command "
            "reading the cluster completes it (e.g. `bftfs status`)"
        ) from None
    return Completed(p, after, layout, wrote)


def finish(cfg: ClusterConfig) -> tuple[Layout, bytes]:
    """Issue the layout ending the held layout's move (``builder.finish_move``), signed,
    kept beside ``cluster.toml`` (one atomic write: nothing to complete); it and its
    signed bytes.  Whether the move is complete is the caller's to check.

    Raises:
        LayoutError: no layout, or it moves nothing.
        KeyFileError: the administrator key is missing or unreadable.
    """
    held = load_layout(cfg)
    if held is None:
        raise LayoutError("this cluster has no layout (one group)")
    layout = builder.finish_move(held)
    blob = codec.sign(layout, AdminKey.load(cfg.admin_key_path))
    return store_layout(cfg, blob), blob
