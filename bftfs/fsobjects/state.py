"""What every method of the ``fs`` object type checks first: its argument and the states
of its objects (the validators), and the shape of the states themselves.

A method's argument comes from a client that may be Byzantine (seed 004 L1918-1920,
L143-150), so every field is checked here for type and range before it is used: integers
are plain ints in a range (never bools), object ids name an object of the request, times
lie in [:data:`~bftfs.fsobjects.limits.MIN_TIME`, ``MAX_TIME``], names are legal directory
entry names.  A bad argument is refused with :class:`MethodRefused` (``invalid`` and the
field), never an exception of another kind, so a node answers it and goes on.

Object states: a directory object (``k == "d"``: entries ``e``, its own attributes, parent
``p``, ``nd`` subdirectories, ``dead`` once removed) and an attribute object (``k ==
"f"``: mode, owner, times, link count ``nl``, size, the data layout ``d``/``alloc``, the
symlink target ``t``, extended attributes ``x``, inline content ``i``, the byte-range
records ``w``/``z`` and the write lease ``wl``).  :func:`stat_of` is what queries and
updates answer for either.
"""

from __future__ import annotations

import stat as st
from typing import Any

from bftfs.fsobjects.dirents import all_entries, packed_size
from bftfs.fsobjects.limits import (
    INLINE_MAX,
    MAX_ID,
    MAX_OID,
    MAX_TIME,
    MIN_TIME,
    NAME_MAX,
    SEALED_EXTRA,
    XATTR_NAME_MAX,
)
from bftfs.qu.objects import MethodRefused, States

# Argument checks ---------------------------------------------------------------------------


def check_arg(arg: Any) -> dict[str, Any]:
    if not isinstance(arg, dict):
        raise MethodRefused("invalid", "argument must be a map")
    return arg


def check_int(arg: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = arg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise MethodRefused("invalid", f"{key} must be an integer in [{lo}, {hi}]")
    return v


def check_opt_int(arg: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    return None if arg.get(key) is None else check_int(arg, key, lo, hi)


def check_oid(arg: dict[str, Any], key: str, states: States) -> int:
    v = check_int(arg, key, 1, MAX_OID)
    if v not in states:
        raise MethodRefused("invalid", f"{key} is not an object of the request")
    return v


def check_time(arg: dict[str, Any], key: str = "now") -> int:
    return check_int(arg, key, MIN_TIME, MAX_TIME)


def check_opt_time(arg: dict[str, Any], key: str) -> int | None:
    return check_opt_int(arg, key, MIN_TIME, MAX_TIME)


def check_owner(a: dict[str, Any]) -> tuple[int, int]:
    return check_int(a, "uid", 0, MAX_ID), check_int(a, "gid", 0, MAX_ID)


def check_name(name: Any) -> bytes:
    """A legal directory entry name, or the refusal POSIX gives for it.

    Raises:
        MethodRefused: ``invalid`` ('', '.', '..', containing '/' or NUL, not bytes) or
            ``name-too-long`` (more than 255 bytes).
    """
    if not isinstance(name, bytes) or name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise MethodRefused("invalid", "illegal name")
    if len(name) > NAME_MAX:
        raise MethodRefused("name-too-long")
    return name


def check_xattr_name(name: Any) -> bytes:
    """A legal extended-attribute name (non-empty, no NUL, at most 255 bytes)."""
    if not isinstance(name, bytes) or not name or b"\0" in name:
        raise MethodRefused("invalid", "illegal xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise MethodRefused("name-too-long")
    return name


def check_inline(a: dict[str, Any], size: int) -> bytes | None:
    """The inline content an argument carries (``i``), checked against the new ``size``:
    the file's bytes, or those bytes sealed by a mount (``SEALED_EXTRA`` more, which the
    servers cannot open and need not: docs/confidentiality.md)."""
    i = a.get("i")
    if i is None:
        return None
    if not isinstance(i, bytes) or len(i) not in (size, size + SEALED_EXTRA) or size > INLINE_MAX:
        raise MethodRefused(
            "invalid",
            f"inline content must be bytes of the size (or sealed: {SEALED_EXTRA} more), "
            f"at most {INLINE_MAX}",
        )
    return i


# Object states -----------------------------------------------------------------------------


def dir_state(state: Any, *, alive: bool = True) -> dict[str, Any]:
    """A directory object's state (a copy), refusing anything else."""
    if state is None:
        raise MethodRefused("not-found")
    if not isinstance(state, dict) or state.get("k") != "d":
        raise MethodRefused("not-dir")
    if alive and state["dead"]:
        raise MethodRefused("removed", "directory was removed")
    return dict(state)


def file_state(state: Any) -> dict[str, Any]:
    """An attribute object's state (a copy), refusing anything else."""
    if state is None:
        raise MethodRefused("not-found")
    if not isinstance(state, dict) or state.get("k") != "f":
        raise MethodRefused("is-dir")
    return dict(state)


def node_state(state: Any) -> dict[str, Any]:
    """Either kind of object (a copy)."""
    if state is None or not isinstance(state, dict) or state.get("k") not in ("d", "f"):
        raise MethodRefused("not-found")
    return dict(state)


def entries(state: dict[str, Any]) -> dict[bytes, list[int]]:
    """Every entry of a directory state (or readdir answer): name -> [object id, type code],
    in name order."""
    return all_entries(state["e"])


def touch_state(state: dict[str, Any], now: int, *, modify: bool) -> None:
    """ctime (and mtime if ``modify``) to ``now``; every update bumps the version counter."""
    state["ct"] = now
    if modify:
        state["mt"] = now
    state["v"] += 1


def new_dir(parent: int, mode: int, uid: int, gid: int, now: int) -> dict[str, Any]:
    """The state of a fresh directory (``nd`` counts subdirectories: nlink = 2 + nd)."""
    return {
        "k": "d",
        "mode": st.S_IFDIR | (mode & 0o7777),
        "uid": uid,
        "gid": gid,
        "at": now,
        "mt": now,
        "ct": now,
        "nd": 0,
        "p": parent,
        "e": {},
        "x": {},
        "dead": False,
        "v": 0,
    }


#: What a file's stat leaves out: the xattrs, link target and inline content (their own
#: queries), the written ranges and write lease (below), the lease records (leases.py).
_NOT_STAT = frozenset({"x", "t", "i", "w", "wl", "ls", "lr", "lq"})


def stat_of(state: dict[str, Any]) -> dict[str, Any]:
    """The attributes of either kind of object, as queries and updates answer them.

    Keys: ``k, mode, uid, gid, rdev, nl, size, alloc, d, at, mt, ct, v``, ``nx`` (number of
    extended attributes: a client answers "no such attribute" from a fresh stat with
    ``nx == 0``), ``inl`` (the content is inline), ``p`` (parent) for directories, and for
    files ``al``: the bytes below ``size`` that writes stored in blocks (``w``; None for
    objects made before it was kept), from which clients report ``st_blocks``, and ``bt``
    (the newest block Time, see :func:`~bftfs.fsobjects.attributes.raise_block_time`) once
    blocks were written.
    """
    if state["k"] == "d":
        return {
            "k": "d",
            "mode": state["mode"],
            "uid": state["uid"],
            "gid": state["gid"],
            "rdev": 0,
            "nl": 0 if state["dead"] else 2 + state["nd"],
            "size": packed_size(state["e"]),
            "alloc": 0,
            "d": 0,
            "at": state["at"],
            "mt": state["mt"],
            "ct": state["ct"],
            "v": state["v"],
            "p": state["p"],
            "nx": len(state["x"]),
            "inl": False,
        }
    out = {k: v for k, v in state.items() if k not in _NOT_STAT}
    out["nx"] = len(state["x"])
    out["inl"] = state.get("i") is not None
    w = state.get("w")
    size = state["size"]
    out["al"] = None if w is None else sum(min(hi, size) - lo for lo, hi in w if lo < size)
    if w is not None:
        out["w"] = w  # what a remover gives back (fs/files/reclaim.py), not the whole size
    lease = state.get("wl")
    if lease is not None and len(lease) > 2 and lease[2]:
        out["zl"] = lease[2]  # stale too if its holder never completes (settle_lease)
    return out
