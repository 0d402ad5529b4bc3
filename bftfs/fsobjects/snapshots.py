"""The cluster's snapshot list (``fs.snapshot``, ``fs.snapshots``: named moments retention
never reclaims, docs/history.md), and which states retention may collect (:func:`finished`:
the ``finished`` predicate of the ``fs`` object type).

The list lives in its own object, :data:`~bftfs.fsobjects.limits.SNAPSHOTS` (the largest
object id, which no file or directory ever has); nodes read the moments it pins with
:func:`snapshot_times` (``bftfs/node/snapshots.py``).
"""

from __future__ import annotations

from typing import Any

from bftfs.fsobjects.limits import MAX_SNAPSHOTS, SNAPSHOT_NAME_MAX, SNAPSHOTS
from bftfs.fsobjects.state import check_arg, check_time
from bftfs.qu.objects import MethodRefused, States

# Snapshots ---------------------------------------------------------------------------------


def snapshot_name(v: Any) -> str:
    """A legal snapshot name: 1 to 64 printable characters, no ``/`` or spaces, not a
    time-like word (``now``, an age such as ``-10m``, ``@...``) so ``--at NAME`` is never
    ambiguous with a time."""
    if (
        not isinstance(v, str)
        or not 0 < len(v) <= SNAPSHOT_NAME_MAX
        or not v.isprintable()
        or any(c in v for c in "/ \t")
        or v[0] in "-@"
        or v == "now"
    ):
        raise MethodRefused("invalid", "snapshot names are 1-64 printable characters")
    return v


def valid_snapshot_name(v: Any) -> bool:
    """Whether :func:`snapshot_name` accepts ``v`` (for clients' own checks)."""
    try:
        snapshot_name(v)
    except MethodRefused:
        return False
    return True


def fs_snapshot(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Create or delete a snapshot: ``{"op": "create", "name", "t"}`` (``t``: the moment,
    ns; the client's, like every time an fs method is given) or ``{"op": "delete",
    "name"}``.  The list lives in object :data:`SNAPSHOTS`, made by the first create."""
    a = check_arg(arg)
    ((oid, state),) = states.items()
    if oid != SNAPSHOTS:
        raise MethodRefused("invalid", "snapshots live in their own object")
    if state is not None and (not isinstance(state, dict) or state.get("k") != "s"):
        raise MethodRefused("invalid", "not the snapshot list")
    snaps = dict(state["snaps"]) if state is not None else {}
    name = snapshot_name(a.get("name"))
    op = a.get("op")
    if op == "create":
        if name in snaps:
            raise MethodRefused("exists")
        if len(snaps) >= MAX_SNAPSHOTS:
            raise MethodRefused("no-space", f"at most {MAX_SNAPSHOTS} snapshots")
        snaps[name] = check_time(a, "t")
    elif op == "delete":
        if name not in snaps:
            raise MethodRefused("not-found")
        del snaps[name]
    else:
        raise MethodRefused("invalid", "op is create or delete")
    new = {"k": "s", "snaps": snaps}
    return {oid: new}, snaps


def fs_snapshots(states: States, arg: Any) -> Any:
    """The snapshots: name -> moment (ns); empty before the first."""
    ((_, state),) = states.items()
    if not isinstance(state, dict) or state.get("k") != "s":
        return {}
    return dict(state["snaps"])


def snapshot_times(state: Any) -> tuple[int, ...]:
    """The moments a snapshot-list state pins (servers' retention reads it)."""
    if not isinstance(state, dict) or state.get("k") != "s":
        return ()
    return tuple(sorted(int(t) for t in state["snaps"].values()))


# Collection --------------------------------------------------------------------------------


def finished(state: Any) -> bool:
    """A removed directory (a tombstone), or a file no name reaches any more: no update
    makes either reachable again, so servers keep only the newest version of it once
    retention's age has passed (open handles still read that one)."""
    if not isinstance(state, dict):
        return False
    if state.get("k") == "d":
        return bool(state.get("dead"))
    return state.get("k") == "f" and state.get("nl") == 0
