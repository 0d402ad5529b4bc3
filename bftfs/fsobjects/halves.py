"""The halves of a rename or link whose objects live on several groups (issue 66,
docs/layout.md "Operations across groups"): the object type ``fsx``, whose updates run
only as the participants' updates of one cross-group transaction (``txn.prepare``).

``fsx.rename`` and ``fsx.link`` are ``fs.rename`` (rename.py) and ``fs.link`` (names.py)
split by object: every participant of the transaction carries the same argument (the
whole operation, as the client saw it) and applies, to the objects of its own group, the
roles they play in it, checking on them exactly what the one-group method checks:

- the **source directory** ``sp``: its entry ``sn`` names ``o`` with type ``oc``; removed;
  a directory moving away lowers its subdirectory count; mtime and ctime;
- the **target directory** ``dp``: its entry ``dn`` names ``t`` (type ``tc``) or nothing;
  ``dn`` then names ``o``; subdirectory counts follow (a directory arriving, an empty one
  replaced), within ``LINK_MAX``; mtime and ctime;
- the **moved object** ``o``: of the kind ``oc`` says, a directory's ``..`` is ``sp``
  (then ``dp``); its ctime;
- a **replaced target** ``t``: of kind ``tc``, a directory's ``..`` is ``dp``; a directory
  replaced only by a directory and only when empty (it becomes a tombstone), a file loses
  a link; its ctime;
- the **ancestors** ``ch`` of ``dp`` when a directory changes parent: ``ch[0] = dp``, each
  one's ``..`` the next, the last one's ``sp`` or the root, ``o`` none of them, which is
  :func:`bftfs.fsobjects.rename._not_under`'s walk with its steps on several groups.

A half is no valid operation alone: the type is served by no node (a client's own call
finds no such method); ``txn.prepare`` runs it from the inner registry with the whole
transaction (``{"a": argument, "i": its index, "p": every part}``), and it refuses unless
every part runs the same method on the same argument and the parts' objects are exactly
the operation's: a committed transaction applies every role, an aborted one none.
``fsx.mkdir``, ``fsx.unlink``, ``fsx.rmdir`` and ``fsx.unlinkmany`` are those ``fs``
methods split the same way (a directory lives on another group than its parent's, a
file moved there too).  ``RENAME_EXCHANGE`` is not split (the mount keeps EXDEV for it).
"""

from __future__ import annotations

import stat as st
from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.dirents import Entries, is_empty
from bftfs.fsobjects.leases import LEASE_SKEW, LEASE_TIME, NEW_LEASE, leased
from bftfs.fsobjects.limits import (
    DIR_TYPE,
    LINK_MAX,
    MAX_ID,
    MAX_OID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT,
    SNAPSHOTS,
)
from bftfs.fsobjects.names import entry_is
from bftfs.fsobjects.rename import refuse_unreplaceable
from bftfs.fsobjects.state import (
    check_arg,
    check_int,
    check_name,
    check_time,
    dir_state,
    file_state,
    new_dir,
    node_state,
    stat_of,
    touch_state,
)
from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, States
from bftfs.qu.timestamp import MAX_OBJECTS

#: The type's name: ``txn.prepare`` hands its methods the whole transaction.
HALVES = "fsx"


def _oid(a: dict[str, Any], key: str) -> int:
    return check_int(a, key, 1, MAX_OID)


def _whole(wrapped: Any, name: str) -> tuple[dict[str, Any], set[int]]:
    """The operation's argument and the objects of every part, refused unless every part
    of the transaction is this same half on this same argument over disjoint objects."""
    if not isinstance(wrapped, dict) or set(wrapped) != {"a", "i", "p"}:
        raise MethodRefused("invalid", "a half runs only inside its transaction")
    a, parts = wrapped["a"], wrapped["p"]
    if not isinstance(parts, list) or not parts:
        raise MethodRefused("invalid", "no parts")
    seen: set[int] = set()
    count = 0
    for p in parts:
        if not (isinstance(p, list) and len(p) == 3 and p[1] == name and p[2] == a):
            raise MethodRefused("invalid", "every part must be this operation's half")
        objs = p[0]
        if not isinstance(objs, list) or not all(isinstance(o, int) for o in objs):
            raise MethodRefused("invalid", "part objects")
        seen.update(objs)
        count += len(objs)
    if count != len(seen):
        raise MethodRefused("invalid", "parts share objects")
    return check_arg(a), seen


def _agrees(s: dict[str, Any], code: int, parent: int) -> None:
    """As ``rename._entry_agrees``: the object is of its entry's kind, a directory's
    parent is the entry's directory."""
    if (code == DIR_TYPE) != (s["k"] == "d"):
        raise MethodRefused("stale", "entry type disagrees")
    if code == DIR_TYPE and s["p"] != parent:
        raise MethodRefused("stale", "parent pointer disagrees")


def rename_objects(a: dict[str, Any]) -> set[int]:
    """The objects a cross-group rename updates or reads (every role's)."""
    out = {_oid(a, "sp"), _oid(a, "dp"), _oid(a, "o"), *_chain(a)}
    if a.get("t") is not None:
        out.add(_oid(a, "t"))
    return out


def _chain(a: dict[str, Any]) -> list[int]:
    ch = a.get("ch")
    if not isinstance(ch, list) or len(ch) > MAX_OBJECTS * 8:
        raise MethodRefused("invalid", "ch must be a list")
    return [check_int({"c": c}, "c", 1, MAX_OID) for c in ch]


def _walk(states: States, ch: list[int], sp: int) -> None:
    """The walk of ``rename._not_under``, the steps on this group's objects: each of
    ``ch``'s directories has the next as its parent, the last one ``sp`` or the root."""
    for i, c in enumerate(ch):
        if c in states:
            up = dir_state(states[c])["p"]
            if not (up in (sp, ROOT) if i + 1 == len(ch) else up == ch[i + 1]):
                raise MethodRefused("stale", "ancestor chain changed")


def _replaced(tobj: dict[str, Any], oc: int, now: int) -> None:
    """As ``rename._replace`` does to a target: a directory replaced only by a directory
    and only when empty (a tombstone), a file loses a link; its ctime."""
    refuse_unreplaceable(tobj, oc)
    if tobj["k"] == "d":
        tobj["dead"] = True
    else:
        if tobj["nl"] < 1:
            raise MethodRefused("invalid", "link count already zero")
        tobj["nl"] -= 1
    touch_state(tobj, now, modify=False)


def _rename(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """The roles of ``states`` in rename ``a`` (module docstring)."""
    sp, dp, o = _oid(a, "sp"), _oid(a, "dp"), _oid(a, "o")
    t = None if a.get("t") is None else _oid(a, "t")
    oc, tc = check_int(a, "oc", 0, 15), check_int(a, "tc", 0, 15)
    flags = check_int(a, "flags", 0, RENAME_NOREPLACE | RENAME_EXCHANGE)
    now = check_time(a)
    sn, dn = check_name(a.get("sn")), check_name(a.get("dn"))
    ch = _chain(a)
    if o in (sp, dp) or (t is not None and t != o and t in (sp, dp)) or o == ROOT:
        raise MethodRefused("invalid", "bad object ids")
    if flags & RENAME_EXCHANGE:
        raise MethodRefused("invalid", "an exchange is not split across groups")
    if t is not None and flags & RENAME_NOREPLACE:
        raise MethodRefused("exists")
    moves_dir = oc == DIR_TYPE and sp != dp
    if moves_dir and not (
        ch and ch[0] == dp and len(set(ch)) == len(ch) and not {o, sp, ROOT} & set(ch)
    ):
        raise MethodRefused("invalid", "a directory moving needs its new parent's ancestors")
    if not moves_dir and ch:
        raise MethodRefused("invalid", "ancestors only for a directory changing parent")
    new = {oid: (dict(s) if isinstance(s, dict) else s) for oid, s in states.items()}
    _walk(states, ch, sp)
    src = dst = None
    sents = dents = Entries({})
    if sp in states:
        src = new[sp] = dir_state(states[sp])
        sents = dents = Entries(src["e"])
        if entry_is(sents, sn, o)[1] != oc:
            raise MethodRefused("stale", "entry type disagrees")
    if dp in states:
        dst = new[dp] = src if src is not None and dp == sp else dir_state(states[dp])
        if dst is not src:
            dents = Entries(dst["e"])
        got = dents.get(dn)
        if (got[0] if got else None) != t or (got is not None and got[1] != tc):
            raise MethodRefused("stale", "target entry changed")
    obj = tobj = None
    if o in states:
        obj = new[o] = node_state(states[o])
        _agrees(obj, oc, sp)
    if t is not None and t != o and t in states:
        tobj = new[t] = node_state(states[t])
        _agrees(tobj, tc, dp)
    if (sp == dp and sn == dn) or t == o:  # POSIX: nothing changes
        return dict(states), {}
    if tobj is not None:
        _replaced(tobj, oc, now)
    if src is not None:
        del sents[sn]
        if moves_dir:
            src["nd"] -= 1
    if dst is not None:
        dents[dn] = [o, oc]
        if moves_dir:
            dst["nd"] += 1
        if t is not None and tc == DIR_TYPE:
            dst["nd"] -= 1
        if dst["nd"] + 2 > LINK_MAX:
            raise MethodRefused("too-many-links")
    if obj is not None:
        if moves_dir:
            obj["p"] = dp
        touch_state(obj, now, modify=False)
    if src is not None:
        src["e"] = sents.packed()
        touch_state(src, now, modify=True)
    if dst is not None and dst is not src:
        dst["e"] = dents.packed()
        touch_state(dst, now, modify=True)
    mine = [x for x in (sp, dp, o, t) if x is not None and x in states]
    return new, {str(x): stat_of(new[x]) for x in mine}


def _link(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.link`` split: the directory ``p`` gains ``name`` -> ``o`` (type ``oc``), the
    file ``o`` a link (not a directory, not removed, within ``LINK_MAX``)."""
    pid, oid = _oid(a, "p"), _oid(a, "o")
    oc = check_int(a, "oc", 0, 15)
    now = check_time(a)
    name = check_name(a.get("name"))
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    new = dict(states)
    if oid in states:
        if isinstance(states[oid], dict) and states[oid].get("k") == "d":
            raise MethodRefused("permission", "no hard links to directories")
        f = file_state(states[oid])
        if f["nl"] == 0:
            raise MethodRefused("not-found", "file was removed")
        if f["nl"] >= LINK_MAX:
            raise MethodRefused("too-many-links")
        if st.S_IFMT(f["mode"]) >> 12 != oc:
            raise MethodRefused("stale", "entry type disagrees")
        f["nl"] += 1
        touch_state(f, now, modify=False)
        new[oid] = f
    if pid in states:
        parent = dir_state(states[pid])
        ents = Entries(parent["e"])
        if name in ents:
            raise MethodRefused("exists")
        ents[name] = [oid, oc]
        parent["e"] = ents.packed()
        touch_state(parent, now, modify=True)
        new[pid] = parent
    return new, {str(x): stat_of(new[x]) for x in (pid, oid) if x in states}


def _mkdir(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.mkdir`` split: the directory ``p`` gains ``name`` -> ``o`` and a subdirectory
    (within ``LINK_MAX``); ``o`` is made where nothing is, a directory whose parent is
    ``p``, with the group ``ig`` and set-group-ID bit ``sg`` it inherits, which the
    parent's half checks against the parent (as ``names._inherited``)."""
    pid, oid = _oid(a, "p"), _oid(a, "o")
    now = check_time(a)
    uid, gid = check_int(a, "uid", 0, MAX_ID), check_int(a, "gid", 0, MAX_ID)
    ig, sg = check_int(a, "ig", 0, MAX_ID), check_int(a, "sg", 0, st.S_ISGID)
    mode = check_int(a, "mode", 0, 0o177777)
    name = check_name(a.get("name"))
    if pid == oid or oid in (ROOT, SNAPSHOTS) or sg not in (0, st.S_ISGID):
        raise MethodRefused("invalid", "bad object ids")
    new = dict(states)
    if pid in states:
        parent = dir_state(states[pid])
        inherits = parent["mode"] & st.S_ISGID
        if (ig, sg) != ((parent["gid"], st.S_ISGID) if inherits else (gid, 0)):
            raise MethodRefused("stale", "the parent's set-group-ID changed")
        if parent["nd"] + 2 >= LINK_MAX:
            raise MethodRefused("too-many-links")
        ents = Entries(parent["e"])
        if name in ents:
            raise MethodRefused("exists")
        ents[name] = [oid, DIR_TYPE]
        parent["e"] = ents.packed()
        touch_state(parent, now, modify=True)
        parent["nd"] += 1
        new[pid] = parent
    if oid in states:
        if states[oid] is not None:
            raise MethodRefused("oid-exists")
        new[oid] = new_dir(pid, mode | sg, uid, ig, now)
    return new, {str(x): stat_of(new[x]) for x in (pid, oid) if x in states}


def _remove(states: States, a: dict[str, Any], *, rmdir: bool) -> dict[int, Any]:
    """``fs.unlink`` (``rmdir``: ``fs.rmdir``) split: the directory ``p`` loses ``name``,
    which names ``o`` and is a non-directory (a directory); the file ``o`` loses a link,
    or the empty directory ``o`` whose ``..`` is ``p`` becomes a tombstone.  The kind is
    the method's, so each half checks it on what it holds."""
    pid, oid = _oid(a, "p"), _oid(a, "o")
    name = check_name(a.get("name"))
    if pid == oid or (rmdir and oid == ROOT):
        raise MethodRefused("busy" if oid == ROOT else "invalid", "bad object ids")
    now = check_time(a)
    new = dict(states)
    if pid in states:
        parent = dir_state(states[pid])
        ents = Entries(parent["e"])
        code = entry_is(ents, name, oid)[1]
        if rmdir and code != DIR_TYPE:
            raise MethodRefused("not-dir")
        if not rmdir and code == DIR_TYPE:
            raise MethodRefused("is-dir")
        del ents[name]
        parent["e"] = ents.packed()
        if rmdir:
            parent["nd"] -= 1
        touch_state(parent, now, modify=True)
        new[pid] = parent
    if oid in states:
        if rmdir:
            child = dir_state(states[oid])
            if child["p"] != pid:
                raise MethodRefused("stale", "parent pointer disagrees")
            if not is_empty(child["e"]):
                raise MethodRefused("not-empty")
            child["dead"] = True
        else:
            child = file_state(states[oid])
            if child["nl"] < 1:
                raise MethodRefused("invalid", "link count already zero")
            child["nl"] -= 1
        touch_state(child, now, modify=False)
        new[oid] = child
    return new


def _unlink(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.unlink`` split (:func:`_remove`)."""
    new = _remove(states, a, rmdir=False)
    return new, {str(x): stat_of(new[x]) for x in (a["p"], a["o"]) if x in states}


def _rmdir(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.rmdir`` split (:func:`_remove`)."""
    new = _remove(states, a, rmdir=True)
    return new, {str(x): stat_of(new[x]) for x in (a["p"], a["o"]) if x in states}


def _unlink_many(states: States, a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.unlinkmany`` split: each item's :func:`_remove` in order, on this group's
    objects (the directory's half applies every entry's removal)."""
    pid, files = _oid(a, "p"), a.get("files")
    if not isinstance(files, list) or not 1 <= len(files) < MAX_OBJECTS:
        raise MethodRefused("invalid", "files")
    work = dict(states)
    for f in files:
        item = check_arg(f)
        mine = {x: work[x] for x in (pid, _oid(item, "o")) if x in states}
        work.update(_remove(mine, {**item, "p": pid}, rmdir=False))
    return work, None


def _unlink_many_objects(a: dict[str, Any]) -> set[int]:
    files = a.get("files")
    if not isinstance(files, list) or len(files) >= MAX_OBJECTS:
        raise MethodRefused("invalid", "files")
    oids = [_oid(check_arg(f), "o") for f in files]
    if len(set(oids)) != len(oids):
        raise MethodRefused("invalid", "each object once")
    return {_oid(a, "p"), *oids}


def _half(
    name: str,
    fn: Callable[[States, dict[str, Any]], Any],
    objects: Callable[..., set[int]],
    grants_with: str | None = None,
) -> Method:
    """A half under the lease rule (as the ``fs`` updates), refused outside a whole."""
    under_leases = leased(fn)

    def update(states: States, wrapped: Any, caller: int = 0) -> tuple[dict[int, Any], Any]:
        a, every = _whole(wrapped, name)
        if every != objects(a):
            raise MethodRefused("invalid", "the parts' objects are not the operation's")
        return under_leases(states, a, caller)

    update.__doc__ = fn.__doc__
    return Method(
        name,
        Class.UPDATE,
        update,
        1,
        MAX_OBJECTS,
        caller=True,
        lease_clock=LEASE_TIME,
        lease_skew=LEASE_SKEW,
        grants_with=grants_with,
    )


def _link_objects(a: dict[str, Any]) -> set[int]:
    return {_oid(a, "p"), _oid(a, "o")}


#: Registered only in the registry ``txn.prepare`` runs participants from
#: (``layout/nodetxn.py``), never served to a client's own call.
FSX = ObjectType(
    HALVES,
    (
        _half("fsx.rename", _rename, rename_objects),
        _half("fsx.link", _link, _link_objects),
        _half("fsx.mkdir", _mkdir, _link_objects, NEW_LEASE),
        _half("fsx.unlink", _unlink, _link_objects),
        _half("fsx.rmdir", _rmdir, _link_objects),
        _half("fsx.unlinkmany", _unlink_many, _unlink_many_objects),
    ),
)
