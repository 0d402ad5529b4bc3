"""The ``fs`` object type's ``rename``: rename(2) with ``RENAME_NOREPLACE`` and
``RENAME_EXCHANGE``, atomically, over up to eight objects (seed 004 Table 4.3, L3112-3156).

It updates the two directories, the moved object, a replaced target and, when a directory
moves to another parent, the ancestors of its new parent up to its old parent or the root:
the proof that it does not move under itself (:func:`_not_under`), decided from the
servers' own states, never from what the client claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftfs.fsobjects.dirents import Entries, is_empty
from bftfs.fsobjects.limits import DIR_TYPE, LINK_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT
from bftfs.fsobjects.names import entry_is
from bftfs.fsobjects.state import (
    check_arg,
    check_int,
    check_name,
    check_oid,
    check_time,
    dir_state,
    node_state,
    stat_of,
    touch_state,
)
from bftfs.qu.objects import MethodRefused, States


def _not_under(states: States, start: int, moving: int, stop: int) -> None:
    """Refuse if directory ``moving`` is ``start`` or an ancestor of it.

    Walks parent pointers from ``start`` until ``stop`` (the moving directory's current
    parent: ``moving`` cannot be above it without a cycle already existing) or the root.
    Every directory on the way must be an object of the request, so the servers decide
    from their own states, never from what the client claims.
    """
    cur = start
    for _ in range(len(states) + 1):
        if cur == moving:
            raise MethodRefused("invalid", "a directory cannot move under itself")
        if cur in (stop, ROOT):
            return
        s = states.get(cur)
        if s is None:
            raise MethodRefused("stale", "ancestor chain incomplete")
        cur = dir_state(s)["p"]
    raise MethodRefused("stale", "ancestor chain loops")


@dataclass
class _Move:
    """One rename as :func:`fs_rename` checked it: the source and destination directories
    (``src`` is ``dst`` when ``sp == dp``) with their entries, the moved object ``o`` and
    its entry's type code, and the time.  The states are the copies the update returns."""

    sp: int
    dp: int
    sn: bytes
    dn: bytes
    o: int
    ocode: int
    src: dict[str, Any]
    dst: dict[str, Any]
    sents: Entries
    dents: Entries
    obj: dict[str, Any]
    now: int


def _entry_agrees(s: dict[str, Any], code: int, parent: int) -> None:
    """Refuse as ``stale`` unless the object ``s`` is of the kind its entry's type ``code``
    says, and a directory's parent pointer names the directory of the entry."""
    if (code == DIR_TYPE) != (s["k"] == "d"):
        raise MethodRefused("stale", "entry type disagrees")
    if code == DIR_TYPE and s["p"] != parent:
        raise MethodRefused("stale", "parent pointer disagrees")


def fs_rename(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """rename(2) with ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``, atomically.

    Argument: ``sp``/``sn`` source parent and name, ``dp``/``dn`` destination, ``o`` the
    object ``sn`` names, ``t`` the object ``dn`` names (None if free), ``flags``, ``now``.
    Objects: ``sp``, ``dp``, ``o``, ``t`` and the ancestors :func:`_not_under` walks.
    Answers the new stats by object id (string keys).
    """
    a = check_arg(arg)
    sp, dp, o = check_oid(a, "sp", states), check_oid(a, "dp", states), check_oid(a, "o", states)
    t = None if a.get("t") is None else check_oid(a, "t", states)
    flags = check_int(a, "flags", 0, RENAME_NOREPLACE | RENAME_EXCHANGE)
    if flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
        raise MethodRefused("invalid", "flags")
    now = check_time(a)
    sn, dn = check_name(a.get("sn")), check_name(a.get("dn"))
    # t == o: both names are links to one file, which POSIX makes a no-op (below).
    if o in (sp, dp) or (t is not None and t != o and t in (sp, dp)) or o == ROOT:
        raise MethodRefused("invalid", "bad object ids")
    new = {oid: (dict(s) if isinstance(s, dict) else s) for oid, s in states.items()}
    src = new[sp] = dir_state(states[sp])
    dst = src if dp == sp else dir_state(states[dp])
    new[dp] = dst
    sents = Entries(src["e"])
    dents = sents if dp == sp else Entries(dst["e"])
    ocode = entry_is(sents, sn, o)[1]
    got = dents.get(dn)
    if (got[0] if got else None) != t:
        raise MethodRefused("stale", "target entry changed")
    if flags & RENAME_EXCHANGE and t is None:
        raise MethodRefused("not-found")
    if t is not None and flags & RENAME_NOREPLACE:
        raise MethodRefused("exists")
    obj = new[o] = node_state(states[o])
    _entry_agrees(obj, ocode, sp)
    if (sp == dp and sn == dn) or t == o:
        return new, {}
    tobj = None
    if t is not None:
        tcode = got[1] if got else 0
        tobj = new[t] = node_state(states[t])
        _entry_agrees(tobj, tcode, dp)
    move = _Move(sp, dp, sn, dn, o, ocode, src, dst, sents, dents, obj, now)
    if flags & RENAME_EXCHANGE and tobj is not None and got is not None:
        assert t is not None  # (tobj is t's)
        _exchange(states, move, t, tobj, got[1])
    else:
        _replace(states, move, tobj)
    if dst["nd"] + 2 > LINK_MAX:
        raise MethodRefused("too-many-links")
    src["e"] = sents.packed()
    touch_state(src, now, modify=True)
    if dp != sp:
        dst["e"] = dents.packed()
        touch_state(dst, now, modify=True)
    changed = (sp, dp, o) if t is None else (sp, dp, o, t)
    return new, {str(oid): stat_of(new[oid]) for oid in changed}


def _exchange(states: States, m: _Move, t: int, tobj: dict[str, Any], tcode: int) -> None:
    """``RENAME_EXCHANGE``: the two names swap objects ``o`` and ``t`` (of type ``tcode``);
    a directory that changes parent must not move under itself, and the parents' counts
    of subdirectories follow."""
    if m.sp != m.dp:
        if m.ocode == DIR_TYPE:
            _not_under(states, m.dp, m.o, m.sp)
        if tcode == DIR_TYPE:
            _not_under(states, m.sp, t, m.dp)
    m.sents[m.sn], m.dents[m.dn] = [t, tcode], [m.o, m.ocode]
    for mover, code, parent in ((m.obj, m.ocode, m.dp), (tobj, tcode, m.sp)):
        if code == DIR_TYPE and m.sp != m.dp:
            mover["p"] = parent
        touch_state(mover, m.now, modify=False)
    if m.sp != m.dp and (m.ocode == DIR_TYPE) != (tcode == DIR_TYPE):
        delta = 1 if m.ocode == DIR_TYPE else -1
        m.dst["nd"] += delta
        m.src["nd"] -= delta


def refuse_unreplaceable(tobj: dict[str, Any], ocode: int) -> None:
    """Refuse a rename of an object of type ``ocode`` over ``tobj``: a directory replaces
    only an empty directory, anything else only a non-directory (rename(2)'s ENOTDIR,
    ENOTEMPTY, EISDIR).  The one-group rename and the cross-group halves both check it."""
    if ocode == DIR_TYPE:
        if tobj["k"] != "d":
            raise MethodRefused("not-dir")
        if not is_empty(tobj["e"]):
            raise MethodRefused("not-empty")
    elif tobj["k"] == "d":
        raise MethodRefused("is-dir")


def _replace(states: States, m: _Move, tobj: dict[str, Any] | None) -> None:
    """A plain rename: ``o`` takes the destination name, replacing ``tobj`` if any (a
    directory only by an empty directory, which becomes a tombstone; a file loses a link)."""
    if tobj is not None:
        refuse_unreplaceable(tobj, m.ocode)
    if m.ocode == DIR_TYPE and m.sp != m.dp:
        _not_under(states, m.dp, m.o, m.sp)
    del m.sents[m.sn]
    m.dents[m.dn] = [m.o, m.ocode]
    if tobj is not None:
        if tobj["k"] == "d":
            tobj["dead"] = True
            m.dst["nd"] -= 1
        else:
            if tobj["nl"] < 1:
                raise MethodRefused("invalid", "link count already zero")
            tobj["nl"] -= 1
        touch_state(tobj, m.now, modify=False)
    if m.ocode == DIR_TYPE and m.sp != m.dp:
        m.obj["p"] = m.dp
        m.src["nd"] -= 1
        m.dst["nd"] += 1
    touch_state(m.obj, m.now, modify=False)
