"""The ``fs`` object type's updates of one object's attributes: ``setattr`` (chmod, chown,
utimens, truncate), ``setxattr``, ``removexattr``, and the newest block Time ``bt`` that
``setattr`` and ``write`` record.

A truncation is the one attribute change that touches the file's data: it settles a
running write lease's declaration and moves the written ranges it cuts off into the stale
ranges (:mod:`bftfs.fsobjects.ranges`); to zero it brings a new data id, so no old block is
ever read again.
"""

from __future__ import annotations

import stat as st
from typing import Any

from bftfs.fsobjects.limits import (
    MAX_BLOCK_TIME,
    MAX_ID,
    MAX_OID,
    MAX_SIZE,
    SEALED_EXTRA,
    XATTR_CREATE,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    XATTR_TOTAL_MAX,
)
from bftfs.fsobjects.ranges import (
    add_stale,
    clip_stale,
    leaving_inline,
    not_locked_by_other,
    settle_lease,
)
from bftfs.fsobjects.state import (
    check_arg,
    check_inline,
    check_int,
    check_opt_int,
    check_opt_time,
    check_time,
    check_xattr_name,
    node_state,
    stat_of,
    touch_state,
)
from bftfs.qu.objects import MethodRefused, States


def fs_setattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """chmod / chown / utimens / truncate on one object.

    A size change is a truncation: to zero it must bring a new data id (so no old block is
    ever seen again); down, the written ranges it cuts off become stale (``z``); to a larger
    size it only moves ``size`` (the stale ranges up to there the client cleared beforehand,
    beyond ``alloc`` blocks were never written).  ``touch``: a time the mtime and ctime
    only move forward to (a directory's times sent late by a mount's write-back).
    """
    a = check_arg(arg)
    ((oid, state),) = states.items()
    s = node_state(state)
    if s["k"] == "d" and s["dead"]:
        raise MethodRefused("not-found")
    now = check_time(a)
    mode = check_opt_int(a, "mode", 0, 0o177777)
    if mode is not None:
        s["mode"] = (s["mode"] & ~0o7777) | (mode & 0o7777)
    uid, gid = check_opt_int(a, "uid", 0, MAX_ID), check_opt_int(a, "gid", 0, MAX_ID)
    if uid is not None:
        s["uid"] = uid
    if gid is not None:
        s["gid"] = gid
    atime, mtime = check_opt_time(a, "atime"), check_opt_time(a, "mtime")
    if atime is not None:
        s["at"] = atime
    if mtime is not None:
        s["mt"] = mtime
    touch = check_opt_time(a, "touch")
    if touch is not None:
        # Times a directory's entries changed at, sent late (a create and its removal
        # that cancelled in a mount's write-back, fs/writeback/unlinks.py): they only move
        # forward, so an update of the directory taken meanwhile keeps its later times.
        s["mt"] = max(s["mt"], touch)
        now = max(now, s["ct"])
    size = check_opt_int(a, "size", 0, MAX_SIZE)
    if size is not None:
        if s["k"] == "d":
            raise MethodRefused("is-dir")
        if not st.S_ISREG(s["mode"]):
            raise MethodRefused("invalid", "only regular files have a size to set")
        not_locked_by_other(s, a)
        # (A truncation's own lease declared nothing: its zeros are harmless anywhere.)
        settle_lease(s, a, completed=False)
        if s.get("wl") is not None and s["wl"][0] == check_opt_int(a, "tok", 1, MAX_OID):
            s["wl"] = None  # a truncation that cleared blocks under its lease
        if size == 0:
            data_id = check_int(a, "d", 1, MAX_OID)
            if data_id == s["d"]:
                raise MethodRefused("invalid", "truncation to zero needs a fresh data id")
            s["d"], s["alloc"] = data_id, check_int(a, "alloc", 0, MAX_SIZE)
            s["w"] = []  # (also starts the records for a file made before they existed)
            s["z"] = []
        elif check_opt_int(a, "d", 1, MAX_OID) not in (None, s["d"]):
            raise MethodRefused("stale", "data id changed")
        inline = check_inline(a, size)
        if inline is None and s.get("i") is not None and not a.get("blocks"):
            raise MethodRefused("invalid", "an inline file's size changes with its content")
        if s.get("w") is not None:
            if inline is not None:
                s["w"] = []
            elif s.get("i") is not None:
                s["w"] = leaving_inline(s)
            if inline is None:
                # What a truncation cuts off stays in the blocks: stale beyond the size,
                # cleared by whoever grows the file again (only that, not the gap).
                add_stale(s, [[max(lo, size), hi] for lo, hi in s["w"] if hi > size], size)
            s["w"] = [[lo, min(hi, size)] for lo, hi in s["w"] if lo < size]
        if inline is None and size > s["size"]:
            clip_stale(s, size)  # the client cleared them up to the new size
        s["i"] = inline
        raise_block_time(s, a)
        if size != s["size"] and mtime is None:
            s["mt"] = now
        s["size"] = size
    touch_state(s, now, modify=False)
    return {oid: s}, stat_of(s)


def raise_block_time(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Record the newest PASIS Time of the blocks this update's client wrote (``bt``).

    Clients write a file's blocks at Times above the file's ``bt`` (``RWClient.write_block``
    with ``after``), so the blocks of the file's version with ``bt = T`` are the newest
    complete versions with Time <= T: how a past version's content is read back
    (``bftfs/fs/past.py``).  Only ever raised; a client that lies about it misdates its own
    blocks in the history, nothing else.

    Every later writer must write above ``bt`` and nodes refuse block Times more than the
    skew (60 s) past their clocks, so ``bt`` years ahead would lock every other writer out
    and keep the removed file's blocks from being given back (issue 31).  So a node
    refuses a client's own ``fs.write`` or ``fs.setattr`` whose ``bt`` (or ``now``) lies
    more than that skew past its clock, as it refuses such a block write
    (:data:`CLOCKS`, ``Method.clocks``; outside this method, which reads no clock): a
    correct writer's ``bt`` is a Time the nodes accepted for its blocks, so it never is.
    """
    bt = check_opt_int(a, "bt", 0, MAX_BLOCK_TIME)
    if bt is not None and bt > f.get("bt", 0):
        f["bt"] = bt


def fs_setxattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    a = check_arg(arg)
    ((oid, state),) = states.items()
    s = node_state(state)
    name = check_xattr_name(a.get("name"))
    value = a.get("value")
    if not isinstance(value, bytes):
        raise MethodRefused("invalid", "value must be bytes")
    if len(value) > XATTR_SIZE_MAX + SEALED_EXTRA:  # a mount may seal it (clients check
        raise MethodRefused("too-big")  # XATTR_SIZE_MAX on the value itself)
    flags = check_int(a, "flags", 0, XATTR_CREATE | XATTR_REPLACE)
    x = dict(s["x"])
    if flags & XATTR_CREATE and name in x:
        raise MethodRefused("exists")
    if flags & XATTR_REPLACE and name not in x:
        raise MethodRefused("no-attr")
    x[name] = value
    if sum(len(k) + len(v) for k, v in x.items()) > XATTR_TOTAL_MAX:
        raise MethodRefused("no-space")
    s["x"] = x
    touch_state(s, check_time(a), modify=False)
    return {oid: s}, None


def fs_removexattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    a = check_arg(arg)
    ((oid, state),) = states.items()
    s = node_state(state)
    x = dict(s["x"])
    if x.pop(check_xattr_name(a.get("name")), None) is None:
        raise MethodRefused("no-attr")
    s["x"] = x
    touch_state(s, check_time(a), modify=False)
    return {oid: s}, None
