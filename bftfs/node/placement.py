"""A node of one group refuses what the layout places on another (docs/layout.md,
"Placement").

A node running as a member of group ``g`` (``layout/groups.place_node``) stores only the
Q/U objects and PASIS blocks whose partition the layout maps to ``g``.  A request naming
another id comes from a client routing by another layout, a bug, or a Byzantine client
filling the group with what is not its own: it is refused with code ``misplaced``, before
any protocol code runs, and counted (``refused.misplaced``).

Checked: the ids a client's request names (``qu.request``, ``qu.history``, each item of a
``qu.batch``, ``qu.sync`` between nodes; the block of ``rw.write``, ``rw.read_latest``,
``rw.read_prev``, ``rw.time``).  A body that does not parse is left to the protocol's own
parser, which refuses it with its own code.

While the held layout moves partitions (docs/layout.md, "Moving partitions"), an id whose
partition moves *from* ``g`` is ``g``'s too: its source keeps serving the reads of what it
holds (the moves' reads, a mount's reads of blocks the target lacks), and refuses a
client's own new operations on it ``moved`` (``node/moves.py``), not ``misplaced``.  The
layout finishing the move (``builder.finish_move``) names no source: the moved ids are
then ``misplaced`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from bftfs.layout.model import Layout
from bftfs.net.server import HandlerError

#: The check a node runs on each request: ``(kind, payload)``; raises ``HandlerError``.
Check = Callable[[str, Any], None]

_QU_OBJECTS = ("qu.request", "qu.history")
_RW_BLOCKS = ("rw.write", "rw.read_latest", "rw.read_prev", "rw.time")


def _body(payload: Any) -> Any:
    """A Q/U body as a map: clients send ``qu.request`` as its packed bytes."""
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            return None
    return payload


def _objects(kind: str, payload: Any) -> Iterable[int]:
    body = _body(payload)
    if not isinstance(body, dict):
        return ()
    if kind == "qu.sync":
        oid = body.get("oid")
        return (oid,) if isinstance(oid, int) else ()
    oids = body.get("o")
    return [o for o in oids if isinstance(o, int)] if isinstance(oids, list) else ()


def _block(payload: Any) -> int | None:
    if not isinstance(payload, dict):
        return None
    raw = payload.get("b")
    return int.from_bytes(raw, "big") if isinstance(raw, bytes) and len(raw) == 16 else None


def guard(layout: Layout, group: int) -> Check:
    """The check of a node of ``group`` in ``layout``: an id mapped to ``group``, or moving
    from it (module docstring)."""

    def misplaced(what: str, ident: int, where: int) -> HandlerError:
        return HandlerError(
            "misplaced",
            f"{what} {ident:#x} lives on group {where} of layout {layout.version}, "
            f"not on this node's group {group}",
        )

    def check(kind: str, payload: Any) -> None:
        if kind in _RW_BLOCKS:
            block = _block(payload)
            if block is None:
                return
            g = layout.group_of_block(block)
            if g != group and layout.source_of_block(block) != group:
                raise misplaced("block", block, g)
            return
        if kind == "qu.batch":
            if isinstance(payload, list):
                for item in payload:
                    if isinstance(item, list | tuple) and len(item) == 2:
                        check(str(item[0]), item[1])
            return
        if kind in _QU_OBJECTS or kind == "qu.sync":
            for oid in _objects(kind, payload):
                if not 0 <= oid < 1 << 128:
                    continue
                g = layout.group_of_object(oid)
                if g != group and layout.source_of_object(oid) != group:
                    raise misplaced("object", oid, g)

    return check
