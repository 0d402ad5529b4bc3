"""Q/U-NFSv3 metadata objects: directory objects and attribute objects (seed 004 section
4.4.4, L3079-3163; spec ``pasis-qu-lazy.md`` part D), with server-side validation.

Two kinds of Q/U object, both served by the one object type ``fs`` (a method may touch both
kinds at once, e.g. ``fs.create`` updates a directory and a new attribute object):

- a **directory object** holds the directory's entries (name -> object id and file type) and,
  as the seed prescribes (L3083-3085), the directory's own attributes inline, because almost
  every directory method needs them; it also holds its parent's id, so ``..`` and the
  "no directory under itself" check need no other object;
- an **attribute object** holds what NFS clients expect per file (L3082-3083): mode, owner,
  times, link count, size, the symlink target, extended attributes, and the layout of the
  file's PASIS blocks (``d`` = data id, ``alloc`` = the reservation mark, see below).

Methods run on every server and are the only way to change an object, so this is where a
Byzantine client is confined (L1918-1920, L143-150): every method re-checks POSIX rules on the
server's own copy - names are legal and unique, a directory is empty before it is removed, a
directory never moves under itself, link counts follow the entries, an object is created
only where nothing exists - and raises :class:`MethodRefused` otherwise.  The client checks the
same rules first (to answer quickly); the servers' checks are what make them hold.

Operations map onto Table 4.3 (L3112-3156): ``stat``/``lookup``/``readdir``/``readlink``/
``getxattr``/``listxattr`` are queries on one object (``lookupstat`` queries the directory
and the object the client expects the entry to name together, so a lookup costs one
round); ``setattr``/``write``/``lock``/``unlock``/``setxattr``/``removexattr`` are
single-object updates; ``create``/``mkdir``/``link``/
``unlink``/``rmdir`` are two-object updates (directory + attribute or child directory), and
so is ``createwrite`` (a create with the new file's first inline content, one update);
``rename`` updates the two directories, the moved object, a replaced target and, when a
directory moves to another parent, the ancestors of its new parent up to its old parent or
the root (the proof that it does not move under itself).

Determinism: methods read no clock and draw no random number.  The client passes times
(integer ns) and new object ids in the argument; servers only check their range.  Entries are
kept in 64 hash buckets (``e``, :mod:`bftfs.fs.entries`), each one packed msgpack map, an
opaque byte string to the canonical encoder: an update or lookup in a directory of
thousands of names unpacks and packs one bucket, not the whole directory.

File data layout (docs/fs-api.md): blocks ``block_id(d, i)``; ``d`` is fresh at create and at
truncation to zero.  ``alloc`` is a reservation mark: no block at or beyond it has ever been
written under ``d``, so it reads as a hole; bytes in ``[size, alloc)`` may hold data of a
write whose size update never came (a crashed client) or that a truncation cut off, which a
client extending the file overwrites with zeros first: only where the object's stale ranges
``z`` and the running lease's declaration say (:func:`_add_stale`), not the whole gap.
A client takes the file's write lease and raises ``alloc``
(``fs.lock``) *before* writing blocks and sends ``fs.write`` (size, mtime; it ends the
lease) *after* its blocks are complete: blocks are whole-block versions, so two clients
writing one block at once would each replace the other's bytes (see :func:`_lock`).

Per-file block size (docs/fs.md): an attribute object may record ``bs``, the size of the
file's blocks; absent, the file has the cluster's ``block_size`` (files made before it
existed read as before).  A client records it with the ``fs.lock`` of the file's first flush
of blocks - only while the file has no blocks (size 0 or inline content) and no ``bs`` yet -
or, when it is the cluster's own size and the flush needs no lock round (the create's
lease), with that flush's ``fs.write`` (blocks written under the cluster's size read the
same with or without the key in between), and it never changes afterwards (truncation,
rewrites and restores keep it).  Servers check only its range: a Byzantine client choosing
an odd size confuses its own file's readers, whose block reads the nodes' fragment size
limit still bounds.

Small files inline (a configurable trade, ``[cluster] inline_limit``, DESIGN "Performance
notes"): an attribute object may hold the whole content of a small regular file in ``i``
(bytes, ``len(i) == size``, at most :data:`INLINE_MAX`); its blocks are then ignored.  Such
a file costs one Q/U update per flush and no PASIS round, and its content is replicated on
every server instead of erasure-coded (``n`` copies instead of ``n/m`` block equivalents, and
every version of the object keeps a copy).  ``fs.open`` answers the stat with the content.
A size change of an inline file must carry the new content (``i``) or say the content is
now in blocks (``blocks``), so servers never hold a size that disagrees with ``i``; leaving
inline, the client first writes block 0 with the old content and clears the gap as usual.

Refusal codes (``MethodRefused.code``) are errno names understood by :mod:`bftfs.fs.errors`, plus
``stale`` (the client's view of an entry or a data id is out of date: it re-reads and
retries), ``locked`` (another client holds the file's write lease: wait and retry) and
``oid-exists`` (a random new object id is taken: the client draws another).
"""

from __future__ import annotations

import stat as st
from typing import Any

from bftfs.fs.entries import Entries, all_entries, is_empty, packed_size
from bftfs.qu.objects import Class, Method, MethodRefused, ObjectType, States
from bftfs.qu.timestamp import MAX_OBJECTS

#: Object id of the root directory (the FUSE root inode).
ROOT = 1
#: Object ids are 63-bit and never 0; ROOT is reserved.
MAX_OID = (1 << 63) - 1
#: The cluster's snapshot list (``bftfs snapshot``): named moments retention never
#: reclaims.  No file or directory is ever made with this id (clients draw ids below it,
#: servers refuse it).
SNAPSHOTS = MAX_OID
#: Most snapshots a cluster keeps (each pins the versions current at its moment).
MAX_SNAPSHOTS = 256
SNAPSHOT_NAME_MAX = 64
NAME_MAX = 255
#: Longest symlink target (Linux PATH_MAX).
PATH_MAX = 4096
#: Most hard links to one file (ext4 uses 65000).
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
#: All extended attributes of one object together (the object is replicated on n servers).
XATTR_TOTAL_MAX = 256 * 1024
#: Largest content kept inline in an attribute object (see "Small files inline" above).
INLINE_MAX = 64 * 1024
#: Largest file size (block indices stay far inside 64 bits for any block size).
MAX_SIZE = 1 << 50
#: Most byte ranges a file's record of written data (``w``) keeps (see :func:`merge_extents`).
MAX_EXTENTS = 32
#: Times are integer nanoseconds since the epoch in [MIN_TIME, MAX_TIME]: the range ext4
#: stores (32-bit signed seconds plus two epoch bits), 1901-12-13T20:45:52Z to
#: 2446-05-10T22:38:55.999999999Z.  Negative values are msgpack int64, values past 2**63 - 1
#: (2262) uint64; both encode canonically.  Anything else is refused (EINVAL).
MIN_TIME = -(1 << 31) * 1_000_000_000
MAX_TIME = ((1 << 34) - (1 << 31)) * 1_000_000_000 - 1
#: Largest per-file block size ``bs`` a server records (bftfs.config.MAX_BLOCK_SIZE: the
#: object methods depend on no configuration).
MAX_FILE_BLOCK = 4 * 1024**2
#: Version counters (``v``).
MAX_COUNTER = (1 << 63) - 1
MAX_ID = (1 << 32) - 1

XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

#: Entry type codes: the S_IFMT bits shifted down (4 = directory, 8 = regular, 10 = symlink).
DIR_TYPE = st.S_IFDIR >> 12
#: File types an attribute object may have (everything but a directory).
FILE_TYPES = frozenset({st.S_IFREG, st.S_IFLNK, st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK})


# Argument checks ---------------------------------------------------------------------------


def _arg(arg: Any) -> dict[str, Any]:
    if not isinstance(arg, dict):
        raise MethodRefused("invalid", "argument must be a map")
    return arg


def _int(arg: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = arg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise MethodRefused("invalid", f"{key} must be an integer in [{lo}, {hi}]")
    return v


def _opt_int(arg: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    return None if arg.get(key) is None else _int(arg, key, lo, hi)


def _oid(arg: dict[str, Any], key: str, states: States) -> int:
    v = _int(arg, key, 1, MAX_OID)
    if v not in states:
        raise MethodRefused("invalid", f"{key} is not an object of the request")
    return v


def _time(arg: dict[str, Any], key: str = "now") -> int:
    return _int(arg, key, MIN_TIME, MAX_TIME)


def _opt_time(arg: dict[str, Any], key: str) -> int | None:
    return _opt_int(arg, key, MIN_TIME, MAX_TIME)


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


# Object states -----------------------------------------------------------------------------


def _dir(state: Any, *, alive: bool = True) -> dict[str, Any]:
    """A directory object's state (a copy), refusing anything else."""
    if state is None:
        raise MethodRefused("not-found")
    if not isinstance(state, dict) or state.get("k") != "d":
        raise MethodRefused("not-dir")
    if alive and state["dead"]:
        raise MethodRefused("removed", "directory was removed")
    return dict(state)


def _file(state: Any) -> dict[str, Any]:
    """An attribute object's state (a copy), refusing anything else."""
    if state is None:
        raise MethodRefused("not-found")
    if not isinstance(state, dict) or state.get("k") != "f":
        raise MethodRefused("is-dir")
    return dict(state)


def _node(state: Any) -> dict[str, Any]:
    """Either kind of object (a copy)."""
    if state is None or not isinstance(state, dict) or state.get("k") not in ("d", "f"):
        raise MethodRefused("not-found")
    return dict(state)


def entries(state: dict[str, Any]) -> dict[bytes, list[int]]:
    """Every entry of a directory state (or readdir answer): name -> [object id, type code],
    in name order."""
    return all_entries(state["e"])


def _touch(state: dict[str, Any], now: int, *, modify: bool) -> None:
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


def stat_of(state: dict[str, Any]) -> dict[str, Any]:
    """The attributes of either kind of object, as queries and updates answer them.

    Keys: ``k, mode, uid, gid, rdev, nl, size, alloc, d, at, mt, ct, v``, ``nx`` (number of
    extended attributes: a client answers "no such attribute" from a fresh stat with
    ``nx == 0``), ``inl`` (the content is inline), ``p`` (parent) for directories, and for
    files ``al``: the bytes below ``size`` that writes stored in blocks (``w``; None for
    objects made before it was kept), from which clients report ``st_blocks``, and ``bt``
    (the newest block Time, see :func:`_raise_block_time`) once blocks were written.
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
    out = {k: v for k, v in state.items() if k not in ("x", "t", "i", "w", "wl")}
    out["nx"] = len(state["x"])
    out["inl"] = state.get("i") is not None
    w = state.get("w")
    size = state["size"]
    out["al"] = None if w is None else sum(min(hi, size) - lo for lo, hi in w if lo < size)
    if w is not None:
        out["w"] = w  # what a remover gives back (fs/reclaim.py), not the whole size
    lease = state.get("wl")
    if lease is not None and len(lease) > 2 and lease[2]:
        out["zl"] = lease[2]  # stale too if its holder never completes (_settle_lease)
    return out


def _inline(a: dict[str, Any], size: int) -> bytes | None:
    """The inline content an argument carries (``i``), checked against the new ``size``."""
    i = a.get("i")
    if i is None:
        return None
    if not isinstance(i, bytes) or len(i) != size or size > INLINE_MAX:
        raise MethodRefused(
            "invalid", f"inline content must be bytes of the size, at most {INLINE_MAX}"
        )
    return i


def merge_extents(extents: list[list[int]], limit: int = MAX_EXTENTS) -> list[list[int]]:
    """Byte ranges ``[lo, hi)`` sorted and joined where they touch or overlap; while more
    than ``limit`` remain, the two with the smallest gap between them become one (the
    record may then count a gap as written: it errs towards a dense file, as before)."""
    out: list[list[int]] = []
    for lo, hi in sorted(extents):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    while len(out) > limit:
        i = min(range(len(out) - 1), key=lambda j: out[j + 1][0] - out[j][1])
        out[i : i + 2] = [[out[i][0], out[i + 1][1]]]
    return out


def _ranges(a: dict[str, Any], key: str) -> list[list[int]] | None:
    """The argument's byte ranges ``key`` (at most :data:`MAX_EXTENTS` ``[lo, hi)`` pairs
    within ``[0, MAX_SIZE]``), None when absent."""
    got = a.get(key)
    if got is None:
        return None
    if not isinstance(got, list) or len(got) > MAX_EXTENTS:
        raise MethodRefused("invalid", f"{key} must be a list of at most {MAX_EXTENTS} ranges")
    for r in got:
        ok = isinstance(r, list) and len(r) == 2
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
        if not ok or not 0 <= r[0] < r[1] <= MAX_SIZE:
            raise MethodRefused("invalid", f"{key} ranges must be [lo, hi) with 0 <= lo < hi")
    return [[r[0], r[1]] for r in got]


def _written(a: dict[str, Any], f: dict[str, Any]) -> list[list[int]] | None:
    """``f``'s record of the byte ranges written to its blocks (``w``) with the ranges the
    argument says this write stored (``w``: at most :data:`MAX_EXTENTS` pairs), clipped at
    the reservation (nothing beyond it was written).

    Written data is what ``st_blocks`` counts, so sparse files look sparse (``du``,
    ``cp --sparse``, ``tar -S``).  Servers cannot see which blocks a client wrote: a lie
    here changes only the reported block count, never data or sizes.  An object made
    before the record existed has none (None) and stays counted as dense.
    """
    got = _ranges(a, "w")
    if got is None:
        return f.get("w")
    ranges = [[lo, min(hi, f["alloc"])] for lo, hi in got if lo < f["alloc"]]
    old = f.get("w")
    return None if old is None else merge_extents(old + ranges)


def _add_stale(f: dict[str, Any], ranges: list[list[int]], start: int) -> None:
    """Add the parts of ``ranges`` in ``[start, alloc)`` to ``f``'s record of stale ranges
    (``z``), if it keeps one (joining the closest beyond :data:`MAX_EXTENTS`).

    ``z`` lists the byte ranges at or beyond the size whose blocks may hold bytes no
    reader may see (the file's written ranges a truncation cut off, the blocks a write
    lease's holder said it would write and never completed; for an inline file, anything
    in its unused blocks): what a client growing the file clears first, and what a
    remover gives back with the written ranges.  Nothing else beyond the size was ever
    written (by a correct client), so growing costs what was written there, not the gap.
    An object made before the record existed has none (None): growing it clears the
    whole gap up to ``alloc``, as before."""
    z = f.get("z")
    if z is None:
        return
    end = int(f["alloc"])
    add = [[max(lo, start), min(hi, end)] for lo, hi in ranges if hi > start and lo < end]
    if add:
        f["z"] = merge_extents(z + add)


def _clip_stale(f: dict[str, Any], size: int) -> None:
    """Forget the stale ranges below ``size``: the client that set it cleared them."""
    z = f.get("z")
    if z:
        f["z"] = [[max(lo, size), hi] for lo, hi in z if hi > size]


def _stale_start(f: dict[str, Any]) -> int:
    """Where stale bytes matter: from the size, or everywhere for an inline file (whose
    blocks are all unused)."""
    return 0 if f.get("i") is not None else int(f["size"])


def _settle_lease(f: dict[str, Any], a: dict[str, Any], *, completed: bool) -> None:
    """Settle what the file's write lease declared it would write (``wl[2]``): dropped
    when its holder (``tok``) completes now (``fs.write``: every block it wrote lies
    below the size it sets, and the gap up to there it cleared), else moved into the
    stale ranges (a holder that died or gave up may have written any of it)."""
    lease = f.get("wl")
    if lease is None or len(lease) < 3:
        return
    if not (completed and lease[0] == _opt_int(a, "tok", 1, MAX_OID)):
        _add_stale(f, lease[2], _stale_start(f))
    f["wl"] = [lease[0], lease[1]]


def _lease_declaration(f: dict[str, Any], a: dict[str, Any]) -> list[list[int]]:
    """The ranges a new lease's holder will write (the argument's ``z``, clipped at the
    reservation; absent: anywhere below it)."""
    end = int(f["alloc"])
    declared = _ranges(a, "z")
    if declared is None:
        return [[0, end]] if end else []
    return merge_extents([[lo, min(hi, end)] for lo, hi in declared if lo < end])


def _leaving_inline(f: dict[str, Any]) -> list[list[int]] | None:
    """The record of written ranges of a file whose inline content moves to block 0."""
    if f.get("w") is None:
        return None
    n = len(f["i"])
    return [[0, n]] if n else []


# Queries -----------------------------------------------------------------------------------


def _stat(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    return stat_of(_node(state))


def _peek(states: States, arg: Any) -> Any:
    """Whether the object exists, never refusing (``None``: absent; else its kind and
    whether it is removed): where a history read starts (``bftfs/fs/past.py`` asks for the
    version this is answered at, which must work for removed objects too)."""
    ((_, state),) = states.items()
    if not isinstance(state, dict):
        return None
    return {"k": state.get("k"), "gone": _finished(state)}


def _open(states: States, arg: Any) -> Any:
    """What ``open`` needs: the stat, plus the content (``i``) of an inline file."""
    ((_, state),) = states.items()
    s = _node(state)
    out = stat_of(s)
    if s["k"] == "f" and s.get("i") is not None:
        out["i"] = s["i"]
    return out


def _lookup(states: States, arg: Any) -> Any:
    """Answer ``[object id, type code]`` of entry ``arg`` (a name)."""
    ((_, state),) = states.items()
    d = _dir(state)
    got = Entries(d["e"]).get(check_name(arg))
    if got is None:
        raise MethodRefused("not-found")
    return got


def _lookup_stat(states: States, arg: Any) -> Any:
    """``lookup`` and the attributes of the object the client expects the entry to name, in
    one round (a two-object query): ``{"e": [object id, type code], "s": stat or None}``;
    ``s`` is None when the entry names another object than ``o``."""
    a = _arg(arg)
    pid, oid = _oid(a, "p", states), _oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    got = Entries(_dir(states[pid])["e"]).get(check_name(a.get("name")))
    if got is None:
        raise MethodRefused("not-found")
    state = states[oid]
    same = got[0] == oid and isinstance(state, dict) and state.get("k") in ("d", "f")
    return {"e": got, "s": stat_of(state) if same else None}


def _stat_many(states: States, arg: Any) -> Any:
    """The attributes of up to 8 objects in one round (readdir's entries): ``{str(object id):
    stat, or None where no object is}``."""
    return {
        str(oid): stat_of(state)
        if isinstance(state, dict) and state.get("k") in ("d", "f")
        else None
        for oid, state in states.items()
    }


def _readdir(states: States, arg: Any) -> Any:
    """Answer ``{"e": packed buckets (a list), "p": parent}``; the client unpacks them
    (:func:`entries`).  A list, not the bucket map: wire maps take string keys only."""
    ((_, state),) = states.items()
    d = _dir(state)
    e = d["e"]
    return {"e": e if isinstance(e, bytes) else [e[i] for i in sorted(e)], "p": d["p"]}


def _readlink(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    f = _file(state)
    if not st.S_ISLNK(f["mode"]):
        raise MethodRefused("invalid", "not a symlink")
    return f["t"]


def _getxattr(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    value = _node(state)["x"].get(check_xattr_name(arg))
    if value is None:
        raise MethodRefused("no-attr")
    return value


def _listxattr(states: States, arg: Any) -> Any:
    ((_, state),) = states.items()
    return sorted(_node(state)["x"])


# Single-object updates ---------------------------------------------------------------------


def _mkroot(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Create the root directory (its parent is itself); refused once it exists."""
    a = _arg(arg)
    ((oid, state),) = states.items()
    if oid != ROOT:
        raise MethodRefused("invalid", "only the root is made this way")
    if state is not None:
        raise MethodRefused("exists")
    root = new_dir(ROOT, _int(a, "mode", 0, 0o7777), *_owner(a), _time(a))
    return {oid: root}, stat_of(root)


def _owner(a: dict[str, Any]) -> tuple[int, int]:
    return _int(a, "uid", 0, MAX_ID), _int(a, "gid", 0, MAX_ID)


def _setattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """chmod / chown / utimens / truncate on one object.

    A size change is a truncation: to zero it must bring a new data id (so no old block is
    ever seen again); down, the written ranges it cuts off become stale (``z``); to a larger
    size it only moves ``size`` (the stale ranges up to there the client cleared beforehand,
    beyond ``alloc`` blocks were never written).
    """
    a = _arg(arg)
    ((oid, state),) = states.items()
    s = _node(state)
    if s["k"] == "d" and s["dead"]:
        raise MethodRefused("not-found")
    now = _time(a)
    mode = _opt_int(a, "mode", 0, 0o177777)
    if mode is not None:
        s["mode"] = (s["mode"] & ~0o7777) | (mode & 0o7777)
    uid, gid = _opt_int(a, "uid", 0, MAX_ID), _opt_int(a, "gid", 0, MAX_ID)
    if uid is not None:
        s["uid"] = uid
    if gid is not None:
        s["gid"] = gid
    atime, mtime = _opt_time(a, "atime"), _opt_time(a, "mtime")
    if atime is not None:
        s["at"] = atime
    if mtime is not None:
        s["mt"] = mtime
    size = _opt_int(a, "size", 0, MAX_SIZE)
    if size is not None:
        if s["k"] == "d":
            raise MethodRefused("is-dir")
        if not st.S_ISREG(s["mode"]):
            raise MethodRefused("invalid", "only regular files have a size to set")
        _not_locked_by_other(s, a)
        # (A truncation's own lease declared nothing: its zeros are harmless anywhere.)
        _settle_lease(s, a, completed=False)
        if s.get("wl") is not None and s["wl"][0] == _opt_int(a, "tok", 1, MAX_OID):
            s["wl"] = None  # a truncation that cleared blocks under its lease
        if size == 0:
            data_id = _int(a, "d", 1, MAX_OID)
            if data_id == s["d"]:
                raise MethodRefused("invalid", "truncation to zero needs a fresh data id")
            s["d"], s["alloc"] = data_id, _int(a, "alloc", 0, MAX_SIZE)
            s["w"] = []  # (also starts the records for a file made before they existed)
            s["z"] = []
        elif _opt_int(a, "d", 1, MAX_OID) not in (None, s["d"]):
            raise MethodRefused("stale", "data id changed")
        inline = _inline(a, size)
        if inline is None and s.get("i") is not None and not a.get("blocks"):
            raise MethodRefused("invalid", "an inline file's size changes with its content")
        if s.get("w") is not None:
            if inline is not None:
                s["w"] = []
            elif s.get("i") is not None:
                s["w"] = _leaving_inline(s)
            if inline is None:
                # What a truncation cuts off stays in the blocks: stale beyond the size,
                # cleared by whoever grows the file again (only that, not the gap).
                _add_stale(s, [[max(lo, size), hi] for lo, hi in s["w"] if hi > size], size)
            s["w"] = [[lo, min(hi, size)] for lo, hi in s["w"] if lo < size]
        if inline is None and size > s["size"]:
            _clip_stale(s, size)  # the client cleared them up to the new size
        s["i"] = inline
        _raise_block_time(s, a)
        if size != s["size"] and mtime is None:
            s["mt"] = now
        s["size"] = size
    _touch(s, now, modify=False)
    return {oid: s}, stat_of(s)


#: Largest PASIS block Time a file records (``bt``: 8 unsigned bytes, rw/timestamp.py).
MAX_BLOCK_TIME = (1 << 64) - 1
#: The argument keys of the updates that lock others out until a time (a write lease runs
#: from ``now``; later writers must write above ``bt``): nodes refuse a client's own update
#: whose value lies more than the PASIS write skew past their clock (``Method.clocks``).
CLOCKS = ("now", "bt")


def _raise_block_time(f: dict[str, Any], a: dict[str, Any]) -> None:
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
    bt = _opt_int(a, "bt", 0, MAX_BLOCK_TIME)
    if bt is not None and bt > f.get("bt", 0):
        f["bt"] = bt


def _unchanged(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Refuse as ``stale`` unless the file still has the client's data id (and version
    counter ``v``, when given): the client decided what to write from those."""
    if _int(a, "d", 1, MAX_OID) != f["d"]:
        raise MethodRefused("stale", "data id changed")
    v = _opt_int(a, "v", 0, MAX_COUNTER)
    if v is not None and v != f["v"]:
        raise MethodRefused("stale", "file changed")


def _write(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """After blocks up to ``end`` are complete: size = max(size, end), mtime, and optionally a
    larger reservation for the next writes.  Refused as ``stale`` when the file's data id
    changed since the client wrote its blocks (another client truncated it to zero).

    With ``i`` the write is the whole inline content instead (size = ``end`` = its length;
    the version counter ``v`` is then required); ``blocks`` moves an inline file to blocks.
    ``w``: the byte ranges this write stored in blocks (see :func:`_written`).
    """
    a = _arg(arg)
    ((oid, state),) = states.items()
    f = _file(state)
    if not st.S_ISREG(f["mode"]):
        raise MethodRefused("invalid", "not a regular file")
    _unchanged(f, a)
    _not_locked_by_other(f, a)
    end = _int(a, "end", 0, MAX_SIZE)
    inline = _inline(a, end)
    _settle_lease(f, a, completed=True)
    if inline is not None:
        if a.get("v") is None:
            raise MethodRefused("invalid", "an inline write needs the version it replaces")
        f["size"] = end
        if f.get("w") is not None:
            if f.get("i") is None:
                _add_stale(f, f["w"], 0)  # the blocks are unused from now on
            f["w"] = []
    else:
        if f.get("i") is not None and not a.get("blocks"):
            raise MethodRefused("invalid", "an inline file's size changes with its content")
        _record_block_size(f, a)  # the cluster's size, chosen at a lock-free first flush
        if end > f["alloc"]:
            raise MethodRefused("invalid", "blocks beyond the reservation")
        if f.get("i") is not None:
            f["w"] = _leaving_inline(f)
        f["w"] = _written(a, f)
        f["size"] = max(f["size"], end)
        _clip_stale(f, f["size"])  # the writer cleared them up to its end
    f["i"] = inline
    f["alloc"] = max(f["alloc"], _opt_int(a, "alloc", 0, MAX_SIZE) or 0)
    _raise_block_time(f, a)
    mtime = _time(a, "mtime")
    f["mt"] = mtime
    f["ct"] = max(f["ct"], mtime)
    _written_back_attrs(f, a.get("attrs"))
    if f.get("wl") is not None and f["wl"][0] == _opt_int(a, "tok", 1, MAX_OID):
        f["wl"] = None  # the writer's blocks are complete: its lease ends with its size update
    f["v"] += 1
    return {oid: f}, stat_of(f)


def _written_back_attrs(f: dict[str, Any], attrs: Any) -> None:
    """chmod/chown/atime changes a client held back while writing (sent with the write)."""
    if attrs is None:
        return
    a = _arg(attrs)
    if set(a) - {"mode", "uid", "gid", "atime"}:
        raise MethodRefused("invalid", "unknown attribute")
    mode = _opt_int(a, "mode", 0, 0o177777)
    if mode is not None:
        f["mode"] = (f["mode"] & ~0o7777) | (mode & 0o7777)
    for key, name in (("uid", "uid"), ("gid", "gid")):
        v = _opt_int(a, key, 0, MAX_ID)
        if v is not None:
            f[name] = v
    atime = _opt_time(a, "atime")
    if atime is not None:
        f["at"] = atime


#: Longest write lease a client may take (ns): a flush that needs longer renews it.
MAX_LEASE = 120 * 10**9


def _lease_holder(f: dict[str, Any], now: int) -> int | None:
    """The token of the client holding ``f``'s write lease at ``now`` (None: free)."""
    lease = f.get("wl")
    if lease is None or now >= lease[1]:
        return None
    return int(lease[0])


def _not_locked_by_other(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Refuse as ``locked`` while another client's write lease runs (``tok``, ``now``: the
    caller's lease token and clock; a caller without a token holds no lease)."""
    holder = _lease_holder(f, _time(a))
    if holder is not None and holder != _opt_int(a, "tok", 1, MAX_OID):
        raise MethodRefused("locked", "another client is writing this file's blocks")


def _lock(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Take the file's write lease before writing blocks, and raise the reservation mark.

    Blocks are whole-block PASIS versions: two clients writing the same block at once would
    each replace the other's bytes in it, and the loser's version could stay the latest even
    though its size update is then refused.  So a client writes blocks only while it holds
    the lease: token ``tok`` until ``now + lease`` (client clocks, ns; methods read none),
    taken only on the version ``v`` it computed its blocks from.  ``fs.write`` with the
    token releases it; ``fs.unlock`` gives it up; an expired lease (a crashed writer) is
    free.  Refused ``locked`` while another client's lease runs, ``stale`` when the file
    changed since ``v``.
    """
    a = _arg(arg)
    ((oid, state),) = states.items()
    f = _file(state)
    if not st.S_ISREG(f["mode"]):
        raise MethodRefused("invalid", "not a regular file")
    _unchanged(f, a)
    if a.get("v") is None:
        raise MethodRefused("invalid", "a lock needs the version it was computed from")
    _not_locked_by_other(f, a)
    now = _time(a)
    tok = _int(a, "tok", 1, MAX_OID)
    _record_block_size(f, a)
    carried = _continued_declaration(f, tok, now)
    _settle_lease(f, a, completed=False)  # another lease's blocks may be there
    f["wl"] = [tok, min(now + _int(a, "lease", 1, MAX_LEASE), MAX_TIME)]
    f["alloc"] = max(f["alloc"], _opt_int(a, "alloc", 0, MAX_SIZE) or 0)
    if f.get("z") is not None:
        f["wl"].append(merge_extents(carried + _lease_declaration(f, a)))
    f["v"] += 1
    return {oid: f}, stat_of(f)


def _continued_declaration(f: dict[str, Any], tok: int, now: int) -> list[list[int]]:
    """What the caller's own running lease declared, taken over by the lease it takes
    now (and taken out of the old one, so it does not become stale): while the lease
    runs nobody else changes the file, so whatever the holder wrote under it lies below
    the size its completing ``fs.write`` sets, or is cut off by its own truncation
    (which moves the declaration to the stale ranges).  A create's lease declares the
    whole reservation; without this, a first flush that must lock (a bigger
    reservation, a big block size) would leave it stale."""
    lease = f.get("wl")
    if lease is None or len(lease) < 3 or lease[0] != tok or now >= lease[1]:
        return []
    f["wl"] = [lease[0], lease[1]]
    return list(lease[2])


def _record_block_size(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Record the file's block size ``bs`` (the argument's, if any) before its first blocks.

    Only a file without blocks may take one (size 0, or its content inline), and only once:
    blocks already written under one size would be read at other offsets under another.
    Asking again for the size recorded is harmless (a retried first flush)."""
    bs = _opt_int(a, "bs", 1, MAX_FILE_BLOCK)
    if bs is None:
        return
    old = f.get("bs")
    if old is not None:
        if old != bs:
            raise MethodRefused("stale", "the file's block size is set already")
        return
    if f["size"] != 0 and f.get("i") is None:
        raise MethodRefused("invalid", "a file with blocks keeps its block size")
    f["bs"] = bs


def _unlock(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Give up this client's write lease (a flush that failed after taking it)."""
    a = _arg(arg)
    ((oid, state),) = states.items()
    f = _file(state)
    lease = f.get("wl")
    if lease is not None and lease[0] == _int(a, "tok", 1, MAX_OID):
        _settle_lease(f, a, completed=False)  # what it wrote before giving up stays
        f["wl"] = None
        f["v"] += 1
    return {oid: f}, stat_of(f)


def _setxattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    a = _arg(arg)
    ((oid, state),) = states.items()
    s = _node(state)
    name = check_xattr_name(a.get("name"))
    value = a.get("value")
    if not isinstance(value, bytes):
        raise MethodRefused("invalid", "value must be bytes")
    if len(value) > XATTR_SIZE_MAX:
        raise MethodRefused("too-big")
    flags = _int(a, "flags", 0, XATTR_CREATE | XATTR_REPLACE)
    x = dict(s["x"])
    if flags & XATTR_CREATE and name in x:
        raise MethodRefused("exists")
    if flags & XATTR_REPLACE and name not in x:
        raise MethodRefused("no-attr")
    x[name] = value
    if sum(len(k) + len(v) for k, v in x.items()) > XATTR_TOTAL_MAX:
        raise MethodRefused("no-space")
    s["x"] = x
    _touch(s, _time(a), modify=False)
    return {oid: s}, None


def _removexattr(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    a = _arg(arg)
    ((oid, state),) = states.items()
    s = _node(state)
    x = dict(s["x"])
    if x.pop(check_xattr_name(a.get("name")), None) is None:
        raise MethodRefused("no-attr")
    s["x"] = x
    _touch(s, _time(a), modify=False)
    return {oid: s}, None


# Namespace updates (multi-object, Table 4.3) -----------------------------------------------


def _parent_and_new(states: States, a: dict[str, Any]) -> tuple[int, dict[str, Any], int, bytes]:
    """Common checks of create/mkdir: a live parent, a free legal name, a fresh object."""
    pid, oid = _oid(a, "p", states), _oid(a, "o", states)
    if pid == oid or oid in (ROOT, SNAPSHOTS):
        raise MethodRefused("invalid", "bad object ids")
    parent = _dir(states[pid])
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
    _touch(parent, now, modify=True)


def _create(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """create / mknod / symlink: a new attribute object and its entry in the parent.

    Argument: ``p`` parent, ``o`` new object id, ``name``, ``mode`` (with its type bits),
    ``uid``, ``gid``, ``rdev``, ``now``, and for regular files ``d`` (data id) and ``alloc``
    (and, when the creator opens it to write, ``tok``/``lease``: it starts holding the write
    lease, so its first flush needs no ``fs.lock``), for symlinks ``t`` (target).  Answers
    ``[stat of the new object, stat of the parent]``.
    """
    a = _arg(arg)
    pid, parent, oid, name = _parent_and_new(states, a)
    mode = _int(a, "mode", 0, 0o177777)
    ftype = st.S_IFMT(mode)
    if ftype not in FILE_TYPES:
        raise MethodRefused("invalid", "bad file type")
    now = _time(a)
    uid, gid = _owner(a)
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
        f["d"] = _int(a, "d", 1, MAX_OID)
        f["alloc"] = _int(a, "alloc", 0, MAX_SIZE)
        f["i"] = _inline(a, 0)  # b"": an empty file whose content will be inline
        f["w"] = []
        f["z"] = []
        if a.get("tok") is not None:  # created to be written: the creator holds the lease
            lease = _int(a, "lease", 1, MAX_LEASE)
            declared = [[0, f["alloc"]]] if f["alloc"] else []  # (_settle_lease)
            f["wl"] = [_int(a, "tok", 1, MAX_OID), min(now + lease, MAX_TIME), declared]
    elif ftype == st.S_IFLNK:
        target = a.get("t")
        if not isinstance(target, bytes) or not target or b"\0" in target:
            raise MethodRefused("invalid", "bad symlink target")
        if len(target) > PATH_MAX:
            raise MethodRefused("name-too-long")
        f["t"], f["size"] = target, len(target)
    elif ftype in (st.S_IFCHR, st.S_IFBLK):
        f["rdev"] = _int(a, "rdev", 0, (1 << 64) - 1)
    _add_entry(parent, name, oid, ftype >> 12, now)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


def _create_write(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new regular file with its first content, in one update (create write-behind,
    docs/fs.md): what ``fs.create`` followed by an inline ``fs.write`` on the version it
    made would leave, so a Byzantine client can make nothing these two could not.

    Argument: ``fs.create``'s for a regular file (no ``tok``/``lease``: the content comes
    with the create, no lease is needed) plus ``i`` (the whole content, at most
    :data:`INLINE_MAX` bytes), ``mtime`` and optionally ``attrs`` (held-back chmod, chown,
    atime, as in ``fs.write``).  Answers ``[stat of the new file, stat of the parent]``.
    """
    a = _arg(arg)
    if st.S_IFMT(_int(a, "mode", 0, 0o177777)) != st.S_IFREG:
        raise MethodRefused("invalid", "fs.createwrite makes regular files only")
    if a.get("tok") is not None or a.get("lease") is not None:
        raise MethodRefused("invalid", "fs.createwrite takes no write lease")
    content = a.get("i")
    if not isinstance(content, bytes):
        raise MethodRefused("invalid", "fs.createwrite needs the content (i)")
    made, (_, pst) = _create(states, dict(a, i=b""))
    oid = _oid(a, "o", states)
    written = {
        "d": a["d"],
        "v": made[oid]["v"],
        "end": len(content),
        "i": content,
        "mtime": a.get("mtime"),
        "attrs": a.get("attrs"),
        "now": a["now"],
    }
    f, fst = _write({oid: made[oid]}, written)
    made[oid] = f[oid]
    return made, [fst, pst]


def created_stat(arg: dict[str, Any], parent_mode: int, parent_gid: int) -> dict[str, Any]:
    """The stat ``fs.create`` with ``arg`` answers for its new object in a directory of
    that mode and group (a client answering a create it has not sent yet: the same code,
    so the kernel is told what the servers will make, set-group-ID inheritance included).

    Raises:
        MethodRefused: as ``fs.create`` would for ``arg``.
    """
    stand_in = new_dir(ROOT, parent_mode, 0, parent_gid, int(arg.get("now") or 0))
    _, (child, _) = _create({ROOT: stand_in, int(arg["o"]): None}, dict(arg, p=ROOT))
    return dict(child)


def _mkdir(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new directory object and its entry; the parent gains a link (the child's ``..``)."""
    a = _arg(arg)
    pid, parent, oid, name = _parent_and_new(states, a)
    now = _time(a)
    uid, gid = _owner(a)
    gid, sgid = _inherited(parent, gid, st.S_ISGID)
    child = new_dir(pid, _int(a, "mode", 0, 0o177777) | sgid, uid, gid, now)
    if parent["nd"] + 2 >= LINK_MAX:
        raise MethodRefused("too-many-links")
    _add_entry(parent, name, oid, DIR_TYPE, now)
    parent["nd"] += 1
    return {pid: parent, oid: child}, [stat_of(child), stat_of(parent)]


def _link(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """A new name for an existing non-directory: its link count goes up by one."""
    a = _arg(arg)
    pid, oid = _oid(a, "p", states), _oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    parent = _dir(states[pid])
    if isinstance(states[oid], dict) and states[oid].get("k") == "d":
        raise MethodRefused("permission", "no hard links to directories")  # link(2): EPERM
    f = _file(states[oid])
    if f["nl"] == 0:
        raise MethodRefused("not-found", "file was removed")
    if f["nl"] >= LINK_MAX:
        raise MethodRefused("too-many-links")
    now = _time(a)
    _add_entry(parent, check_name(a.get("name")), oid, st.S_IFMT(f["mode"]) >> 12, now)
    f["nl"] += 1
    _touch(f, now, modify=False)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


def _entry_is(ents: Entries, name: bytes, oid: int) -> list[int]:
    """The entry ``name``, which must name ``oid`` (else the client's view is stale)."""
    got = ents.get(name)
    if got is None:
        raise MethodRefused("not-found")
    if got[0] != oid:
        raise MethodRefused("stale", "entry names another object")
    return got


def _unlink(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Remove a name of a non-directory; its link count goes down by one (at zero the
    attribute object remains, for handles still open, but no name reaches it)."""
    a = _arg(arg)
    pid, oid = _oid(a, "p", states), _oid(a, "o", states)
    if pid == oid:
        raise MethodRefused("invalid", "bad object ids")
    parent = _dir(states[pid])
    ents = Entries(parent["e"])
    name = check_name(a.get("name"))
    code = _entry_is(ents, name, oid)[1]
    if code == DIR_TYPE:
        raise MethodRefused("is-dir")
    f = _file(states[oid])
    if f["nl"] < 1:
        raise MethodRefused("invalid", "link count already zero")
    now = _time(a)
    del ents[name]
    parent["e"] = ents.packed()
    _touch(parent, now, modify=True)
    f["nl"] -= 1
    _touch(f, now, modify=False)
    return {pid: parent, oid: f}, [stat_of(f), stat_of(parent)]


def _rmdir(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Remove an empty subdirectory: its object becomes a tombstone (``dead``)."""
    a = _arg(arg)
    pid, oid = _oid(a, "p", states), _oid(a, "o", states)
    if pid == oid or oid == ROOT:
        raise MethodRefused("busy" if oid == ROOT else "invalid", "bad object ids")
    parent = _dir(states[pid])
    ents = Entries(parent["e"])
    name = check_name(a.get("name"))
    code = _entry_is(ents, name, oid)[1]
    if code != DIR_TYPE:
        raise MethodRefused("not-dir")
    child = _dir(states[oid])
    if child["p"] != pid:
        raise MethodRefused("stale", "parent pointer disagrees")
    if not is_empty(child["e"]):
        raise MethodRefused("not-empty")
    now = _time(a)
    del ents[name]
    parent["e"] = ents.packed()
    parent["nd"] -= 1
    _touch(parent, now, modify=True)
    child["dead"] = True
    _touch(child, now, modify=False)
    return {pid: parent, oid: child}, [stat_of(child), stat_of(parent)]


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
        cur = _dir(s)["p"]
    raise MethodRefused("stale", "ancestor chain loops")


def _rename(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """rename(2) with ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``, atomically.

    Argument: ``sp``/``sn`` source parent and name, ``dp``/``dn`` destination, ``o`` the
    object ``sn`` names, ``t`` the object ``dn`` names (None if free), ``flags``, ``now``.
    Objects: ``sp``, ``dp``, ``o``, ``t`` and the ancestors :func:`_not_under` walks.
    Answers the new stats by object id (string keys).
    """
    a = _arg(arg)
    sp, dp, o = _oid(a, "sp", states), _oid(a, "dp", states), _oid(a, "o", states)
    t = None if a.get("t") is None else _oid(a, "t", states)
    flags = _int(a, "flags", 0, RENAME_NOREPLACE | RENAME_EXCHANGE)
    if flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
        raise MethodRefused("invalid", "flags")
    now = _time(a)
    sn, dn = check_name(a.get("sn")), check_name(a.get("dn"))
    # t == o: both names are links to one file, which POSIX makes a no-op (below).
    if o in (sp, dp) or (t is not None and t != o and t in (sp, dp)) or o == ROOT:
        raise MethodRefused("invalid", "bad object ids")
    new = {oid: (dict(s) if isinstance(s, dict) else s) for oid, s in states.items()}
    src = new[sp] = _dir(states[sp])
    dst = src if dp == sp else _dir(states[dp])
    new[dp] = dst
    sents = Entries(src["e"])
    dents = sents if dp == sp else Entries(dst["e"])
    ocode = _entry_is(sents, sn, o)[1]
    got = dents.get(dn)
    if (got[0] if got else None) != t:
        raise MethodRefused("stale", "target entry changed")
    if flags & RENAME_EXCHANGE and t is None:
        raise MethodRefused("not-found")
    if t is not None and flags & RENAME_NOREPLACE:
        raise MethodRefused("exists")
    obj = new[o] = _node(states[o])
    if (ocode == DIR_TYPE) != (obj["k"] == "d"):
        raise MethodRefused("stale", "entry type disagrees")
    if ocode == DIR_TYPE and obj["p"] != sp:
        raise MethodRefused("stale", "parent pointer disagrees")
    if (sp == dp and sn == dn) or t == o:
        return new, {}
    tobj = None
    if t is not None:
        tcode = got[1] if got else 0
        tobj = new[t] = _node(states[t])
        if (tcode == DIR_TYPE) != (tobj["k"] == "d"):
            raise MethodRefused("stale", "entry type disagrees")
        if tcode == DIR_TYPE and tobj["p"] != dp:
            raise MethodRefused("stale", "parent pointer disagrees")
    if flags & RENAME_EXCHANGE and tobj is not None and got is not None:
        assert t is not None  # (tobj is t's)
        if sp != dp:
            if ocode == DIR_TYPE:
                _not_under(states, dp, o, sp)
            if got[1] == DIR_TYPE:
                _not_under(states, sp, t, dp)
        sents[sn], dents[dn] = [t, got[1]], [o, ocode]
        for mover, code, parent in ((obj, ocode, dp), (tobj, got[1], sp)):
            if code == DIR_TYPE and sp != dp:
                mover["p"] = parent
            _touch(mover, now, modify=False)
        if sp != dp and (ocode == DIR_TYPE) != (got[1] == DIR_TYPE):
            delta = 1 if ocode == DIR_TYPE else -1
            dst["nd"] += delta
            src["nd"] -= delta
    else:
        if tobj is not None:
            if ocode == DIR_TYPE:
                if tobj["k"] != "d":
                    raise MethodRefused("not-dir")
                if not is_empty(tobj["e"]):
                    raise MethodRefused("not-empty")
            elif tobj["k"] == "d":
                raise MethodRefused("is-dir")
        if ocode == DIR_TYPE and sp != dp:
            _not_under(states, dp, o, sp)
        del sents[sn]
        dents[dn] = [o, ocode]
        if tobj is not None:
            if tobj["k"] == "d":
                tobj["dead"] = True
                dst["nd"] -= 1
            else:
                if tobj["nl"] < 1:
                    raise MethodRefused("invalid", "link count already zero")
                tobj["nl"] -= 1
            _touch(tobj, now, modify=False)
        if ocode == DIR_TYPE and sp != dp:
            obj["p"] = dp
            src["nd"] -= 1
            dst["nd"] += 1
        _touch(obj, now, modify=False)
    if dst["nd"] + 2 > LINK_MAX:
        raise MethodRefused("too-many-links")
    src["e"] = sents.packed()
    _touch(src, now, modify=True)
    if dp != sp:
        dst["e"] = dents.packed()
        _touch(dst, now, modify=True)
    changed = (sp, dp, o) if t is None else (sp, dp, o, t)
    return new, {str(oid): stat_of(new[oid]) for oid in changed}


# Snapshots ----------------------------------------------------------------------------------


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


def _snapshot(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Create or delete a snapshot: ``{"op": "create", "name", "t"}`` (``t``: the moment,
    ns; the client's, like every time an fs method is given) or ``{"op": "delete",
    "name"}``.  The list lives in object :data:`SNAPSHOTS`, made by the first create."""
    a = _arg(arg)
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
        snaps[name] = _time(a, "t")
    elif op == "delete":
        if name not in snaps:
            raise MethodRefused("not-found")
        del snaps[name]
    else:
        raise MethodRefused("invalid", "op is create or delete")
    new = {"k": "s", "snaps": snaps}
    return {oid: new}, snaps


def _snapshots(states: States, arg: Any) -> Any:
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


def _finished(state: Any) -> bool:
    """A removed directory (a tombstone), or a file no name reaches any more: no update
    makes either reachable again, so servers keep only the newest version of it once
    retention's age has passed (open handles still read that one)."""
    if not isinstance(state, dict):
        return False
    if state.get("k") == "d":
        return bool(state.get("dead"))
    return state.get("k") == "f" and state.get("nl") == 0


FS = ObjectType(
    "fs",
    (
        Method("fs.stat", Class.QUERY, _stat),
        Method("fs.open", Class.QUERY, _open),
        Method("fs.peek", Class.QUERY, _peek),
        Method("fs.snapshots", Class.QUERY, _snapshots),
        Method("fs.snapshot", Class.UPDATE, _snapshot),
        Method("fs.lookup", Class.QUERY, _lookup),
        Method("fs.lookupstat", Class.QUERY, _lookup_stat, 2, 2),
        Method("fs.statmany", Class.QUERY, _stat_many, 1, MAX_OBJECTS),
        Method("fs.readdir", Class.QUERY, _readdir),
        Method("fs.readlink", Class.QUERY, _readlink),
        Method("fs.getxattr", Class.QUERY, _getxattr),
        Method("fs.listxattr", Class.QUERY, _listxattr),
        Method("fs.mkroot", Class.UPDATE, _mkroot),
        Method("fs.setattr", Class.UPDATE, _setattr, clocks=CLOCKS),
        Method("fs.write", Class.UPDATE, _write, clocks=CLOCKS),
        Method("fs.lock", Class.UPDATE, _lock, clocks=CLOCKS),
        Method("fs.unlock", Class.UPDATE, _unlock),
        Method("fs.setxattr", Class.UPDATE, _setxattr),
        Method("fs.removexattr", Class.UPDATE, _removexattr),
        Method("fs.create", Class.UPDATE, _create, 2, 2, clocks=CLOCKS),
        Method("fs.createwrite", Class.UPDATE, _create_write, 2, 2, clocks=CLOCKS),
        Method("fs.mkdir", Class.UPDATE, _mkdir, 2, 2),
        Method("fs.link", Class.UPDATE, _link, 2, 2),
        Method("fs.unlink", Class.UPDATE, _unlink, 2, 2),
        Method("fs.rmdir", Class.UPDATE, _rmdir, 2, 2),
        Method("fs.rename", Class.UPDATE, _rename, 2, 8),
    ),
    finished=_finished,
)

#: The object types of the file system: what a node serves (``bftfs.node.protocols``).
OBJECT_TYPES = (FS,)
