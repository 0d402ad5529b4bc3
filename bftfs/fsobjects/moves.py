"""Moving an object from one generation to the next (issue 35, docs/membership.md "Generations:
moving objects"): ``fs.state``, the object's raw state, ``fs.export``, the state and its
applied table, and ``fs.movein``, which installs them where the object has none.

A change of the node count or the thresholds starts a new generation on new nodes; a client
moves each object on first touch (``bftfs/fs/generations/routers.py``): it reads the object's state
and applied table from the old generation with ``fs.export`` and installs them in the new
one with ``fs.movein``.
The state travels as its canonical msgpack bytes (:func:`pack_state`): a directory's entry
buckets are keyed by integers, and wire maps take string keys only.

``fs.movein`` installs only what ordinary methods could have made, one object at a time:

- the object must have no state (else ``exists``: another client moved it first);
- the state must be well formed for the object's id (:func:`checked_state`): a directory or
  attribute object for a file id, a lock object for a lock id, the snapshot list for
  :data:`~bftfs.fsobjects.limits.SNAPSHOTS`, every field of the type and range the methods
  keep, no other field (else ``invalid``);
- it carries no lease but the mover's own (the holder records of the calling client's mount,
  bounded by the longest term from a lease time the nodes check): other holders ``ls``, a
  recall ``lr`` and a file's write lease ``wl`` go (what the write lease declared it would
  write is kept as stale ranges ``z``, as when a holder dies:
  :func:`~bftfs.fsobjects.ranges.settle_lease`), and a lock object's waiters go (they
  poll). File locks live in the lock object beside the file (:mod:`bftfs.fsobjects.locks`)
  and move with it, each under its own expiry.

What it adds for a Byzantine client (docs/threat-model.md): through ordinary updates such a
client can already give any object it may write any legal content. ``fs.movein`` lets it,
while objects move, also install a well-formed state of its choosing in an object the new
generation does not hold yet, one the old generation may hold differently - another client's
file, a directory whose entries or link counts disagree with the objects they name, which
ordinary updates keep consistent across objects. It cannot overwrite an object the new
generation holds, install a malformed state, keep another's lease or give itself one longer
than a term, or touch the old generation. Nodes checking a moved state against the old
generation's (the background mover's step) would close that; until then generations are
changed with trusted clients mounted only.
"""

from __future__ import annotations

import stat as st
from typing import Any

import msgpack

from bftfs.fsobjects.dirents import BUCKETS, bucket_of
from bftfs.fsobjects.leases import (
    EXCLUSIVE,
    MAX_MOUNT,
    MAX_TERM,
    MOUNT,
    RECORD_KEYS,
    SHARED,
    holders,
    who,
)
from bftfs.fsobjects.limits import (
    DIR_TYPE,
    FILE_TYPES,
    INLINE_MAX,
    LINK_MAX,
    MAX_BLOCK_TIME,
    MAX_COUNTER,
    MAX_FILE_BLOCK,
    MAX_ID,
    MAX_OID,
    MAX_SIZE,
    MAX_SNAPSHOTS,
    MAX_TIME,
    MIN_TIME,
    PATH_MAX,
    SEALED_EXTRA,
    SNAPSHOTS,
    XATTR_SIZE_MAX,
    XATTR_TOTAL_MAX,
)
from bftfs.fsobjects.locks import (
    FLOCK,
    MAX_LOCKS,
    MAX_OWNER,
    OFFSET_MAX,
    POSIX,
    READ,
    WRITE,
    is_lock_object,
)
from bftfs.fsobjects.ranges import check_ranges, settle_lease
from bftfs.fsobjects.snapshots import snapshot_name
from bftfs.fsobjects.state import check_arg, check_int, check_name, check_xattr_name
from bftfs.qu.objects import MethodRefused, States

#: Largest packed state ``fs.movein`` takes (the Q/U layer bounds an argument at 1 MiB).
MAX_PACKED_STATE = 1 << 20

#: Entry type codes a directory may name.
_TYPE_CODES = frozenset({DIR_TYPE} | {t >> 12 for t in FILE_TYPES})
_DIR_KEYS = frozenset(
    {"k", "mode", "uid", "gid", "at", "mt", "ct", "nd", "p", "e", "x", "dead", "v"}
)
_FILE_KEYS = frozenset(
    {"k", "mode", "uid", "gid", "rdev", "nl", "size", "alloc", "d", "at", "mt", "ct", "t", "x", "v"}
)
_FILE_OPTIONAL = frozenset({"i", "w", "z", "bs", "bt"})
#: The lease records ``fs.movein`` strips (leases.py, with the publication counts of
#: pubstate.py: g + 1 starts with no lease; ``wl``: ranges.py).
LEASE_KEYS = (*RECORD_KEYS, "wl")


# Packing -----------------------------------------------------------------------------------


def _sorted(value: Any) -> Any:
    """``value`` with every map's keys in the order of their msgpack bytes (so every node
    packs one state to the same bytes, whatever order its maps were built in)."""
    if isinstance(value, dict):
        items = sorted(
            ((k, _sorted(v)) for k, v in value.items()),
            key=lambda kv: msgpack.packb(kv[0], use_bin_type=True),
        )
        return dict(items)
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def pack_state(state: Any) -> bytes:
    """An object state as the bytes ``fs.state`` answers and ``fs.movein`` takes."""
    return msgpack.packb(_sorted(state), use_bin_type=True)


def unpack_state(blob: Any) -> Any:
    """The state :func:`pack_state` packed.

    Raises:
        MethodRefused: ``invalid`` for anything that is not such bytes.
    """
    if not isinstance(blob, bytes) or len(blob) > MAX_PACKED_STATE:
        raise MethodRefused("invalid", "s must be a packed state of at most 1 MiB")
    try:
        return msgpack.unpackb(blob, raw=False, strict_map_key=False, use_list=True)
    except Exception:  # msgpack raises several unrelated types on garbage
        raise MethodRefused("invalid", "s is not a packed state") from None


# Shape checks --------------------------------------------------------------------------------


def _keys(
    s: dict[str, Any], required: frozenset[str], optional: frozenset[str] = frozenset()
) -> None:
    have = set(s)
    if not required <= have or not have <= required | optional:
        raise MethodRefused("invalid", f"state fields {sorted(have ^ required)} are wrong")


def _times(s: dict[str, Any]) -> None:
    for key in ("at", "mt", "ct"):
        check_int(s, key, MIN_TIME, MAX_TIME)


def _owner_mode(s: dict[str, Any], kinds: frozenset[int]) -> None:
    check_int(s, "uid", 0, MAX_ID)
    check_int(s, "gid", 0, MAX_ID)
    mode = check_int(s, "mode", 0, 0o177777)
    if st.S_IFMT(mode) not in kinds:
        raise MethodRefused("invalid", "mode names the wrong file type")


def _xattrs(s: dict[str, Any]) -> None:
    x = s["x"]
    if not isinstance(x, dict):
        raise MethodRefused("invalid", "x must be a map")
    total = 0
    for name, value in x.items():
        check_xattr_name(name)
        if not isinstance(value, bytes) or len(value) > XATTR_SIZE_MAX + SEALED_EXTRA:
            raise MethodRefused("invalid", "an xattr value is not bytes of the allowed size")
        total += len(name) + len(value)
    if total > XATTR_TOTAL_MAX:
        raise MethodRefused("invalid", "xattrs too big")


def _bucket(blob: Any, index: int | None) -> None:
    """One packed map of entries (``index``: its bucket; None for the old one-map layout)."""
    if not isinstance(blob, bytes):
        raise MethodRefused("invalid", "an entry bucket is not bytes")
    try:
        ents = msgpack.unpackb(blob, raw=False, use_list=True)
    except Exception:
        raise MethodRefused("invalid", "an entry bucket does not unpack") from None
    if not isinstance(ents, dict) or (index is not None and not ents):
        raise MethodRefused("invalid", "an entry bucket is not a non-empty map")
    for name, entry in ents.items():
        check_name(name)
        if index is not None and bucket_of(name) != index:
            raise MethodRefused("invalid", "an entry is in the wrong bucket")
        ok = isinstance(entry, list) and len(entry) == 2
        if not ok or not _is_int(entry[0], 1, MAX_OID) or entry[1] not in _TYPE_CODES:
            raise MethodRefused("invalid", "an entry is not [object id, type code]")


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _directory(s: dict[str, Any]) -> None:
    _keys(s, _DIR_KEYS)
    _owner_mode(s, frozenset({st.S_IFDIR}))
    _times(s)
    check_int(s, "nd", 0, MAX_COUNTER)
    check_int(s, "p", 1, MAX_OID - 1)
    check_int(s, "v", 0, MAX_COUNTER)
    if not isinstance(s["dead"], bool):
        raise MethodRefused("invalid", "dead must be a bool")
    _xattrs(s)
    e = s["e"]
    if isinstance(e, bytes):
        _bucket(e, None)
    elif isinstance(e, dict):
        for index, blob in e.items():
            if not _is_int(index, 0, BUCKETS - 1):
                raise MethodRefused("invalid", "an entry bucket's index is out of range")
            _bucket(blob, index)
    else:
        raise MethodRefused("invalid", "e must be a map of buckets")


def _file(s: dict[str, Any]) -> None:
    _keys(s, _FILE_KEYS, _FILE_OPTIONAL)
    _owner_mode(s, FILE_TYPES)
    _times(s)
    check_int(s, "rdev", 0, (1 << 64) - 1)
    check_int(s, "nl", 0, LINK_MAX)
    size = check_int(s, "size", 0, MAX_SIZE)
    check_int(s, "alloc", 0, MAX_SIZE)
    check_int(s, "d", 0, MAX_OID)
    check_int(s, "v", 0, MAX_COUNTER)
    for key, hi in (("bs", MAX_FILE_BLOCK), ("bt", MAX_BLOCK_TIME)):
        if key in s:
            check_int(s, key, 1 if key == "bs" else 0, hi)
    t = s["t"]
    if t is not None and (not isinstance(t, bytes) or not 0 < len(t) <= PATH_MAX + SEALED_EXTRA):
        raise MethodRefused("invalid", "t must be a symlink target")
    i = s.get("i")
    if i is not None and (not isinstance(i, bytes) or len(i) not in (size, size + SEALED_EXTRA)):
        raise MethodRefused("invalid", "inline content must be bytes of the size")
    if i is not None and size > INLINE_MAX:
        raise MethodRefused("invalid", "inline content too big")
    for key in ("w", "z"):
        if s.get(key) is not None:
            check_ranges(s, key)
    _xattrs(s)


def _lock_object(s: dict[str, Any]) -> None:
    _keys(s, frozenset({"k", "h"}))
    h = s["h"]
    if not isinstance(h, list) or len(h) > MAX_LOCKS:
        raise MethodRefused("invalid", "h must be a list of locks")
    for entry in h:
        if not isinstance(entry, list) or len(entry) != 8:
            raise MethodRefused("invalid", "a lock is not 8 integers")
        client, mount, domain, owner, start, end, kind, expiry = entry
        ok = _is_int(client, 0, MAX_OID) and _is_int(mount, 0, MAX_OWNER)
        ok = ok and _is_int(domain, POSIX, FLOCK) and _is_int(owner, 0, MAX_OWNER)
        ok = ok and _is_int(start, 0, OFFSET_MAX) and _is_int(end, 0, OFFSET_MAX) and start <= end
        if not ok or not _is_int(kind, READ, WRITE) or not _is_int(expiry, MIN_TIME, MAX_TIME):
            raise MethodRefused("invalid", "a lock is out of range")


def _snapshot_list(s: dict[str, Any]) -> None:
    _keys(s, frozenset({"k", "snaps"}))
    snaps = s["snaps"]
    if not isinstance(snaps, dict) or len(snaps) > MAX_SNAPSHOTS:
        raise MethodRefused("invalid", "snaps must be a map of snapshots")
    for name, moment in snaps.items():
        snapshot_name(name)
        if not _is_int(moment, MIN_TIME, MAX_TIME):
            raise MethodRefused("invalid", "a snapshot's moment is out of range")


def checked_state(oid: int, state: Any) -> dict[str, Any]:
    """``state`` fit to install as object ``oid``: leases stripped (module docstring),
    every field checked.

    Raises:
        MethodRefused: ``invalid``, naming what is wrong.
    """
    if not isinstance(state, dict):
        raise MethodRefused("invalid", "a state is a map")
    s = {k: v for k, v in state.items() if k not in LEASE_KEYS}
    kind = s.get("k")
    if is_lock_object(oid):
        if kind != "l":
            raise MethodRefused("invalid", "a lock object's state is a lock object's")
        s.pop("w", None)  # the waiters: they ask again
        _lock_object(s)
    elif oid == SNAPSHOTS:
        if kind != "s":
            raise MethodRefused("invalid", "the snapshot list's state is the snapshot list")
        _snapshot_list(s)
    elif kind == "d":
        _directory(s)
    elif kind == "f":
        _file(s)
        if isinstance(state.get("wl"), list) and len(state["wl"]) > 2:
            declared = {"wl": state["wl"], "z": state["wl"][2]}
            check_ranges(declared, "z")
            s["wl"] = state["wl"]
            settle_lease(s, {}, completed=False)  # what it declared is stale now
            del s["wl"]
    else:
        raise MethodRefused("invalid", "a state is a directory's or a file's")
    return s


# Methods ---------------------------------------------------------------------------------------


def fs_state(states: States, arg: Any) -> Any:
    """The object's raw state, packed (:func:`pack_state`), or None when it has none: what
    a client moving the object reads from the old generation (leases included, so it can
    wait for them)."""
    ((_, state),) = states.items()
    return None if state is None else pack_state(state)


def fs_export(states: States, arg: Any, applied: Any) -> Any:
    """What a move reads from the old generation: ``[state, table]``, the object's raw
    state packed (:func:`pack_state`) and its applied table's canonical bytes (who last
    updated it, with which ``seq`` and answer: ``qu/replica.py``), or None when it has no
    state.  ``fs.movein`` installs both, so an update that took effect in the old
    generation while its client saw the freeze refuse it answers from the table when the
    client runs it again in the new one, instead of running twice."""
    ((oid, state),) = states.items()
    return None if state is None else [pack_state(state), applied[oid]]


def fs_movein(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Install the packed state ``s`` as the one object, which must have none (refused
    ``exists`` otherwise: another client moved it first), checked and without leases
    (:func:`checked_state`), but the mover's own: the holder records of the calling
    client's mount (``lm``) that end within :data:`MAX_TERM` of the lease time ``lt``
    (which nodes check against their clocks, ``Method.lease_clock``).  ``a``, the applied
    table :func:`fs_export` read, becomes the new version's (``Method.installs_applied``;
    the replica checks its form).  A holder that moves
    an object it leases (its write-back after the freeze's recall, or any call) keeps
    answering from its lease, and the others' updates in the new generation recall it
    there, so nothing it buffered is passed by.  The answer: None."""
    a = check_arg(arg)
    ((oid, state),) = states.items()
    if state is not None:
        raise MethodRefused("exists", f"object {oid} is here already")
    raw = unpack_state(a.get("s"))
    try:
        moved = checked_state(oid, raw)
    except MethodRefused as e:  # a name check's own code (name-too-long): still malformed
        if e.code == "invalid":
            raise
        raise MethodRefused("invalid", f"state: {e.code}") from None
    if a.get(MOUNT) is not None and a.get("lt") is not None and moved.get("k") in ("d", "f"):
        me = (caller, check_int(a, MOUNT, 0, MAX_MOUNT))
        until = check_int(a, "lt", MIN_TIME, MAX_TIME) + MAX_TERM
        own = [
            h
            for h in holders(raw)
            if len(h) >= 3
            and who(h) == me
            and h[1] in (SHARED, EXCLUSIVE)
            and _is_int(h[2], 0, until)
        ]
        if own:
            moved["ls"] = own
    return {oid: moved}, None
