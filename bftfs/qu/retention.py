"""Version retention at one Q/U server (seed L2630-2634; docs/qu.md decision 9): which
stored versions :class:`bftfs.qu.serverconfig.Retention` lets go, deleted after each
accepted update (:func:`retain`, from ``replica.py`` and ``adoption.py``) and, for versions
kept only for their age, later by the node's pruner (:func:`prune_step`,
``node/qu_pruner.py``); and, inside history's horizon, what the thinning schedule lets go
(:func:`thin_step`, issue 36), each thinned version leaving a record a chain walk steps over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from bftfs import thinning
from bftfs.kv import KV
from bftfs.qu import blobs, schema
from bftfs.qu.canon import unpack
from bftfs.qu.history import ReplicaHistory, is_initial
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import TIMESTAMP_SIZE, ZERO, Timestamp


def retain(
    kv: KV,
    cfg: ReplicaConfig,
    oid: int,
    rh: ReplicaHistory,
    now_ns: int,
    *,
    finished: bool = False,
) -> int:
    """Delete the versions :class:`~bftfs.qu.serverconfig.Retention` lets go, oldest first,
    stopping at the first one it keeps (versions are stored in logical-time order, which is
    also, near enough, the order they were stored in), so an update costs ``O(k)`` plus what
    it deletes.  ``finished``: the object's newest state is finished (keep one version)."""
    keep = cfg.retention.keep_last
    if keep is None:
        return 0
    if finished:
        keep = 1
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    newest = schema.newest_times(kv, oid, keep)
    if len(newest) < keep:
        return 0
    floor = min(floor, newest[-1])
    young_ns = now_ns - int(cfg.retention.keep_seconds * 1e9)
    deleted = 0
    pins: Sequence[int] | None = None
    while True:
        two = schema.oldest_versions(kv, oid, 2)
        if not two:
            break
        lt, stored_ns = two[0]
        if lt >= floor or stored_ns > young_ns:
            break
        if cfg.retention.pins is not None:
            if pins is None:
                pins = cfg.retention.pins(kv)  # read only when something would go
            after = two[1][1] if len(two) > 1 else None
            if any(stored_ns <= t and (after is None or after > t) for t in pins):
                break  # the version current at a snapshot
        v = schema.load_version(kv, oid, lt)
        if v is None:
            break
        schema.delete_version(kv, oid, v)
        deleted += 1
    return deleted


def prune_step(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> int:
    """Delete the versions of ``oid`` :class:`Retention` lets go now (versions kept for
    their age go once old, even if the object is never updated again: a removed file's,
    which keeps only its newest version once its state is finished); how many were
    deleted.  Only here is the newest state looked at (an update does not pay for it)."""
    rh, _auth = schema.load_rh(kv, oid)
    if is_initial(rh):
        return 0
    finished = False
    latest = schema.newest_times(kv, oid, 1)
    if latest:
        v = schema.load_version(kv, oid, latest[0])
        finished = v is not None and v.state is not None and cfg.registry.finished(unpack(v.state))
    deleted = retain(kv, cfg, oid, rh, now_ns, finished=finished)
    if deleted:
        schema.delete_thinned_below(kv, oid, now_ns - int(cfg.retention.keep_seconds * 1e9))
    return deleted


#: Versions in a row found without a stored request after which
#: :func:`drop_requests` stops (older ones lost theirs at an earlier look; a version
#: obtained by object sync never had one here).
MAX_MISSES = 8


def drop_requests(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> int:
    """Delete the stored requests of ``oid``'s versions older than ``request_seconds`` and
    below every candidate of its replica history and their conditioned-on versions (what
    repair and link proofs may still fetch, as :func:`retain` keeps), newest first until
    :data:`MAX_MISSES` in a row are gone already; how many it deleted.

    History keeps Q/U versions to its horizon (days), but a version's request, about 2.4 KB
    of its 3, only serves inline repair and link proofs, which ask within ``keep_seconds``:
    kept as long as the version, requests were three quarters of a week's Q/U history
    (docs/history.md).  A request belongs to its first object (:func:`schema.delete_version`
    deletes it with that object's version), so only that object's look drops it."""
    secs = cfg.retention.request_seconds
    if secs is None:
        return 0
    rh, _auth = schema.load_rh(kv, oid)
    if is_initial(rh):
        return 0
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    old_ns = now_ns - int(secs * 1e9)
    dropped = misses = 0
    for lt, stored_ns, first in schema.versions_newest_first(kv, oid):
        if lt >= floor or stored_ns > old_ns or first != oid:
            continue
        if schema.delete_request(kv, lt):
            dropped += 1
            misses = 0
        else:
            misses += 1
            if misses >= MAX_MISSES:
                break
    return dropped


@dataclass(frozen=True)
class Thinned:
    """What :func:`thin_step` did to one object."""

    #: Versions thinned (deleted, a record of each left in ``qu.thin``).
    thinned: int = 0
    #: Versions deleted without a record: barriers and candidates off the chain.
    dropped: int = 0
    #: Thinned records deleted (older than every version still stored).
    records: int = 0
    #: When a version kept now may go (node clock ns; None: only at a later update).
    revisit_ns: int | None = None
    #: Versions and thinned records the step read (its cost grows with them).
    examined: int = 0


def _chain(
    heads: Sequence[tuple[Timestamp, str, Timestamp | None, int]],
    records: dict[Timestamp, tuple[Timestamp, int]],
    floor: Timestamp,
) -> tuple[set[Timestamp], Timestamp]:
    """The stored versions on the conditioned-on chains of the versions at or above
    ``floor`` (the replica history's candidates and their conditioned-on versions), and
    the highest timestamp where a chain could not be followed here (a version synced
    without its ``lt_co``, or one this server lacks): below it, any version may be on the
    chain."""
    stored = {lt: (kind, co) for lt, kind, co, _ in heads}
    reached: set[Timestamp] = set()
    broken = ZERO
    todo = [lt for lt, kind, _, _ in heads if lt >= floor and kind != schema.BARRIER]
    while todo:
        lt = todo.pop()
        if lt in reached or lt == ZERO:
            continue
        co: Timestamp | None
        if lt in stored:
            kind, co = stored[lt]
            if kind == schema.BARRIER:
                continue
        elif lt in records:
            co = records[lt][0]
        else:
            broken = max(broken, lt)
            continue
        reached.add(lt)
        if co is None:
            broken = max(broken, lt)
        else:
            todo.append(co)
    return reached, broken


def thin_step(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> Thinned:
    """Thin ``oid``'s history to :attr:`Retention.schedule` (``bftfs/thinning.py``, by this
    server's ``stored_ns``), in the caller's one transaction.

    Kept whatever the schedule says: versions at or above the replica history's floor
    (candidates and what they condition on, which classification, repair and object sync
    need), the newest ``keep_last``, versions younger than the schedule's ``keep_seconds``
    (what in-flight repair and link proofs fetch), versions synced without their
    ``lt_co``, and of each snapshot moment the chain version current at it (a snapshot
    pins its moment only).  A chain version the schedule lets go is **thinned**: deleted,
    with a record of its ``lt_co`` and ``stored_ns`` that ``qu.versions`` reports (the
    digest :data:`bftfs.qu.past.THINNED`), so a history read steps over it to older kept
    versions and answers "reclaimed" for the moments it stood for.  Barriers and candidates
    off the chain below the floor are deleted as they age past ``keep_seconds`` (no read
    reaches them); records older than every version still stored go at the horizon.
    """
    schedule = cfg.retention.schedule
    keep = cfg.retention.keep_last
    if schedule is None or keep is None:
        return Thinned()
    rh, _auth = schema.load_rh(kv, oid)
    if is_initial(rh):
        return Thinned()
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    heads = schema.version_heads(kv, oid)
    records = {lt: (co, t) for lt, co, t in schema.thinned_records(kv, oid)}
    reached, broken = _chain(heads, records, floor)
    newest = {lt for lt, _, _, _ in heads[-keep:]}
    young_ns = now_ns - schedule.keep_ns
    history = [
        (lt, co, t)
        for lt, kind, co, t in heads
        if kind != schema.BARRIER and (lt in reached or lt < broken)
    ]
    until = thinning.kept_until([t for _, _, t in history], schedule)
    pinned: set[Timestamp] = set()
    for moment in cfg.retention.pinned(kv) if history else ():
        current = [lt for lt, _, t in history if 0 < t <= moment]
        if current:
            pinned.add(current[-1])
    on_history = {lt for lt, _, _ in history}
    thinned = dropped = 0
    revisit: int | None = None
    for (lt, co, t), kept_until in zip(history, until, strict=True):
        if lt >= floor or lt in newest or lt in pinned or t == 0 or co is None:
            continue
        if now_ns < kept_until:
            revisit = kept_until if revisit is None else min(revisit, kept_until)
            continue
        v = schema.load_version(kv, oid, lt)
        if v is None:
            continue
        schema.delete_version(kv, oid, v)
        schema.store_thinned(kv, oid, lt, co, t)
        thinned += 1
    for lt, _kind, _co, t in heads:
        if lt >= floor or lt in newest or lt in on_history or t > young_ns:
            continue
        v = schema.load_version(kv, oid, lt)
        if v is not None:
            schema.delete_version(kv, oid, v)
            dropped += 1
    horizon = now_ns - int(cfg.retention.keep_seconds * 1e9)
    gone = schema.delete_thinned_below(kv, oid, horizon) if records else 0
    return Thinned(thinned, dropped, gone, revisit, examined=len(heads) + len(records))


#: When the pruner looks at each object's history next (``node/qu_pruner.py``: dropping
#: old requests, thinning): 8 bytes of node-clock ns by object id.  Kept in the store so
#: that a restarted node still thins what the schedule lets go later (a version kept for
#: its hour or day), not only at the object's next update, which a removed file's or an
#: idle directory's never gets.  Never charged (16 bytes per object with a look pending).
DB_REVISIT = "qu.revisit"


def set_revisit(kv: KV, oid: int, due_ns: int | None) -> None:
    """Record when ``oid`` is looked at next (None: no look pending)."""
    if due_ns is None:
        kv.delete(DB_REVISIT, schema.oid_key(oid))
    else:
        kv.put(DB_REVISIT, schema.oid_key(oid), due_ns.to_bytes(8, "big"))


def load_revisits(kv: KV) -> list[tuple[int, int]]:
    """``(due ns, oid)`` of every look pending (a malformed record is skipped)."""
    out = []
    for key, value in kv.scan(DB_REVISIT, schema.oid_key(0), schema.OID_END):
        if len(key) == 8 and len(value) == 8:
            out.append((int.from_bytes(value, "big"), int.from_bytes(key, "big")))
    return out


@dataclass
class HistorySpace:
    """What one server's store holds of Q/U history (``bftfs status``): every stored
    version but each object's newest (key and record), the large strings of their states
    that only they use (``qu.blob``: an older version of a rewritten small file), and the
    records thinned versions left."""

    older_versions: int = 0
    older_bytes: int = 0
    thinned: int = 0
    thinned_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.older_bytes + self.thinned_bytes

    def add(self, other: HistorySpace) -> None:
        self.older_versions += other.older_versions
        self.older_bytes += other.older_bytes
        self.thinned += other.thinned
        self.thinned_bytes += other.thinned_bytes


def _blob_refs(kv: KV, value: bytes) -> set[bytes]:
    """The ``qu.blob`` hashes a stored version record reaches: its references and those of
    the nested skeletons they name, in turn (none if unreadable)."""
    try:
        todo = schema.record_references(value)
    except schema.SchemaError:
        return set()
    out: set[bytes] = set()
    while todo:
        entry = todo.pop()
        h = blobs.ref_hash(entry)
        if h in out:
            continue
        out.add(h)
        if blobs.is_nested(entry):
            nested = kv.get(schema.DB_BLOB, h)
            if nested is not None:
                with contextlib.suppress(blobs.BlobError):  # unreadable: counted as a leaf
                    todo += blobs.references(bytes(nested))
    return out


#: Blob hashes a measure remembers as counted (~100 bytes each) before it starts over.
MAX_COUNTED = 1 << 20


@dataclass
class HistoryCursor:
    """Where a paged :func:`history_space` walk goes on: after version key ``after`` (of
    ``qu.ver``, or of ``qu.thin`` once ``thin``), with the key and the blobs of the newest
    version of the object it stopped in, and the blobs counted so far (a batch's answer
    is one blob every object of the batch refers to: counted once)."""

    after: bytes = b""
    thin: bool = False
    oid: bytes = b""
    newest: bytes = b""
    live: set[bytes] = field(default_factory=set)
    counted: set[bytes] = field(default_factory=set)


def history_space(
    kv: KV, cursor: HistoryCursor | None, limit: int
) -> tuple[HistorySpace, HistoryCursor | None]:
    """:class:`HistorySpace` of up to ``limit`` stored records after ``cursor`` (None: from
    the start), and the cursor to go on from (None: that was the last page).

    Paged by records, not objects: one directory of a busy mount keeps thousands of
    versions inside the retention window, and a page of 512 objects took up to 1.2 s of
    a node's loop (``node/qu_space.py``).  A page may stop inside an object: the cursor
    carries what its newest version reaches and what was counted, so each blob that older
    versions alone reach counts once whatever the pages (up to :data:`MAX_COUNTED` blobs
    remembered).  A large string an older version shares with another object's newest is counted as
    history (content copied between files: rare)."""
    cur = cursor if cursor is not None else HistoryCursor()
    out = HistorySpace()
    seen = 0
    if not cur.thin:
        for key, value in kv.scan(schema.DB_VER, cur.after + b"\x00", schema.OID_END):
            if seen >= limit:
                return out, cur
            seen += 1
            cur.after = bytes(key)
            if len(key) != 8 + TIMESTAMP_SIZE:
                continue
            if key[:8] != cur.oid:
                cur.oid = bytes(key[:8])
                cur.newest, record = _newest(kv, cur.oid)
                cur.live = _blob_refs(kv, record) if record else set()
                if len(cur.counted) > MAX_COUNTED:
                    cur.counted = set()
            if key == cur.newest:
                continue
            out.older_versions += 1
            out.older_bytes += len(key) + len(value)
            for h in _blob_refs(kv, value) - cur.live - cur.counted:
                cur.counted.add(h)
                blob = kv.get(schema.DB_BLOB, h)
                out.older_bytes += len(h) + (len(blob) if blob is not None else 0)
        cur.thin, cur.after = True, b""
    for key, value in kv.scan(schema.DB_THIN, cur.after + b"\x00", schema.OID_END):
        if seen >= limit:
            return out, cur
        seen += 1
        cur.after = bytes(key)
        out.thinned += 1
        out.thinned_bytes += len(key) + len(value)
    return out, None


def _newest(kv: KV, oid: bytes) -> tuple[bytes, bytes]:
    """The key and record of object ``oid``'s (8 bytes) newest stored version."""
    hi = oid + b"\xff" * (TIMESTAMP_SIZE + 1)
    for key, value in kv.scan(schema.DB_VER, oid, hi, reverse=True):
        if len(key) == 8 + TIMESTAMP_SIZE:
            return bytes(key), bytes(value)
    return b"", b""
