"""Collection and lazy verification on a PASIS storage node: synchronous steps over a ``KV``.

* :func:`collect_step` - delete versions below a floor (only below a version verified
  complete, L1540-1542).
* Lazy verification (node/rw_verifier.py, rw/lazy.py): :func:`verified_step` records a
  version verified complete (and flags it when this node hosts it), discards poisonous
  versions and collects what the retention policy and its thinning schedule let go
  (:func:`thin_step` leaves a record of each hole; ``GcPlan.revisit_ns``: when what is
  kept for its age may go); :func:`hosted_step` lists a block's versions;
  :func:`unverified_step` pages through the versions not yet verified (the verifier's
  backlog after a restart).

Every step is a deterministic function of the KV and its arguments, as the group-committing
store requires (node/store.py); the stored versions themselves are written by replica.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from bftfs import erasure
from bftfs.kv import KV
from bftfs.policy import RetentionPolicy
from bftfs.rw import quota
from bftfs.rw.gcplan import GcPlan, gc_plan
from bftfs.rw.messages import BLOCK_ID_LIMIT, BlockId
from bftfs.rw.replica import VERSIONS_END, drop_version, flagged, floor_of
from bftfs.rw.schema import (
    DB_FLAGS,
    DB_FLOOR,
    DB_THINNED,
    DB_VERIFIED,
    DB_VERSIONS,
    FLAG_VERIFIED,
    StoredVersion,
    block_end,
    block_prefix,
    split_key,
    version_key,
)
from bftfs.rw.timestamp import ZERO, Timestamp


@dataclass(frozen=True)
class Collected:
    """What :func:`collect_step` did."""

    deleted: int
    floor: Timestamp


def collect_step(kv: KV, block: int, floor: Timestamp) -> Collected:
    """Delete every version of ``block`` strictly below ``floor`` and record the floor.

    The floor only rises.  The caller guarantees ``floor`` is a version verified complete
    (the garbage-collection rule of seed L1540-1542); readers rely on it (classify.py).
    """
    old = floor_of(kv, block)
    if floor <= old:
        return Collected(0, old)
    doomed = list(kv.scan_keys(DB_VERSIONS, block_prefix(block), version_key(block, floor)))
    for key in doomed:
        drop_version(kv, key)
    # Holes below the floor need no record any more: the floor says more.
    for key in [k for k, _ in kv.scan(DB_THINNED, block_prefix(block), version_key(block, floor))]:
        kv.delete(DB_THINNED, key)
    kv.put(DB_FLOOR, block_prefix(block), floor.encode())
    return Collected(len(doomed), floor)


def thin_step(kv: KV, block: int, versions: Iterable[Timestamp]) -> int:
    """Delete ``versions`` of ``block`` (thinned by the retention schedule, all above the
    floor and below a version verified complete) and remember each in ``rw.thinned``, so
    that a read of the past at one of them learns it is gone (``rw.replica.read_step``)
    instead of taking an older version for it; how many were deleted."""
    deleted = 0
    for ts in versions:
        key = version_key(block, ts)
        if drop_version(kv, key):
            kv.put(DB_THINNED, key, b"")
            deleted += 1
    return deleted


def verified_of(kv: KV, block: int) -> Timestamp:
    """The block's verified mark (:data:`ZERO`: nothing verified yet)."""
    raw = kv.get(DB_VERIFIED, block_prefix(block))
    return ZERO if raw is None else Timestamp.decode(raw)


def hosted_step(kv: KV, block: int) -> list[Timestamp]:
    """Every version of ``block`` this node hosts, newest first."""
    return [
        split_key(k)[1]
        for k in kv.scan_keys(DB_VERSIONS, block_prefix(block), block_end(block), reverse=True)
    ]


@dataclass(frozen=True)
class Verified:
    """What :func:`verified_step` did to one block."""

    flagged: bool
    discarded: int
    collected: int
    floor: Timestamp
    #: Versions left, and how many of them are below the verified mark (kept by retention).
    kept: int
    retained: int
    #: When the youngest-kept of those retained for their age may go (node clock ns; 0:
    #: none is kept for its age): the verifier looks at the block again then.
    revisit_ns: int = 0
    #: The block is down to one empty version (given back), verified or not: it may be
    #: forgotten once the other nodes agree (rw/forget.py).
    given_back: bool = False
    #: Bytes of the versions kept below the verified mark (history: ``bftfs status``).
    history_bytes: int = 0
    #: The block's verified mark after the step.
    mark: Timestamp = ZERO


def verified_step(
    kv: KV,
    block: int,
    *,
    mark: Timestamp,
    flag: Timestamp | None,
    poisonous: Iterable[Timestamp],
    now_ns: int,
    retention: RetentionPolicy,
    pressure: bool = False,
    pins: Sequence[int] = (),
    owner_limit: int | None = None,
) -> Verified:
    """Record what verification learned about ``block``, then collect what may go.

    When the verified version is empty (a block given back), retention keeps one version
    instead of ``keep_versions``; and when a version below it is charged to an owner
    using ``owner_limit`` bytes or more here (a client near its quota), its age is not
    waited for either: removed contents go first when a client is short of room, so that
    removing files lets it write again within seconds (issue 31).  Live blocks keep their
    retention unless the whole node is short (``pressure``).

    ``mark``: a version at or above it is verified complete (the caller's own verification,
    or the NOTIFY floor rule); the block's mark only rises.  ``flag``: the version to set
    this node's verified flag on, if it hosts it (own verification, or ``b + 1`` identical
    NOTIFYs).  ``poisonous``: versions proven poisonous (deleted if hosted; none of them can
    be at or below a verified mark, which only ever names valid versions).  Then everything
    below the floor :func:`bftfs.rw.gcplan.gc_plan` gives is deleted (:func:`collect_step`),
    and the versions above it the thinning schedule lets go (:func:`thin_step`); ``pins``:
    snapshot moments whose versions stay.
    """
    old = verified_of(kv, block)
    if mark > old:
        kv.put(DB_VERIFIED, block_prefix(block), mark.encode())
    mark = max(mark, old)
    newly = False
    if flag is not None:
        key = version_key(block, flag)
        raw = kv.get(DB_VERSIONS, key)
        if raw is not None and not flagged(kv, key, raw):
            # In rw.flags, not in the value: that would rewrite the whole fragment.
            kv.put(DB_FLAGS, key, bytes([FLAG_VERIFIED]))
            newly = True
    empty = _empty_at(kv, block, mark)
    retention = _retention_below(retention, empty)
    discarded = 0
    for ts in set(poisonous):
        if ts > mark or ts == ZERO:
            discarded += drop_version(kv, version_key(block, ts))
    hosted = hosted_step(kv, block)
    if empty and not pressure and owner_limit is not None:
        pressure = _owner_pressed(kv, block, [ts for ts in hosted if ts < mark], owner_limit)
    collected = Collected(0, floor_of(kv, block))
    plan = GcPlan(ZERO)
    if mark > ZERO:
        plan = _plan(kv, block, mark, hosted, now_ns, retention, pressure, pins)
        collected = collect_step(kv, block, plan.floor)
        collected = Collected(
            collected.deleted + thin_step(kv, block, plan.thinned), collected.floor
        )
    left = len(hosted) - collected.deleted
    below = [ts for ts in hosted if collected.floor <= ts < mark and ts not in plan.thinned]
    revisit = 0 if pressure else plan.revisit_ns
    return Verified(
        newly,
        discarded,
        collected.deleted,
        collected.floor,
        left,
        len(below),
        revisit,
        # Verified or not: a version caught up as the others forgot the block is never
        # verified here (nothing left to read), and is forgotten all the same (forget.py).
        given_back=left == 1 and _empty_at(kv, block, hosted[0]),
        history_bytes=_bytes_of(kv, block, below),
        mark=mark,
    )


def _bytes_of(kv: KV, block: int, versions: Iterable[Timestamp]) -> int:
    """What ``versions`` of ``block`` take in the store (keys and values)."""
    total = 0
    for ts in versions:
        key = version_key(block, ts)
        raw = kv.get(DB_VERSIONS, key)
        if raw is not None:
            total += len(key) + len(raw)
    return total


def _owner_pressed(kv: KV, block: int, versions: Iterable[Timestamp], limit: int) -> bool:
    """Whether one of ``versions`` of ``block`` is charged to an owner that uses ``limit``
    bytes or more on this node (block versions and Q/U records, :func:`quota.used`)."""
    for ts in versions:
        owner = quota.owner_of(kv, version_key(block, ts))
        if owner is not None and quota.used(kv, owner) >= limit:
            return True
    return False


def _empty_at(kv: KV, block: int, mark: Timestamp) -> bool:
    """Whether the block's version at ``mark`` is stored here and empty (a file's contents
    given back, fs/files/reclaim.py)."""
    if mark == ZERO:
        return False
    raw = kv.get(DB_VERSIONS, version_key(block, mark))
    return raw is not None and erasure.cc_length(StoredVersion.decode(raw).cross_checksum) == 0


def _retention_below(retention: RetentionPolicy, empty: bool) -> RetentionPolicy:
    """The retention of what lies below a verified version: an empty one on top is a
    file's contents given back, and only one version is kept whatever its age; what the
    schedule keeps of the contents before stays (a removed file is restored from it)."""
    return replace(retention, keep_versions=1) if empty else retention


def _plan(
    kv: KV,
    block: int,
    mark: Timestamp,
    hosted: Sequence[Timestamp],
    now_ns: int,
    retention: RetentionPolicy,
    pressure: bool,
    pins: Sequence[int],
) -> GcPlan:
    """:func:`gc_plan` of ``block`` with each hosted version's emptiness read from the store
    (an empty version never stands for its period: ``thinning.kept_until``)."""
    solid = [not _empty_at(kv, block, ts) for ts in hosted]
    return gc_plan(mark, hosted, now_ns, retention, pressure=pressure, pins=pins, solid=solid)


@dataclass(frozen=True)
class Unverified:
    """One page of :func:`unverified_step`: ``(block, version)`` pairs, the age revisits
    due (``(block, node clock ns)``), and where to go on."""

    versions: tuple[tuple[BlockId, Timestamp], ...]
    after: BlockId | None
    revisits: tuple[tuple[BlockId, int], ...] = ()
    #: Bytes of each block's versions below its verified mark (history), where any.
    history: tuple[tuple[BlockId, int], ...] = ()


def unverified_step(
    kv: KV,
    after: int | None,
    limit: int,
    *,
    retention: RetentionPolicy | None = None,
    pins: Sequence[int] = (),
) -> Unverified:
    """Versions above their block's verified mark without the verified flag, for up to
    ``limit`` blocks above ``after`` (the backlog a restarted verifier starts from).

    With ``retention``, also when each block's versions kept below its mark for their age
    may go (``GcPlan.revisit_ns``, as :func:`verified_step` computed it before the restart):
    a restarted verifier's revisits, which live in memory (issue 31 item 14)."""
    out: list[tuple[BlockId, Timestamp]] = []
    revisits: list[tuple[BlockId, int]] = []
    history: list[tuple[BlockId, int]] = []
    start = 0 if after is None else after + 1
    last: BlockId | None = None
    for _ in range(limit):
        if start >= BLOCK_ID_LIMIT:
            break
        first = next(kv.scan_keys(DB_VERSIONS, block_prefix(start), VERSIONS_END), None)
        if first is None:
            break
        block = split_key(first)[0]
        mark = verified_of(kv, block)
        hosted: list[Timestamp] = []
        below = 0
        for key, value in kv.scan(DB_VERSIONS, block_prefix(block), block_end(block)):
            ts = split_key(key)[1]
            hosted.append(ts)
            if ts < mark:
                below += len(key) + len(value)
            if ts > mark and not flagged(kv, key, value):
                out.append((BlockId(block), ts))
        if below:
            history.append((BlockId(block), below))
        if retention is not None and mark > ZERO and len(hosted) > 1:
            hosted.reverse()
            kept = _retention_below(retention, _empty_at(kv, block, mark))
            # now 0: every revisit the versions' own times call for; a past one is done
            # at once.
            due = _plan(kv, block, mark, hosted, 0, kept, False, pins).revisit_ns
            if due:
                revisits.append((BlockId(block), due))
        last = BlockId(block)
        start = block + 1
    return Unverified(tuple(out), last, tuple(revisits), tuple(history))
