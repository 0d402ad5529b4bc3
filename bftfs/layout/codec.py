"""Signed layouts: their canonical bytes, the administrator's signature and the check a
client or node makes of any layout it is given (docs/layout.md, "Signed versions").

The envelope, its signature check and the ordering are the membership views' own
(``membership/signed.py``): a layout is believed for its signature whoever delivers it,
and taken only if its version is above the one held.  Format 1, msgpack::

    signed  = [MAGIC, 1, body: bin, signature: bin(64)]
    body    = [version, partitions, t, b, nodes, groups, objects, blocks]
    nodes   = [[id, host, port, public_key: bin(32), domain], ...]   by id
    groups  = [[id, [node id, ...]], ...]                          ids 0..G-1
    objects = blocks = [group id, ...]                             one per partition

Every parse problem is one :class:`~bftfs.layout.model.LayoutError`.  Pure.
"""

from __future__ import annotations

from typing import Any

import msgpack

from bftfs.crypto import AdminKey
from bftfs.layout.model import Group, Layout, LayoutError, LayoutNode, check
from bftfs.membership import signed
from bftfs.membership.signed import Verdict

MAGIC = "bftfs-layout"
FORMAT = 1
#: Signed bytes start with this: an admin signature over a layout is never one over a
#: view (whose domains are ``bftfs-view-v*``) nor anything else.
DOMAINS = {1: b"bftfs-layout-v1\0"}
#: Largest signed layout accepted (300 nodes and 4096 partitions take about 40 KiB).
MAX_LAYOUT_BYTES = 4 << 20
KIND = signed.Kind(MAGIC, DOMAINS, MAX_LAYOUT_BYTES, "layout", LayoutError)


def encode_body(layout: Layout) -> bytes:
    """The canonical bytes of ``layout`` (what the administrator signs): nodes by id,
    groups by id, so one layout has one encoding."""
    body: list[Any] = [
        layout.version,
        layout.partitions,
        layout.t,
        layout.b,
        [
            [n.id, n.host, n.port, n.public_key, n.domain]
            for n in sorted(layout.nodes, key=lambda n: n.id)
        ],
        [[g.id, list(g.members)] for g in layout.groups],
        list(layout.objects),
        list(layout.blocks),
    ]
    if layout.moving:  # a layout moving nothing keeps the eight fields it always had
        body += [list(layout.from_objects), list(layout.from_blocks)]
    return msgpack.packb(body, use_bin_type=True)


def sign(layout: Layout, key: AdminKey) -> bytes:
    """``layout`` signed by the administrator: the bytes clients and nodes exchange.

    Raises:
        LayoutError: the layout breaks a rule (nothing invalid is ever signed).
    """
    check(layout)
    return signed.seal(KIND, FORMAT, encode_body(layout), key)


def decode(blob: Any, admin_public: bytes) -> Layout:
    """The layout in ``blob`` if the administrator whose key is ``admin_public`` signed it.

    Raises:
        LayoutError: not bytes, too big, malformed, a bad signature, or a rule broken.
    """
    _fmt, body = signed.unseal(KIND, blob, admin_public)
    layout = check(_layout_of(signed.unpack(KIND, body)))
    if encode_body(layout) != body:
        raise LayoutError("layout: not in canonical form (nodes must be sorted by id)")
    return layout


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise LayoutError(f"layout: {what} must be an integer")
    return v


def _list(v: Any, what: str, width: int | None = None) -> list[Any]:
    if not isinstance(v, list) or (width is not None and len(v) != width):
        raise LayoutError(f"layout: {what} must be a list" + (f" of {width}" if width else ""))
    return v


def _node_of(row: Any) -> LayoutNode:
    nid, host, port, key, domain = _list(row, "a node row", 5)
    if not isinstance(host, str) or not isinstance(domain, str) or not isinstance(key, bytes):
        raise LayoutError("layout: a node row is [id, host, port, key: bytes, domain]")
    return LayoutNode(_int(nid, "node id"), host, _int(port, "port"), key, domain)


def _group_of(row: Any) -> Group:
    gid, members = _list(row, "a group row", 2)
    return Group(_int(gid, "group id"), tuple(_int(m, "member") for m in _list(members, "m")))


def _layout_of(body: Any) -> Layout:
    fields = _list(body, "the body")
    if len(fields) not in (8, 10):
        raise LayoutError("layout: the body must be a list of 8 fields, or 10 while moving")
    version, parts, t, b, nodes, groups, objects, blocks = fields[:8]
    moving = fields[8:]
    return Layout(
        version=_int(version, "version"),
        partitions=_int(parts, "partitions"),
        t=_int(t, "t"),
        b=_int(b, "b"),
        nodes=tuple(_node_of(r) for r in _list(nodes, "nodes")),
        groups=tuple(_group_of(r) for r in _list(groups, "groups")),
        objects=tuple(_int(g, "a map entry") for g in _list(objects, "objects")),
        blocks=tuple(_int(g, "a map entry") for g in _list(blocks, "blocks")),
        from_objects=tuple(_int(g, "a map entry") for g in _list(moving[0], "from"))
        if moving
        else (),
        from_blocks=tuple(_int(g, "a map entry") for g in _list(moving[1], "from"))
        if moving
        else (),
    )


def judge(held: Layout, offered: Layout) -> Verdict:
    """How a party holding ``held`` treats ``offered`` (both validly signed)."""
    return signed.judge((held.version, encode_body(held)), (offered.version, encode_body(offered)))


def accept(held: Layout | None, blob: Any, admin_public: bytes) -> Layout:
    """The layout a client or node holding ``held`` (None: none yet) takes from ``blob``:
    the one in it if the administrator signed it and its version is above ``held``'s;
    ``held`` itself for a copy of it (a resent or forwarded layout changes nothing).

    Raises:
        LayoutError: not signed by the administrator, a rule broken, an older version
            (a replay of an ended layout), or another layout with the held version (the
            administrator key signed two: refused, never chosen between).
    """
    offered = decode(blob, admin_public)
    if held is None:
        return offered
    verdict = judge(held, offered)
    if verdict is Verdict.NEWER:
        return offered
    if verdict is Verdict.SAME:
        return held
    if verdict is Verdict.OLDER:
        raise LayoutError(
            f"layout version {offered.version} is older than the version {held.version} held "
            "(a replay, or a party behind): refused"
        )
    raise LayoutError(
        f"another layout with version {held.version} than the one held: the administrator "
        "key signed two (refused; docs/layout.md)"
    )
