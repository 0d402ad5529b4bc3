"""The ``fs`` object type's data updates: ``write`` (a flush's size update), ``lock`` (take
the write lease, raise the reservation) and ``unlock`` (give the lease up).

File data layout (docs/fs-api.md): blocks ``block_id(d, i)``; ``d`` is fresh at create and at
truncation to zero.  ``alloc`` is a reservation mark: no block at or beyond it has ever been
written under ``d``, so it reads as a hole; bytes in ``[size, alloc)`` may hold data of a
write whose size update never came (a crashed client) or that a truncation cut off, which a
client extending the file overwrites with zeros first: only where the object's stale ranges
``z`` and the running lease's declaration say (:func:`add_stale`), not the whole gap.
A client takes the file's write lease and raises ``alloc``
(``fs.lock``) *before* writing blocks and sends ``fs.write`` (size, mtime; it ends the
lease) *after* its blocks are complete: blocks are whole-block versions, so two clients
writing one block at once would each replace the other's bytes (see :func:`fs_lock`).

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
(bytes, ``len(i) == size``, or ``size + SEALED_EXTRA`` when a mount sealed it, docs/
confidentiality.md; the size at most :data:`INLINE_MAX`); its blocks are then ignored.  Such
a file costs one Q/U update per flush and no PASIS round, and its content is replicated on
every server instead of erasure-coded (``n`` copies instead of ``n/m`` block equivalents, and
every version of the object keeps a copy).  ``fs.open`` answers the stat with the content.
A size change of an inline file must carry the new content (``i``) or say the content is
now in blocks (``blocks``), so servers never hold a size that disagrees with ``i``; leaving
inline, the client first writes block 0 with the old content and clears the gap as usual.
"""

from __future__ import annotations

import stat as st
from typing import Any

from bftfs.fsobjects.attributes import raise_block_time
from bftfs.fsobjects.limits import (
    MAX_COUNTER,
    MAX_FILE_BLOCK,
    MAX_ID,
    MAX_LEASE,
    MAX_OID,
    MAX_SIZE,
    MAX_TIME,
)
from bftfs.fsobjects.ranges import (
    add_stale,
    clip_stale,
    lease_declaration,
    leaving_inline,
    merge_extents,
    not_locked_by_other,
    settle_lease,
    written_ranges,
)
from bftfs.fsobjects.state import (
    check_arg,
    check_inline,
    check_int,
    check_opt_int,
    check_opt_time,
    check_time,
    file_state,
    stat_of,
)
from bftfs.qu.objects import MethodRefused, States


def _unchanged(f: dict[str, Any], a: dict[str, Any]) -> None:
    """Refuse as ``stale`` unless the file still has the client's data id (and version
    counter ``v``, when given): the client decided what to write from those."""
    if check_int(a, "d", 1, MAX_OID) != f["d"]:
        raise MethodRefused("stale", "data id changed")
    v = check_opt_int(a, "v", 0, MAX_COUNTER)
    if v is not None and v != f["v"]:
        raise MethodRefused("stale", "file changed")


def fs_write(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """After blocks up to ``end`` are complete: size = max(size, end), mtime, and optionally a
    larger reservation for the next writes.  Refused as ``stale`` when the file's data id
    changed since the client wrote its blocks (another client truncated it to zero).

    With ``i`` the write is the whole inline content instead (size = ``end`` = its length;
    the version counter ``v`` is then required); ``blocks`` moves an inline file to blocks.
    ``w``: the byte ranges this write stored in blocks (see :func:`written_ranges`).
    """
    a = check_arg(arg)
    ((oid, state),) = states.items()
    f = file_state(state)
    if not st.S_ISREG(f["mode"]):
        raise MethodRefused("invalid", "not a regular file")
    _unchanged(f, a)
    not_locked_by_other(f, a)
    end = check_int(a, "end", 0, MAX_SIZE)
    inline = check_inline(a, end)
    settle_lease(f, a, completed=True)
    if inline is not None:
        if a.get("v") is None:
            raise MethodRefused("invalid", "an inline write needs the version it replaces")
        f["size"] = end
        if f.get("w") is not None:
            if f.get("i") is None:
                add_stale(f, f["w"], 0)  # the blocks are unused from now on
            f["w"] = []
    else:
        if f.get("i") is not None and not a.get("blocks"):
            raise MethodRefused("invalid", "an inline file's size changes with its content")
        _record_block_size(f, a)  # the cluster's size, chosen at a lock-free first flush
        if end > f["alloc"]:
            raise MethodRefused("invalid", "blocks beyond the reservation")
        if f.get("i") is not None:
            f["w"] = leaving_inline(f)
        f["w"] = written_ranges(a, f)
        f["size"] = max(f["size"], end)
        clip_stale(f, f["size"])  # the writer cleared them up to its end
    f["i"] = inline
    f["alloc"] = max(f["alloc"], check_opt_int(a, "alloc", 0, MAX_SIZE) or 0)
    raise_block_time(f, a)
    mtime = check_time(a, "mtime")
    f["mt"] = mtime
    f["ct"] = max(f["ct"], mtime)
    _written_back_attrs(f, a.get("attrs"))
    if f.get("wl") is not None and f["wl"][0] == check_opt_int(a, "tok", 1, MAX_OID):
        f["wl"] = None  # the writer's blocks are complete: its lease ends with its size update
    if "keep" in a:
        _keep_lease(f, a, inline)
    f["v"] += 1
    return {oid: f}, stat_of(f)


def _keep_lease(f: dict[str, Any], a: dict[str, Any], inline: Any) -> None:
    """A block write's ``keep``: its writer goes on holding the lease for ``keep`` ns,
    declaring (``z``) where its next blocks will lie, so a sequential writer's next flush
    needs no ``fs.lock`` round (issue 34).  What the lease lets it do is what ``fs.lock``
    taken right after this write would: the write's ``v`` was checked, nobody else holds
    the lease (:func:`not_locked_by_other`), and the declaration becomes stale if the
    holder never completes (:func:`settle_lease`), as a locked flush's does."""
    if inline is not None or a.get("v") is None:
        raise MethodRefused("invalid", "only a block write of a known version keeps a lease")
    now = check_time(a)
    f["wl"] = [
        check_int(a, "tok", 1, MAX_OID),
        min(now + check_int(a, "keep", 1, MAX_LEASE), MAX_TIME),
    ]
    if f.get("z") is not None:
        f["wl"].append(lease_declaration(f, a))


def fs_write_many(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """The inline contents of several small files in one update (write-back of the files a
    mount holds, ``fs/writeback/held.py``): exactly what each one's ``fs.write`` with ``i``, one
    after another, would leave, or nothing (any one refused refuses them all).

    Objects: each file once.  Argument: ``now`` (the latest time of the items: the one
    nodes check against their clocks) and ``files``, each an inline ``fs.write`` argument
    with its object ``o`` and a ``now`` no later than the batch's (no blocks: ``bt`` and
    ``blocks`` are refused).  Answer: the files' stats in the order of ``files``.
    """
    a = check_arg(arg)
    latest = check_time(a)
    files = a.get("files")
    if not isinstance(files, list) or not files:
        raise MethodRefused("invalid", "fs.writemany needs files")
    work = dict(states)
    named: set[int] = set()
    stats = []
    for item in files:
        f = check_arg(item)
        oid = check_int(f, "o", 1, MAX_OID)
        if oid not in states or oid in named:
            raise MethodRefused("invalid", "fs.writemany names an object twice or not at all")
        if (
            check_time(f) > latest
            or "bt" in f
            or f.get("blocks")
            or not isinstance(f.get("i"), bytes)
        ):
            raise MethodRefused("invalid", "an item of fs.writemany is not an inline write")
        named.add(oid)
        made, fst = fs_write({oid: work[oid]}, f)
        work.update(made)
        stats.append(fst)
    if len(named) != len(states):
        raise MethodRefused("invalid", "fs.writemany: every object is one it writes")
    return work, stats


def _written_back_attrs(f: dict[str, Any], attrs: Any) -> None:
    """chmod/chown/atime changes a client held back while writing (sent with the write)."""
    if attrs is None:
        return
    a = check_arg(attrs)
    if set(a) - {"mode", "uid", "gid", "atime"}:
        raise MethodRefused("invalid", "unknown attribute")
    mode = check_opt_int(a, "mode", 0, 0o177777)
    if mode is not None:
        f["mode"] = (f["mode"] & ~0o7777) | (mode & 0o7777)
    for key, name in (("uid", "uid"), ("gid", "gid")):
        v = check_opt_int(a, key, 0, MAX_ID)
        if v is not None:
            f[name] = v
    atime = check_opt_time(a, "atime")
    if atime is not None:
        f["at"] = atime


def fs_lock(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Take the file's write lease before writing blocks, and raise the reservation mark.

    Blocks are whole-block PASIS versions: two clients writing the same block at once would
    each replace the other's bytes in it, and the loser's version could stay the latest even
    though its size update is then refused.  So a client writes blocks only while it holds
    the lease: token ``tok`` until ``now + lease`` (client clocks, ns; methods read none),
    taken only on the version ``v`` it computed its blocks from.  ``fs.write`` with the
    token releases it; ``fs.unlock`` gives it up; an expired lease (a crashed writer) is
    free.  Refused ``locked`` while another client's lease runs, ``stale`` when the file
    changed since ``v``.

    With ``any`` (true) the lease is *claimed*: taken on whatever version the file has,
    declaring, reserving and recording nothing.  A writer whose flushes keep finding the
    file changed by another client's (one appending and syncing without a pause)
    claims it, reads the file, and takes it again on that version, which no other
    writer can change meanwhile: otherwise each of its attempts found a newer version
    than the one it read, until it gave up (EIO).
    """
    a = check_arg(arg)
    ((oid, state),) = states.items()
    f = file_state(state)
    if not st.S_ISREG(f["mode"]):
        raise MethodRefused("invalid", "not a regular file")
    claim = a.get("any", False)
    if not isinstance(claim, bool):
        raise MethodRefused("invalid", "any must be a boolean")
    if claim:
        return _claim(oid, f, a)
    _unchanged(f, a)
    if a.get("v") is None:
        raise MethodRefused("invalid", "a lock needs the version it was computed from")
    not_locked_by_other(f, a)
    now = check_time(a)
    tok = check_int(a, "tok", 1, MAX_OID)
    _record_block_size(f, a)
    carried = _lease_taken(f, a, tok, now)
    f["alloc"] = max(f["alloc"], check_opt_int(a, "alloc", 0, MAX_SIZE) or 0)
    return _lease_declared(oid, f, carried + lease_declaration(f, a))


def _claim(oid: int, f: dict[str, Any], a: dict[str, Any]) -> tuple[dict[int, Any], Any]:
    """``fs.lock`` with ``any``: the caller's write lease on the file as it is (see
    :func:`fs_lock`); what its own running lease declared stays declared."""
    not_locked_by_other(f, a)
    now = check_time(a)
    tok = check_int(a, "tok", 1, MAX_OID)
    return _lease_declared(oid, f, _lease_taken(f, a, tok, now))


def _lease_taken(f: dict[str, Any], a: dict[str, Any], tok: int, now: int) -> list[list[int]]:
    """Give ``tok`` the file's write lease until ``now`` plus the argument's ``lease``: what
    its own running lease declared is returned (carried over), another lease's
    declaration becomes stale (its blocks may be there)."""
    carried = _continued_declaration(f, tok, now)
    settle_lease(f, a, completed=False)
    f["wl"] = [tok, min(now + check_int(a, "lease", 1, MAX_LEASE), MAX_TIME)]
    return carried


def _lease_declared(
    oid: int, f: dict[str, Any], declared: list[list[int]]
) -> tuple[dict[int, Any], Any]:
    """The new version of a file whose lease was just taken, the lease declaring
    ``declared`` (recorded only on a file that keeps stale ranges)."""
    if f.get("z") is not None:
        f["wl"].append(merge_extents(declared))
    f["v"] += 1
    return {oid: f}, stat_of(f)


def _continued_declaration(f: dict[str, Any], tok: int, now: int) -> list[list[int]]:
    """What the caller's own running lease declared, taken over by the lease it takes
    now (and taken out of the old one, so it does not become stale): while the lease
    runs nobody else changes the file, so whatever the holder wrote under it lies below
    the size its completing ``fs.write`` sets, or is cut off by its own truncation
    (which moves the declaration to the stale ranges).  A create's lease declares
    nothing, so there is nothing to take over after a create."""
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
    bs = check_opt_int(a, "bs", 1, MAX_FILE_BLOCK)
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


def fs_unlock(states: States, arg: Any) -> tuple[dict[int, Any], Any]:
    """Give up this client's write lease (a flush that failed after taking it)."""
    a = check_arg(arg)
    ((oid, state),) = states.items()
    f = file_state(state)
    lease = f.get("wl")
    if lease is not None and lease[0] == check_int(a, "tok", 1, MAX_OID):
        settle_lease(f, a, completed=False)  # what it wrote before giving up stays
        f["wl"] = None
        f["v"] += 1
    return {oid: f}, stat_of(f)
