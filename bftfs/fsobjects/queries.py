"""The ``fs`` object type's queries (seed 004 Table 4.3, L3112-3156): ``stat``, ``open``,
``peek``, ``lookup``, ``lookupstat``, ``statmany``, ``readdir``, ``readlink``,
``getxattr``, ``listxattr``.

A query reads the states of its objects and answers; it changes nothing.  Most name one
object; ``lookupstat`` reads the directory and the object the client expects the entry to
name together (a lookup in one round), ``statmany`` up to
:data:`~bftfs.qu.timestamp.MAX_OBJECTS` objects (readdir's entries).
"""

from __future__ import annotations

import stat as st
from typing import Any

from bftfs.fsobjects.dirents import Entries
from bftfs.fsobjects.snapshots import finished
from bftfs.fsobjects.state import (
    check_arg,
    check_name,
    check_oid,
    check_xattr_name,
    dir_state,
    file_state,
    node_state,
    stat_of,
)
from bftfs.qu.objects import MethodRefused, States


def fs_stat(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    return stat_of(node_state(state))


def fs_peek(states: States, arg: Any) -> Any:
    """Whether the object exists, never refusing (``None``: absent; else its kind and
    whether it is removed): where a history read starts (``bftfs/fs/past.py`` asks for the
    version this is answered at, which must work for removed objects too)."""
    ((_, state),) = states.items()
    if not isinstance(state, dict):
        return None
    return {"k": state.get("k"), "gone": finished(state)}


def fs_peek_many(states: States, arg: Any) -> Any:
    """:func:`fs_peek` of up to 8 objects, never refusing: where the history reads of a tree
    start, eight objects a round (``Past.trees``; issue 36)."""
    return {str(oid): fs_peek({oid: state}, arg) for oid, state in states.items()}


def fs_open(states: States, arg: Any) -> Any:
    """What ``open`` needs: the stat, plus the content (``i``) of an inline file."""
    ((_, state),) = states.items()
    s = node_state(state)
    out = stat_of(s)
    if s["k"] == "f" and s.get("i") is not None:
        out["i"] = s["i"]
    return out


def fs_lookup(states: States, arg: Any) -> Any:
    """Answer ``[object id, type code]`` of entry ``arg`` (a name)."""
    ((_, state),) = states.items()
    d = dir_state(state)
    got = Entries(d["e"]).get(check_name(arg))
    if got is None:
        raise MethodRefused("not-found")
    return got


def fs_lookup_stat(states: States, arg: Any) -> Any:
    """``lookup`` and the attributes of the object the client expects the entry to name, in
    one round (a two-object query): ``{"e": [object id, type code], "s": stat or None}``;
    ``s`` is None when the entry names another object than ``o``."""
    a = check_arg(arg)
    pid, oid = check_oid(a, "p", states), check_oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    got = Entries(dir_state(states[pid])["e"]).get(check_name(a.get("name")))
    if got is None:
        raise MethodRefused("not-found")
    state = states[oid]
    same = got[0] == oid and isinstance(state, dict) and state.get("k") in ("d", "f")
    return {"e": got, "s": stat_of(state) if same else None}


def fs_stat_many(states: States, arg: Any) -> Any:
    """The attributes of up to 8 objects in one round (readdir's entries): ``{str(object id):
    stat, or None where no object is}``."""
    return {
        str(oid): stat_of(state)
        if isinstance(state, dict) and state.get("k") in ("d", "f")
        else None
        for oid, state in states.items()
    }


def fs_readdir(states: States, arg: Any) -> Any:
    """Answer ``{"e": packed buckets (a list), "p": parent}``; the client unpacks them
    (:func:`entries`).  A list, not the bucket map: wire maps take string keys only."""
    ((_, state),) = states.items()
    d = dir_state(state)
    e = d["e"]
    return {"e": e if isinstance(e, bytes) else [e[i] for i in sorted(e)], "p": d["p"]}


def fs_readlink(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    f = file_state(state)
    if not st.S_ISLNK(f["mode"]):
        raise MethodRefused("invalid", "not a symlink")
    return f["t"]


def fs_getxattr(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    value = node_state(state)["x"].get(check_xattr_name(arg))
    if value is None:
        raise MethodRefused("no-attr")
    return value


def fs_listxattr(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    return sorted(node_state(state)["x"])
