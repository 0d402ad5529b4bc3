"""The layout service (issue 66, docs/layout.md, "The layout service"): the newest signed
layout, replicated by one group with the project's own protocol, as one Q/U object.

The object :data:`LAYOUT_OID` lies in partition 0 of every partition count (its id is
chosen so), which ``builder.assign`` never moves: its group is ``layout.objects[0]``, the
same in every version.  It is outside the ids clients draw for files and directories
(those are below ``fsobjects.limits.MAX_OID``, 2**63 - 1).

Its type, ``layout`` (:func:`layout_type`, built with the administrator's public key):

- ``layout.put`` (update, the signed layout's bytes): taken only when the administrator
  signed it and it is newer than the layout held (``codec.judge``): the same one again
  changes nothing, an older one is refused ``stale_layout``, another with the held version
  ``conflicting_layout``, anything else ``bad_layout``.  Every node runs the check as the
  method, so the group's correct nodes hold only what the administrator signed, in
  version order, whoever writes it: any client may publish the layout it holds;
- ``layout.get`` (query): the signed bytes held (None before the first put).

Its safety needs no trust in the group: a Byzantine group can withhold the newest layout
(mounts and nodes also learn it from every node's handshake, ``membership/levelling.py``),
never make anyone take a layout the administrator did not sign.  The administrator's
commands publish each layout they issue (``layout/admin.push``); a mount reads it when it
opens and publishes its own where the service holds an older one (``fs/generations/
groupfollow.py``).
"""

from __future__ import annotations

from typing import Any

from bftfs.layout import codec
from bftfs.layout.model import LayoutError, object_partition
from bftfs.membership.signed import Verdict
from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, States

#: The layout object's id: the first id from 2**63 whose partition is 0 for every
#: partition count (a power of two up to ``model.MAX_PARTITIONS``).
LAYOUT_OID = 0x8000000000039D9A
#: The type's methods.
PUT, GET = "layout.put", "layout.get"


def find_layout_oid(start: int = 1 << 63) -> int:
    """How :data:`LAYOUT_OID` was chosen (a test checks it still is)."""
    oid = start
    while object_partition(oid, 1 << 16) != 0:
        oid += 1
    return oid


def _held(state: Any, admin: bytes) -> Any:
    """The layout in a stored state (None: none, or not a layout signed by ``admin``)."""
    if not isinstance(state, bytes):
        return None
    try:
        return codec.decode(state, admin)
    except LayoutError:
        return None


def layout_type(admin: bytes) -> ObjectType:
    """The ``layout`` type of a cluster whose administrator key is ``admin`` (module
    docstring)."""

    def put(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
        if list(states) != [LAYOUT_OID]:
            raise MethodRefused("invalid", f"the layout lives at object {LAYOUT_OID:#x} alone")
        try:
            offered = codec.decode(arg, admin)
        except LayoutError as e:
            raise MethodRefused("bad_layout", str(e)) from None
        held = _held(states[LAYOUT_OID], admin)
        if held is not None:
            verdict = codec.judge(held, offered)
            if verdict is Verdict.SAME:  # (an update returns every object's state)
                return {LAYOUT_OID: states[LAYOUT_OID]}, held.version
            if verdict is Verdict.OLDER:
                raise MethodRefused("stale_layout", f"layout {held.version} is held")
            if verdict is Verdict.CONFLICT:
                raise MethodRefused("conflicting_layout", f"another layout {held.version}")
        return {LAYOUT_OID: bytes(arg)}, offered.version

    def get(states: States, arg: Any) -> Any:
        state = states.get(LAYOUT_OID)
        return state if isinstance(state, bytes) else None

    return ObjectType("layout", (Method(PUT, Class.UPDATE, put), Method(GET, Class.QUERY, get)))
