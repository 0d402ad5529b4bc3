"""A ``bftfs node replace`` on a cluster of groups made crash-safe (docs/layout.md, "A crash
during the replacement"): its intent is written first, and whoever reads the cluster
next completes it.

The replacement writes two files that must agree, the signed layout (``layout.signed``,
naming the new machine's address and key) and ``cluster.toml`` (naming them too, and the
new machine's data directory, which no layout carries).  No rename covers both, so the
command first writes **the intent** (``layout.replacing``, fsync'd): the new layout's
signed bytes, the node, its new address, key and data directory, and the old ones.  That
write is the commit point: from then on the replacement is done, whatever stops the
command, and :func:`complete` (run by every ``bftfs`` command reading the cluster,
``cli/common.cluster_of``) writes whichever of the two files is behind, idempotently; the
intent is removed once the old machine's process is stopped (``cli/layouts.py``).  Before
the intent, nothing names the new machine: the cluster is the old one, and the new key
kept in its data directory is taken again by the next ``bftfs node replace`` of the node.

Completing needs no administrator key (the layout in the intent is already signed, and
checked as any layout is, ``codec.accept``): any operator able to write the cluster
directory completes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from bftfs.config import ClusterConfig, ConfigError, save
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.groups import PENDING_FILE, check_nodes, layout_path, read_layout, read_optional
from bftfs.layout.model import Layout, LayoutError
from bftfs.membership.viewkeys import replace_durably

#: The intent's format (a JSON object; the layout in it as hex).
FORMAT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Machine:
    """One machine of a node: its address, its key and, here, its data directory."""

    host: str
    port: int
    public_key: bytes
    data_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "public_key": self.public_key.hex(),
            "data_dir": str(self.data_dir),
        }

    @classmethod
    def from_json(cls, d: Any) -> Machine:
        return cls(
            str(d["host"]), int(d["port"]), bytes.fromhex(d["public_key"]), Path(d["data_dir"])
        )


@dataclass(frozen=True)
class Pending:
    """A replacement decided: node ``node`` moves from ``old`` to ``new`` in layout
    ``version``, whose signed bytes are ``blob``."""

    node: int
    version: int
    new: Machine
    old: Machine
    blob: bytes

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "node": self.node,
            "version": self.version,
            "new": self.new.to_json(),
            "old": self.old.to_json(),
            "layout": self.blob.hex(),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def pending_path(cfg: ClusterConfig) -> Path:
    """Where the intent of a replacement under way is kept (beside ``cluster.toml``)."""
    return cfg.home / PENDING_FILE


def write(cfg: ClusterConfig, p: Pending) -> None:
    """Keep the intent ``p`` durably (fsync'd, atomic rename): the commit point."""
    replace_durably(pending_path(cfg), p.to_bytes(), 0o644)


def read(cfg: ClusterConfig) -> Pending | None:
    """The intent kept beside ``cluster.toml``, or None.

    Raises:
        LayoutError: the file is unreadable or malformed (named).
    """
    return read_intent_file(
        pending_path(cfg),
        "a replacement's intent",
        lambda doc: Pending(
            int(doc["node"]),
            int(doc["version"]),
            Machine.from_json(doc["new"]),
            Machine.from_json(doc["old"]),
            bytes.fromhex(doc["layout"]),
        ),
    )


def read_intent_file(path: Path, what: str, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """The intent (a JSON document of :data:`FORMAT`) at ``path`` as ``parse`` reads it,
    or None when there is none; ``what`` names it in the error.

    Raises:
        LayoutError: the file is unreadable or malformed (named).
    """
    raw = read_optional(path)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if doc["format"] != FORMAT:
            raise ValueError(f"format {doc['format']!r}, not {FORMAT}")
        return parse(doc)
    except (ValueError, KeyError, TypeError) as e:
        raise LayoutError(f"{path} is not {what} ({e})") from None


def remove(cfg: ClusterConfig) -> None:
    """Forget the intent, the replacement being complete (its directory fsync'd, so a
    crash never brings back an intent whose old process was stopped: harmless, but
    said again)."""
    unlink_durably(pending_path(cfg))


def unlink_durably(path: Path) -> None:
    """Remove ``path`` (if there) and fsync its directory: an intent removed stays removed
    across a crash (``layout/grow.py``'s too)."""
    path.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_durably(cfg: ClusterConfig, path: Path) -> None:
    """``config.save`` (atomic), then the file and its directory fsync'd: the intent is
    removed only after ``cluster.toml`` is on disk."""
    save(cfg, path)
    for target in (path, path.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def with_machine(cfg: ClusterConfig, node: int, m: Machine) -> ClusterConfig:
    """``cfg`` with node ``node`` on machine ``m`` (not validated)."""
    spec = replace(
        cfg.node(NodeId(node)),
        host=m.host,
        port=m.port,
        public_key=m.public_key,
        data_dir=m.data_dir,
    )
    return replace(cfg, nodes=tuple(spec if s.id == node else s for s in cfg.nodes))


def apply(cfg: ClusterConfig, path: Path, p: Pending) -> tuple[ClusterConfig, Layout]:
    """Make ``layout.signed`` and ``cluster.toml`` (at ``path``) say what ``p`` says,
    writing only what is behind (the layout first: ``cluster.toml`` names it); the
    configuration and layout now held.  Idempotent.

    Raises:
        LayoutError: the intent's layout is not the administrator's, not the held one
            nor the next, or does not name its new machine; ``cluster.toml`` names the node
            on neither machine (edited meanwhile); a write failed (``OSError`` as it is).
    """
    if cfg.admin_key is None:
        raise LayoutError("cluster.toml has no administrator key ([cluster] admin_key)")
    layout = codec.decode(p.blob, cfg.admin_key)
    mine = layout.node(p.node)
    if (layout.version, mine.host, mine.port, mine.public_key) != (
        p.version,
        p.new.host,
        p.new.port,
        p.new.public_key,
    ):
        raise LayoutError(f"{pending_path(cfg)}: its layout does not name its new machine")
    got = read_layout(cfg)
    held = None if got is None else got[0]
    try:
        taken = codec.accept(held, p.blob, cfg.admin_key)
    except LayoutError as e:
        raise LayoutError(
            f"{pending_path(cfg)} (layout {p.version}) disagrees with {layout_path(cfg)}: {e}"
        ) from None
    if taken is not held:
        replace_durably(layout_path(cfg), p.blob, 0o644)
    spec = cfg.node(NodeId(p.node))
    now = Machine(spec.host, spec.port, spec.public_key, spec.data_dir.resolve())
    if now != p.new:
        if spec.public_key not in (p.old.public_key, p.new.public_key):
            raise LayoutError(
                f"{path} names node {p.node} under a key neither its old machine's nor its "
                f"new one's in {pending_path(cfg)}: edited meanwhile; put it back by hand"
            )
        try:
            moved = with_machine(cfg, p.node, p.new).validate()
        except ConfigError as e:
            raise LayoutError(f"node {p.node} on its new machine: {e}") from None
        save_durably(moved, path)
        cfg = moved
    check_nodes(cfg, taken)
    return cfg, taken


@dataclass(frozen=True)
class Completed:
    """An intent found and completed: ``before`` names the node's old machine (to stop
    its process), ``config`` is ``cluster.toml`` now."""

    pending: Pending
    before: ClusterConfig
    config: ClusterConfig
    layout: Layout


def complete(cfg: ClusterConfig, path: Path) -> Completed | None:
    """Complete the replacement whose intent is kept beside ``cluster.toml`` (at
    ``path``, loaded as ``cfg``), if any (:func:`apply`); the intent stays until the
    old machine's process is stopped (:func:`remove`).

    Raises:
        LayoutError: the intent is bad or disagrees with the files, or a write failed: the
            message names the intent and that the next command completes it once fixed.
    """
    p = read(cfg)
    if p is None:
        return None
    try:
        after, layout = apply(cfg, path, p)
    except OSError as e:
        raise LayoutError(
            f"an interrupted `bftfs node replace {p.node}` (layout {p.version}, "
            f"{pending_path(cfg)}) cannot be completed: {e.strerror or e}; once that is "
            "fixed, any bftfs command reading the cluster completes it (e.g. `bftfs status`)"
        ) from None
    return Completed(p, with_machine(cfg, p.node, p.old), after, layout)
