"""The ``fs`` object type's namespace updates (multi-object, seed 004 Table 4.3,
L3112-3156): ``mkroot``, ``create`` (also mknod and symlink), ``createwrite``, ``mkdir``,
``link``, ``unlink`` and ``rmdir``; ``rename`` has a module of its own
(:mod:`bftfs.fsobjects.rename`).

``create``/``mkdir``/``link``/``unlink``/``rmdir`` update a directory and one object (an
attribute object or the child directory), and so does ``createwrite`` (a create with the
new file's first inline content, one update).  Each re-checks the POSIX rules on the
server's own copies: names legal and unique, a directory empty before it is removed, link
counts following the entries, an object created only where nothing exists.
"""

from __future__ import annotations

import stat as st
from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.data import fs_write
from bftfs.fsobjects.dirents import Entries, is_empty
from bftfs.fsobjects.limits import (
    DIR_TYPE,
    FILE_TYPES,
    LINK_MAX,
    MAX_LEASE,
    MAX_OID,
    MAX_SIZE,
    MAX_TIME,
    PATH_MAX,
    ROOT,
    SEALED_EXTRA,
    SNAPSHOTS,
)
from bftfs.fsobjects.state import (
    check_arg,
    check_inline,
    check_int,
    check_name,
    check_oid,
    check_owner,
    check_time,
    dir_state,
    file_state,
    new_dir,
    stat_of,
    touch_state,
)
from bftfs.qu.objects import MethodRefused, States

# Making objects ----------------------------------------------------------------------------


def fs_mkroot(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Create the root directory (its parent is itself); refused once it exists."""
    a = check_arg(arg)
    ((oid, state),) = states.items()
    if oid != ROOT:
        raise MethodRefused("invalid", "only the root is made this way")
    if state is not None:
        raise MethodRefused("exists")
    root = new_dir(ROOT, check_int(a, "mode", 0, 0o7777), *check_owner(a), check_time(a))
    return {oid: root}, stat_of(root)


def _parent_and_new(states: States, a: dict[str, Any]) -> tuple[int, dict[str, Any], int, bytes]:
    """Common checks of create/mkdir: a live parent, a free legal name, a fresh object."""
    pid, oid = check_oid(a, "p", states), check_oid(a, "o", states)
    if pid == oid or oid in (ROOT, SNAPSHOTS):
        raise MethodRefused("invalid", "bad object ids")
    parent = dir_state(states[pid])
    name = check_name(a.get("name"))
    if states[oid] is not None:
        raise MethodRefused("oid-exists")
    return pid, parent, oid, name


def _inherited(parent: dict[str, Any], gid: int, sgid: int) -> tuple[int, int]:
    """The group of a new object and the mode bits it inherits: in a set-group-ID directory
    (Linux, ext4) every new object takes the directory's group, whatever the client asked,
    and a new subdirectory also its set-group-ID bit (``sgid``); elsewhere the client's
    group (the creator's) and no extra bits.  (The kernel strips S_ISGID from a new file's
    mode before the request when the creator is not in the group.)"""
    if parent["mode"] & st.S_ISGID:
        return parent["gid"], sgid
    return gid, 0


def _add_entry(parent: dict[str, Any], name: bytes, oid: int, code: int, now: int) -> None:
    ents = Entries(parent["e"])
    if name in ents:
        raise MethodRefused("exists")
    ents[name] = [oid, code]
    parent["e"] = ents.packed()
    touch_state(parent, now, modify=True)


def fs_create(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """create / mknod / symlink: a new attribute object and its entry in the parent.

    Argument: ``p`` parent, ``o`` new object id, ``name``, ``mode`` (with its type bits),
    ``uid``, ``gid``, ``rdev``, ``now``, and for regular files ``d`` (data id) and ``alloc``
    (and, when the creator opens it to write, ``tok``/``lease``: it starts holding the write
    lease, so its first flush needs no ``fs.lock``), for symlinks ``t`` (target; sealed,
    with its length ``tl``: :func:`_symlink_target`).  Answers
    ``[stat of the new object, stat of the parent]``.
    """
    a = check_arg(arg)
    pid, parent, oid, name = _parent_and_new(states, a)
    mode = check_int(a, "mode", 0, 0o177777)
    ftype = st.S_IFMT(mode)
    if ftype not in FILE_TYPES:
        raise MethodRefused("invalid", "bad file type")
    now = check_time(a)
    uid, gid = check_owner(a)
    gid, _ = _inherited(parent, gid, 0)
    f = {
        "k": "f",
        "mode": mode,
        "uid": uid,
        "gid": gid,
        "rdev": 0,
        "nl": 1,
        "size": 0,
        "alloc": 0,
        "d": 0,
        "at": now,
        "mt": now,
        "ct": now,
        "t": None,
        "x": {},
        "v": 0,
    }
    if ftype == st.S_IFREG:
        f["d"] = check_int(a, "d", 1, MAX_OID)
        f["alloc"] = check_int(a, "alloc", 0, MAX_SIZE)
        f["i"] = check_inline(a, 0)  # b"": an empty file whose content will be inline
        f["w"] = []
        f["z"] = []
        if a.get("tok") is not None:  # created to be written: the creator holds the lease
            lease = check_int(a, "lease", 1, MAX_LEASE)
            # Declares nothing: a first flush under it that dies leaves its blocks past the
            # size (not given back).  Declaring the whole reservation gave back every block
            # of it, hundreds of empty versions charged to a writer at its quota, whenever
            # a first flush was refused (t5_limits).
            f["wl"] = [check_int(a, "tok", 1, MAX_OID), min(now + lease, MAX_TIME), []]
    elif ftype == st.S_IFLNK:
        f["t"], f["size"] = _symlink_target(a)
    elif ftype in (st.S_IFCHR, st.S_IFBLK):
        f["rdev"] = check_int(a, "rdev", 0, (1 << 64) - 1)
    _add_entry(parent, name, oid, ftype >> 12, now)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


def _symlink_target(a: dict[str, Any]) -> tuple[bytes, int]:
    """A new symlink's stored target and its size: the target (non-empty, no NUL, at most
    ``PATH_MAX`` bytes), or - with ``tl``, the target's length - the target sealed by a
    mount, ``tl + SEALED_EXTRA`` opaque bytes (docs/confidentiality.md; the mount checked
    the target itself before sealing it)."""
    target = a.get("t")
    if a.get("tl") is not None:
        size = check_int(a, "tl", 1, PATH_MAX)
        if not isinstance(target, bytes) or len(target) != size + SEALED_EXTRA:
            raise MethodRefused("invalid", "a sealed symlink target is tl + 64 bytes")
        return target, size
    if not isinstance(target, bytes) or not target or b"\0" in target:
        raise MethodRefused("invalid", "bad symlink target")
    if len(target) > PATH_MAX:
        raise MethodRefused("name-too-long")
    return target, len(target)


def fs_create_write(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new regular file with its first content, in one update (create write-behind,
    docs/fs.md): what ``fs.create`` followed by an inline ``fs.write`` on the version it
    made would leave, so a Byzantine client can make nothing these two could not.

    Argument: ``fs.create``'s for a regular file (no ``tok``/``lease``: the content comes
    with the create, no lease is needed) plus ``i`` (the whole content, at most
    :data:`INLINE_MAX` bytes), ``mtime``, optionally ``attrs`` (held-back chmod, chown,
    atime, as in ``fs.write``) and ``end``, the file's size, when ``i`` is sealed (longer:
    docs/confidentiality.md).  Answers ``[stat of the new file, stat of the parent]``.
    """
    a = check_arg(arg)
    if st.S_IFMT(check_int(a, "mode", 0, 0o177777)) != st.S_IFREG:
        raise MethodRefused("invalid", "fs.createwrite makes regular files only")
    if a.get("tok") is not None or a.get("lease") is not None:
        raise MethodRefused("invalid", "fs.createwrite takes no write lease")
    content = a.get("i")
    if not isinstance(content, bytes):
        raise MethodRefused("invalid", "fs.createwrite needs the content (i)")
    made, (_, pst) = fs_create(states, dict(a, i=b""))
    oid = check_oid(a, "o", states)
    written = {
        "d": a["d"],
        "v": made[oid]["v"],
        # The size: the content's length, or ``end`` when a mount sealed the content.
        "end": a.get("end", len(content)),
        "i": content,
        "mtime": a.get("mtime"),
        "attrs": a.get("attrs"),
        "now": a["now"],
    }
    f, fst = fs_write({oid: made[oid]}, written)
    made[oid] = f[oid]
    return made, [fst, pst]


def _batch(
    states: States, arg: Any, method: str, each: str
) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """The directory ``p`` and the items of a many-entries update (``fs.createmany``,
    ``fs.mkdirmany``, ``fs.unlinkmany``), each with its object, checked as all need: a
    non-empty ``files``, no item naming its own ``p`` or a time past the batch's ``now``
    (the one nodes check against their clocks), each object once and not ``p``, and no
    object of the update but ``p`` that no item names (``each``: what every other object
    must be, for the refusal)."""
    a = check_arg(arg)
    pid = check_oid(a, "p", states)
    latest = check_time(a)
    files = a.get("files")
    if not isinstance(files, list) or not files:
        raise MethodRefused("invalid", f"{method} needs files")
    items: list[tuple[int, dict[str, Any]]] = []
    named: set[int] = set()
    for item in files:
        f = check_arg(item)
        if "p" in f or check_time(f) > latest:
            raise MethodRefused("invalid", f"an item of {method} names its own p or a later now")
        oid = check_oid(f, "o", states)
        if oid == pid or oid in named:
            raise MethodRefused("invalid", f"{method} names an object twice")
        named.add(oid)
        items.append((oid, f))
    if len(named) != len(states) - 1:
        raise MethodRefused("invalid", f"{method}: every object but p {each}")
    return pid, items


def _one_after_another(
    states: States,
    arg: Any,
    method: str,
    each: str,
    step: Callable[[States, Any], tuple[dict[int, Any], Any]],
) -> tuple[dict[int, Any], Any]:
    """A many-entries update (:func:`_batch`) as ``step`` (the one-entry method) of each
    item in turn on what the ones before left: ``[[each item's object's stat], the
    parent's last stat]``, or the first refusal."""
    pid, items = _batch(states, arg, method, each)
    work = dict(states)
    stats = []
    pst: Any = None
    for oid, f in items:
        made, (one, pst) = step({pid: work[pid], oid: work[oid]}, dict(f, p=pid))
        work.update(made)
        stats.append(one)
    return work, [stats, pst]


def fs_create_many(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Several new regular files in one directory, in one update (directory write-back,
    ``fs/writeback/``): exactly what the ``fs.createwrite`` or, for an item with a write
    lease ``tok``/``lease``, the ``fs.create`` (a file whose blocks its creator writes next,
    under that lease) of each, one after another, would leave, or nothing (any one refused
    refuses them all).

    Objects: the directory ``p`` and each new file once.  Argument: ``p``, ``now`` (the
    latest time of the files: the one nodes check against their clocks, ``Method.clocks``)
    and ``files``, each such an argument of a regular file without ``p`` whose ``now`` is
    at most the batch's.  Answers ``[[stat of each new file, in order], stat of the
    parent]``.
    """
    pid, items = _batch(states, arg, "fs.createmany", "is a new file")
    work = dict(states)
    stats = []
    pst: Any = None
    for oid, f in items:
        pair = {pid: work[pid], oid: work[oid]}
        if f.get("tok") is None:
            made, (fst, pst) = fs_create_write(pair, dict(f, p=pid))
        elif st.S_IFMT(check_int(f, "mode", 0, 0o177777)) != st.S_IFREG:
            raise MethodRefused("invalid", "fs.createmany makes regular files only")
        else:
            made, (fst, pst) = fs_create(pair, dict(f, p=pid))
        work.update(made)
        stats.append(fst)
    return work, [stats, pst]


def created_stat(arg: dict[str, Any], parent_mode: int, parent_gid: int) -> dict[str, Any]:
    """The stat ``fs.create`` with ``arg`` answers for its new object in a directory of
    that mode and group (a client answering a create it has not sent yet: the same code,
    so the kernel is told what the servers will make, set-group-ID inheritance included).

    Raises:
        MethodRefused: as ``fs.create`` would for ``arg``.
    """
    stand_in = new_dir(ROOT, parent_mode, 0, parent_gid, int(arg.get("now") or 0))
    _, (child, _) = fs_create({ROOT: stand_in, int(arg["o"]): None}, dict(arg, p=ROOT))
    return dict(child)


def made_dir_stat(arg: dict[str, Any], parent_mode: int, parent_gid: int) -> dict[str, Any]:
    """The stat ``fs.mkdir`` with ``arg`` answers for its new directory in a directory of
    that mode and group (a mkdir a client answers before sending it, ``fs/writeback/mkdirs.py``:
    the same code as :func:`created_stat`, set-group-ID inheritance included).

    Raises:
        MethodRefused: as ``fs.mkdir`` would for ``arg``.
    """
    stand_in = new_dir(ROOT, parent_mode, 0, parent_gid, int(arg.get("now") or 0))
    _, (child, _) = fs_mkdir({ROOT: stand_in, int(arg["o"]): None}, dict(arg, p=ROOT))
    return dict(child, p=arg["p"])


def fs_mkdir(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new directory object and its entry; the parent gains a link (the child's ``..``)."""
    a = check_arg(arg)
    pid, parent, oid, name = _parent_and_new(states, a)
    now = check_time(a)
    uid, gid = check_owner(a)
    gid, sgid = _inherited(parent, gid, st.S_ISGID)
    child = new_dir(pid, check_int(a, "mode", 0, 0o177777) | sgid, uid, gid, now)
    if parent["nd"] + 2 >= LINK_MAX:
        raise MethodRefused("too-many-links")
    _add_entry(parent, name, oid, DIR_TYPE, now)
    parent["nd"] += 1
    return {pid: parent, oid: child}, [stat_of(child), stat_of(parent)]


def fs_mkdir_many(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Several new directories in one directory, in one update (directory write-back of
    mkdirs, ``fs/writeback/mkdirs.py``): exactly what the ``fs.mkdir`` of each, one after
    another, would leave, or nothing (any one refused refuses them all).  ``git`` makes
    ``.git/objects/xx`` one at a time, and ``tar x`` a tree's directories: each mkdir was
    an update of its own.

    Objects: the directory ``p`` and each new directory once.  Argument: ``p``, ``now``
    (the latest of the items') and ``files``, each an ``fs.mkdir`` argument without ``p``.
    A lease the update asks on what it makes (``lx``, ``ln``: ``fsobjects/leases.py``)
    covers every new directory.  Answers ``[[stat of each new directory, in order], stat
    of the parent]``."""
    return _one_after_another(states, arg, "fs.mkdirmany", "is a new directory", fs_mkdir)


def fs_link(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new name for an existing non-directory: its link count goes up by one."""
    a = check_arg(arg)
    pid, oid = check_oid(a, "p", states), check_oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    parent = dir_state(states[pid])
    if isinstance(states[oid], dict) and states[oid].get("k") == "d":
        raise MethodRefused("permission", "no hard links to directories")  # link(2): EPERM
    f = file_state(states[oid])
    if f["nl"] == 0:
        raise MethodRefused("not-found", "file was removed")
    if f["nl"] >= LINK_MAX:
        raise MethodRefused("too-many-links")
    now = check_time(a)
    _add_entry(parent, check_name(a.get("name")), oid, st.S_IFMT(f["mode"]) >> 12, now)
    f["nl"] += 1
    touch_state(f, now, modify=False)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


# Removing names ----------------------------------------------------------------------------


def entry_is(ents: Entries, name: bytes, oid: int) -> list[int]:
    """The entry ``name``, which must name ``oid`` (else the client's view is stale)."""
    got = ents.get(name)
    if got is None:
        raise MethodRefused("not-found")
    if got[0] != oid:
        raise MethodRefused("stale", "entry names another object")
    return got


def fs_unlink(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Remove a name of a non-directory; its link count goes down by one (at zero the
    attribute object remains, for handles still open, but no name reaches it)."""
    a = check_arg(arg)
    pid, oid = check_oid(a, "p", states), check_oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    parent = dir_state(states[pid])
    ents = Entries(parent["e"])
    name = check_name(a.get("name"))
    code = entry_is(ents, name, oid)[1]
    if code == DIR_TYPE:
        raise MethodRefused("is-dir")
    f = file_state(states[oid])
    if f["nl"] < 1:
        raise MethodRefused("invalid", "link count already zero")
    now = check_time(a)
    del ents[name]
    parent["e"] = ents.packed()
    touch_state(parent, now, modify=True)
    f["nl"] -= 1
    touch_state(f, now, modify=False)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


def fs_unlink_many(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Several names of non-directories removed from one directory in one update (directory
    write-back of removals, ``fs/writeback/``): exactly what the ``fs.unlink`` of each, one
    after another, would leave, or nothing (any one refused refuses them all).

    Objects: the directory ``p`` and each object named once.  Argument: ``p``, ``now`` (the
    latest of the items') and ``files``, each an ``fs.unlink`` argument without ``p`` (``o``,
    ``name``, ``now``).  Answers ``[[stat of each object, in order], stat of the parent]``.
    """
    return _one_after_another(states, arg, "fs.unlinkmany", "is one it removes", fs_unlink)


def fs_rmdir(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Remove an empty subdirectory: its object becomes a tombstone (``dead``)."""
    a = check_arg(arg)
    pid, oid = check_oid(a, "p", states), check_oid(a, "o", states)
    if pid == oid or oid == ROOT:
        raise MethodRefused("busy" if oid == ROOT else "invalid", "bad object ids")
    parent = dir_state(states[pid])
    ents = Entries(parent["e"])
    name = check_name(a.get("name"))
    code = entry_is(ents, name, oid)[1]
    if code != DIR_TYPE:
        raise MethodRefused("not-dir")
    child = dir_state(states[oid])
    if child["p"] != pid:
        raise MethodRefused("stale", "parent pointer disagrees")
    if not is_empty(child["e"]):
        raise MethodRefused("not-empty")
    now = check_time(a)
    del ents[name]
    parent["e"] = ents.packed()
    parent["nd"] -= 1
    touch_state(parent, now, modify=True)
    child["dead"] = True
    touch_state(child, now, modify=False)
    return {pid: parent, oid: child}, [stat_of(child), stat_of(parent)]
