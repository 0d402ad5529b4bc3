"""Views: the numbered, administrator-signed membership of a cluster (seed 000; dissertation
chapter 5, "Views", [003 L3645-3727]; ``docs/membership.md``).

A view names every node (id, address, public key), the thresholds, and every client (id,
name, public key); clients revoked before it are listed by id and name so history still
names them.  Only the administrator signs views (``crypto.AdminKey``), so a view is believed
because of its signature, whoever delivers it: a node, a client, or a file.  A party takes
a view only if its number is above the one it holds (:func:`judge`).

Signed view format (version :data:`FORMAT`), msgpack throughout::

    signed    = [MAGIC, format, body: bin, signature: bin(64)]
    body      = [number, t, b, qc, m, nodes, clients, retired]
    nodes     = [[id, host, port, public_key: bin(32)], ...]   ids 0..n-1 in order (format 1)
              | [[id, host, port, public_key: bin(32),         (format 2: each node's
                  view_key: bin(32)], ...]                      key for this view only)
    clients   = [[id, name, public_key: bin(32)], ...]         principal ids >= CLIENT_ID_BASE
    retired   = [[id, name, public_key: bin(32) | b""], ...]  revoked clients (ids never
                                                               reused; the key they had, so
                                                               nodes can tell them why)
    signature = Ed25519(admin, DOMAINS[format] || body)

Format 2 (:data:`FORMAT`) adds per-view node keys (``membership/viewkeys.py``); a view
without them is written in format 1, byte for byte as before, and both are read.

Every parse problem is one :class:`ViewError`: what a peer sends never raises anything else.
This module is pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from bftfs.config.model import ConfigError
from bftfs.crypto import AdminKey, signature_ok
from bftfs.ids import CLIENT_ID_BASE, ClientId, NodeId

MAGIC = "bftfs-view"
FORMAT = 2
#: Signed bytes start with this, so an admin signature over a view is never one over
#: anything else the key might sign later (nor a view of one format one of the other).
DOMAIN = b"bftfs-view-v1\0"
DOMAINS = {1: DOMAIN, 2: b"bftfs-view-v2\0"}
#: Largest signed view accepted (a peer's blob is parsed before its signature is checked).
MAX_VIEW_BYTES = 1 << 20


class ViewError(ConfigError):
    """A view is malformed, not signed by the administrator, or breaks a rule; the message
    says which.  A configuration error: the CLI reports it as one (exit 3)."""


@dataclass(frozen=True)
class ViewNode:
    """A node as a view names it."""

    id: NodeId
    host: str
    port: int
    public_key: bytes
    #: The node's key for this view only (format 2; empty in a view without per-view
    #: keys): it proves the node holds this view, until it forgets it.
    view_key: bytes = b""


@dataclass(frozen=True)
class ViewClient:
    """A client as a view names it."""

    id: ClientId
    name: str
    public_key: bytes


@dataclass(frozen=True)
class Retired:
    """A revoked client: its id is never reused and history keeps its name.  ``public_key``
    is the key it had (empty for a client revoked before views): a node that restarted can
    still answer that key's handshake with the reason."""

    id: ClientId
    name: str
    public_key: bytes = b""


@dataclass(frozen=True)
class View:
    """One numbered membership.  ``number`` only grows: 1 is the cluster ``bftfs init``
    made (or an older cluster's configuration, docs/membership.md "Migration")."""

    number: int
    t: int
    b: int
    qc: int
    m: int
    nodes: tuple[ViewNode, ...]
    clients: tuple[ViewClient, ...]
    retired: tuple[Retired, ...] = ()

    def public_keys(self) -> dict[int, bytes]:
        """Every principal's public key: who may open a session in this view."""
        keys = {int(n.id): n.public_key for n in self.nodes}
        keys.update({int(c.id): c.public_key for c in self.clients})
        return keys

    @property
    def has_view_keys(self) -> bool:
        """Whether nodes must prove they hold this view (every node has a view key)."""
        return bool(self.nodes) and bool(self.nodes[0].view_key)

    def client(self, name: str) -> ViewClient | None:
        for c in self.clients:
            if c.name == name:
                return c
        return None

    def describe(self) -> str:
        """One line for logs and messages."""
        return (
            f"view {self.number}: {len(self.nodes)} nodes, t={self.t} b={self.b} "
            f"qc={self.qc} m={self.m}, clients {', '.join(c.name for c in self.clients)}"
        )


def format_of(view: View) -> int:
    """The format ``view`` is written in: 2 with per-view keys, 1 without."""
    return 2 if view.has_view_keys else 1


def encode_body(view: View) -> bytes:
    """The canonical bytes of ``view`` (what the administrator signs)."""
    keyed = view.has_view_keys
    body = [
        view.number,
        view.t,
        view.b,
        view.qc,
        view.m,
        [
            [int(n.id), n.host, n.port, n.public_key, *([n.view_key] if keyed else [])]
            for n in view.nodes
        ],
        [[int(c.id), c.name, c.public_key] for c in view.clients],
        [[int(r.id), r.name, r.public_key] for r in view.retired],
    ]
    return msgpack.packb(body, use_bin_type=True)


def sign(view: View, key: AdminKey) -> bytes:
    """``view`` signed by the administrator: the bytes nodes and clients exchange."""
    check(view)
    body = encode_body(view)
    fmt = format_of(view)
    return msgpack.packb([MAGIC, fmt, body, key.sign(DOMAINS[fmt] + body)], use_bin_type=True)


def decode(blob: Any, admin_public: bytes) -> View:
    """The view in ``blob`` if the administrator whose key is ``admin_public`` signed it.

    Raises:
        ViewError: not bytes, too big, malformed, another format, a bad signature, or a
            view breaking a rule (:func:`check`).
    """
    if not isinstance(blob, bytes):
        raise ViewError("a signed view is bytes")
    if len(blob) > MAX_VIEW_BYTES:
        raise ViewError(f"signed view of {len(blob)} bytes (at most {MAX_VIEW_BYTES})")
    outer = _unpack(blob)
    if not isinstance(outer, list) or len(outer) != 4 or outer[0] != MAGIC:
        raise ViewError("not a signed view")
    fmt = outer[1]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in DOMAINS:
        raise ViewError(f"signed view format {fmt!r}, this version reads 1 and {FORMAT}")
    body, signature = outer[2], outer[3]
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise ViewError("signed view: body and signature must be bytes")
    if not signature_ok(admin_public, DOMAINS[fmt] + body, signature):
        raise ViewError("the view is not signed by this cluster's administrator key")
    view = check(_view_of(_unpack(body), fmt))
    if format_of(view) != fmt:
        raise ViewError(f"a view of format {fmt} must have per-view keys only in format 2")
    return view


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ViewError(f"malformed view ({type(e).__name__})") from None


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ViewError(f"view: {what} must be an integer")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ViewError(f"view: {what} must be a string")
    return v


def _key(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise ViewError(f"view: {what} must be a 32-byte public key")
    return v


def _old_key(v: Any) -> bytes:
    return b"" if v == b"" else _key(v, "retired key")


def _rows(v: Any, width: int, what: str) -> list[list[Any]]:
    if not isinstance(v, list) or not all(isinstance(r, list) and len(r) == width for r in v):
        raise ViewError(f"view: {what} must be a list of {width}-item lists")
    return v


def _view_of(body: Any, fmt: int) -> View:
    if not isinstance(body, list) or len(body) != 8:
        raise ViewError("view body must be an 8-item list")
    number, t, b, qc, m = (
        _int(x, w) for x, w in zip(body[:5], ("number", "t", "b", "qc", "m"), strict=True)
    )
    nodes = tuple(
        ViewNode(
            NodeId(_int(row[0], "node id")),
            _str(row[1], "host"),
            _int(row[2], "port"),
            _key(row[3], "node key"),
            _key(row[4], "node view key") if fmt == 2 else b"",
        )
        for row in _rows(body[5], 3 + fmt, "nodes")
    )
    clients = tuple(
        ViewClient(ClientId(_int(i, "client id")), _str(nm, "name"), _key(k, "client key"))
        for i, nm, k in _rows(body[6], 3, "clients")
    )
    retired = tuple(
        Retired(ClientId(_int(i, "retired id")), _str(nm, "retired name"), _old_key(k))
        for i, nm, k in _rows(body[7], 3, "retired")
    )
    return View(number, t, b, qc, m, nodes, clients, retired)


def check(view: View) -> View:
    """``view`` if it obeys the rules every view must (the thresholds' own rules are the
    configuration's, checked where a view becomes one: ``membership.configview``).

    Raises:
        ViewError: naming the rule.
    """
    if view.number < 1:
        raise ViewError(f"view number must be at least 1, got {view.number}")
    if [int(n.id) for n in view.nodes] != list(range(len(view.nodes))) or not view.nodes:
        raise ViewError("view: node ids must be 0..n-1 in order")
    for n in view.nodes:
        if not 0 <= n.port <= 65535 or not n.host:
            raise ViewError(f"view: node {n.id} has a bad address {n.host}:{n.port}")
    ids = [int(c.id) for c in view.clients] + [int(r.id) for r in view.retired]
    if any(i < CLIENT_ID_BASE for i in ids):
        raise ViewError("view: client ids start at CLIENT_ID_BASE")
    if len(set(ids)) != len(ids):
        raise ViewError("view: a client id appears twice (ids are never reused)")
    names = [c.name for c in view.clients]
    if len(set(names)) != len(names):
        raise ViewError("view: client names must be unique")
    keyed = [bool(n.view_key) for n in view.nodes]
    if any(keyed) and not all(keyed):
        raise ViewError("view: either every node has a view key or none has")
    return view


class Verdict(enum.Enum):
    """What a party holding one view makes of another, validly signed, one."""

    NEWER = "newer"  # take it
    SAME = "same"  # already held (a resent or forwarded copy): acknowledge
    OLDER = "older"  # a replay of an ended view, or a party behind: refuse
    CONFLICT = "conflict"  # another view with the held number: the admin key was misused


def judge(held: View, offered: View) -> Verdict:
    """How a party holding ``held`` treats ``offered`` (both validly signed)."""
    if offered.number > held.number:
        return Verdict.NEWER
    if offered.number < held.number:
        return Verdict.OLDER
    return Verdict.SAME if encode_body(offered) == encode_body(held) else Verdict.CONFLICT


def ended_principals(old: View, new: View) -> set[int]:
    """The principals of ``old`` whose sessions must end under ``new``: gone from it
    (revoked) or with another key (rotated: sessions made with the old key end)."""
    keep = new.public_keys()
    return {pid for pid, key in old.public_keys().items() if keep.get(pid) != key}


def rekeyed_nodes(old: View, new: View) -> list[int]:
    """The nodes ``new`` gives another key than ``old`` (replaced by a new machine: they
    start empty and catch up)."""
    keys = {int(n.id): n.public_key for n in old.nodes}
    return [int(n.id) for n in new.nodes if keys.get(int(n.id)) not in (None, n.public_key)]


def moved_nodes(old: View, new: View) -> list[int]:
    """The nodes of ``new`` with another address or key than in ``old`` (whoever talks to
    them connects anew, to the new address, under the new key).  View keys change with
    every view and move nobody."""
    before = {int(n.id): (n.host, n.port, n.public_key) for n in old.nodes}
    return [int(n.id) for n in new.nodes if before.get(int(n.id)) != (n.host, n.port, n.public_key)]


def unsupported_change(old: View, new: View) -> str | None:
    """Why ``new`` cannot be taken up yet, or None.  This version changes clients, and
    nodes' addresses and keys (node replacement): the thresholds and the number of nodes
    must stay (adding and removing nodes and re-encoding are not built; docs/membership.md),
    and at most ``t`` nodes get a new key in one view (each starts empty: more at once would
    be more nodes short of data than the thresholds tolerate)."""
    if (old.t, old.b, old.qc, old.m) != (new.t, new.b, new.qc, new.m):
        return "it changes the thresholds (t, b, qc, m), which this version cannot do online"
    if len(old.nodes) != len(new.nodes):
        return "it adds or removes nodes, which this version cannot do online"
    replaced = rekeyed_nodes(old, new)
    if len(replaced) > max(old.t, 1):
        return (
            f"it replaces {len(replaced)} nodes at once (nodes {replaced}); at most t = "
            f"{old.t} in one view, each catching up before the next"
        )
    return None
