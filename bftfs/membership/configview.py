"""Between the cluster configuration and views: a configuration's view, a view applied to a
configuration, and the signed view files a node or an operator keeps.

The configuration (``cluster.toml``) stays what nodes and clients start from; a view, once
held, overrides its membership (clients; nodes and thresholds too once they can change).
Everything else (paths, policies, sizes) stays the file's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bftfs.config import ClientSpec, ClusterConfig, ConfigError, NodeSpec, RetiredClient
from bftfs.ids import CLIENT_ID_BASE
from bftfs.membership.view import (
    CURRENT,
    Retired,
    View,
    ViewClient,
    ViewError,
    ViewNode,
    decode,
)
from bftfs.membership.viewkeys import replace_durably

#: A node's own copy of the newest view it took, in its data directory.
NODE_VIEW_FILE = "view.signed"


def view_of(cfg: ClusterConfig, number: int = 1) -> View:
    """``cfg``'s membership as view ``number`` (1: what ``bftfs init`` made, or what a
    cluster from before views runs on)."""
    return View(
        number=number,
        t=cfg.t,
        b=cfg.b,
        qc=cfg.qc,
        m=cfg.m,
        nodes=tuple(ViewNode(s.id, s.host, s.port, s.public_key) for s in cfg.nodes),
        clients=tuple(ViewClient(c.id, c.name, c.public_key) for c in cfg.clients),
        retired=tuple(Retired(r.id, r.name) for r in cfg.retired_clients),
    )


def apply(cfg: ClusterConfig, view: View) -> ClusterConfig:
    """``cfg`` with ``view``'s membership: its clients, revoked clients and (same ids,
    same data directories) node addresses and keys.

    Raises:
        ViewError: the result breaks a configuration rule (the message names it).
    """
    dirs = {s.id: s.data_dir for s in cfg.nodes}
    nodes = tuple(
        replace(cfg.node(n.id), host=n.host, port=n.port, public_key=n.public_key)
        if n.id in dirs
        else None
        for n in view.nodes
    )
    if any(n is None for n in nodes):
        raise ViewError("the view names nodes this configuration has no data directory for")
    used = [int(c.id) for c in view.clients] + [int(r.id) for r in view.retired]
    try:
        return replace(
            cfg,
            t=view.t,
            b=view.b,
            qc=view.qc,
            m=view.m,
            nodes=tuple(n for n in nodes if n is not None),
            clients=tuple(ClientSpec(c.id, c.name, c.public_key) for c in view.clients),
            retired_clients=tuple(RetiredClient(r.id, r.name) for r in view.retired),
            next_client=max(
                cfg.next_client_number, max(used, default=CLIENT_ID_BASE - 1) - CLIENT_ID_BASE + 1
            ),
        ).validate()
    except ConfigError as e:
        raise ViewError(f"view {view.number} breaks a rule: {e}") from None


def config_of_generation(cfg: ClusterConfig, view: View, which: str = CURRENT) -> ClusterConfig:
    """The cluster configuration a Q/U or PASIS client (or a node) of generation ``which``
    (``"current"`` or ``"previous"``) of ``view`` runs on: that generation's nodes and
    thresholds, the view's clients; everything else ``cfg``'s.  A node keeps the data
    directory ``cfg`` gives the same machine (same id and key); one ``cfg`` does not name
    gets ``<home>/generation<G>/node<I>`` (only a node started from it would use it).

    Raises:
        ViewError: ``view`` has no such generation, or the result breaks a configuration
            rule (the message names it).
    """
    flat = view.as_generation(which)
    dirs = {(int(s.id), s.public_key): s.data_dir for s in cfg.nodes}
    nodes = tuple(
        NodeSpec(
            n.id,
            n.host,
            n.port,
            n.public_key,
            dirs.get(
                (int(n.id), n.public_key), cfg.home / f"generation{flat.generation}" / f"node{n.id}"
            ),
        )
        for n in flat.nodes
    )
    return apply(replace(cfg, nodes=nodes), flat)


def read_signed(path: Path, admin_public: bytes) -> tuple[View, bytes] | None:
    """The view in the file at ``path`` and its bytes, or None when there is none.

    Raises:
        ViewError: the file holds no view this administrator signed.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ViewError(f"cannot read {path}: {e.strerror}") from None
    try:
        return decode(blob, admin_public), blob
    except ViewError as e:
        raise ViewError(f"{path}: {e}") from None


def write_signed(path: Path, blob: bytes) -> None:
    """Write a signed view to ``path`` durably and atomically: after a crash the file holds
    the old view or the new one, whole (a node must never forget a view it acknowledged:
    it would take an older one again)."""
    replace_durably(path, blob, 0o644)


def starting_view(cfg: ClusterConfig, data_dir: Path | None) -> tuple[View, bytes | None]:
    """The view a node (``data_dir``) or a client (None) starts with: the highest-numbered
    of the one beside the configuration and the node's own copy, both checked against the
    administrator key; view 1 of the configuration itself when the cluster has no admin key
    or no signed view yet (unsigned then: the local file is trusted as it always was).

    Raises:
        ViewError: a view file that is there but not validly signed (refused loudly: a
            node must not silently fall back to an older membership).
    """
    if cfg.admin_key is None:
        return view_of(cfg), None
    found = [read_signed(cfg.view_path, cfg.admin_key)]
    if data_dir is not None:
        found.append(read_signed(data_dir / NODE_VIEW_FILE, cfg.admin_key))
    best = max((f for f in found if f is not None), key=lambda f: f[0].number, default=None)
    if best is None:
        return view_of(cfg), None
    return best
