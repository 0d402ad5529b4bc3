"""Storage-node side of the PASIS read/write protocol: synchronous steps over a ``KV``.

The seed omits storage-node pseudo-code "due to its simplicity" (L915-924); this module is
that code, following the interface of seed section 3.4.3.1 and the implementation notes of
section 3.5.1.1 (L1147-1165):

* :func:`check_write` - storage-node verification (L883-887, VALIDATE of Figure 3.2): the
  cross checksum must hash to the timestamp's verifier and this node's fragment must hash to
  its entry.  A node that executes only such writes cannot be made to look Byzantine by a
  Byzantine client.  It also refuses a time more than ``max_ahead_ns`` beyond the node's
  clock (timestamp.py explains the bound).  It is pure and runs *before* the write
  transaction, so a refused write never costs a group-commit slot.
* :func:`store_write` - executes a checked write inside the write transaction.  A version
  that is already stored (a repair, a resend, a duplicate) is an idempotent success
  (L1092-1094); one below the garbage-collection floor is acknowledged and not stored (its
  block has a newer verified version already, so storing it could only waste space).  A
  new version is charged to its owner (quota.py); :func:`store_charged` also refuses one
  that would take its owner past a quota.
* :func:`is_repair`, :func:`repair_proven` - a write at another writer's timestamp is a
  repair, taken only when ``b + 1`` other nodes host that version, and charged to its
  writer (node/rw_server.py).
* :func:`fresh_conflict` - the extra check of a one-round write (not in the seed): refuse
  unless the timestamp is above every hosted version.
* :func:`time_step` - TIME_REQUEST: the greatest hosted timestamp.
* :func:`read_step` - READ_LATEST / READ_PREV (strictly below, or at-or-below for exact
  fetches, spec H.2), with or without the fragment (read witnesses, L1172-1176), and always
  with a bounded history of older versions (L1155-1158) and the node's floor.
* :func:`list_step` - LIST (not in the seed): the blocks hosted above a cursor with their
  latest timestamps, one page at a time (the catch-up of a restarted node, node/rw_catchup.py).
* :func:`collect_step` - delete versions below a floor (only below a version verified
  complete, L1540-1542).
* Lazy verification (node/rw_verifier.py, rw/lazy.py): :func:`verified_step` records a
  version verified complete (and flags it when this node hosts it), discards poisonous
  versions and collects what the retention policy lets go; :func:`hosted_step` lists a
  block's versions; :func:`unverified_step` pages through the versions not yet verified
  (the verifier's backlog after a restart).

Every step is a deterministic function of the KV and its arguments, as the group-committing
store requires (node/store.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from bftfs import erasure
from bftfs.kv import KV
from bftfs.policy import RetentionPolicy
from bftfs.rw import quota
from bftfs.rw.lazy import gc_floor
from bftfs.rw.messages import (
    BLOCK_ID_LIMIT,
    BlockId,
    ListReply,
    ReadReply,
    ReadRequest,
    TimeReply,
    WriteReply,
    WriteRequest,
)
from bftfs.rw.schema import (
    DB_FLAGS,
    DB_FLOOR,
    DB_SCRUB,
    DB_VERIFIED,
    DB_VERSIONS,
    FLAG_VERIFIED,
    SchemaError,
    StoredVersion,
    block_end,
    block_prefix,
    split_key,
    version_key,
)
from bftfs.rw.timestamp import ZERO, Timestamp, plausible

#: Default number of timestamps in a reply's version history.
DEFAULT_HISTORY = 8


class WriteRefused(Exception):
    """A write the node will not store; ``code`` goes back to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def check_write(req: WriteRequest, *, node: int, n: int, now_ns: int, max_ahead_ns: int) -> None:
    """VALIDATE a write for this node, and bound its time.

    Raises:
        WriteRefused: ``bad-verifier``, ``bad-fragment`` or ``too-far-ahead`` (the bound is
            ``max_ahead_ns`` nanoseconds past this node's clock).
    """
    cc = req.cross_checksum
    if len(cc) != erasure.cross_checksum_size(n) or not 0 <= node < n:
        raise WriteRefused("bad-cross-checksum", f"cross checksum of {len(cc)} bytes for N={n}")
    if req.ts == ZERO:
        raise WriteRefused("bad-verifier", "the zero timestamp cannot be written")
    if not hmac.compare_digest(erasure.verifier_of(cc), req.ts.verifier):
        raise WriteRefused("bad-verifier", "cross checksum does not match the timestamp's verifier")
    if not erasure.fragment_matches(cc, node, req.fragment):
        raise WriteRefused("bad-fragment", f"fragment does not match cross-checksum entry {node}")
    if not plausible(req.ts.time, now_ns, max_ahead_ns):
        raise WriteRefused(
            "too-far-ahead",
            f"time {req.ts.time} is more than {max_ahead_ns} ns past this node's clock {now_ns}",
        )


@dataclass(frozen=True)
class ScrubPage:
    """One page of a node's self-check (:func:`scrub_step`)."""

    #: Stored versions whose bytes no longer validate (bit rot, a damaged disk).
    damaged: list[tuple[int, Timestamp]]
    #: Versions looked at.
    checked: int
    #: Where the next page starts (the last key looked at), or None at the end.
    cursor: bytes | None


def sound(raw: bytes, ts: Timestamp, *, node: int, n: int) -> bool:
    """Whether a stored version still validates as its write did (:func:`check_write`):
    its cross checksum hashes to the timestamp's verifier and its fragment to its entry."""
    try:
        stored = StoredVersion.decode(bytes(raw))
    except SchemaError:
        return False
    cc = stored.cross_checksum
    return (
        len(cc) == erasure.cross_checksum_size(n)
        and hmac.compare_digest(erasure.verifier_of(cc), ts.verifier)
        and erasure.fragment_matches(cc, node, stored.fragment)
    )


def scrub_step(kv: KV, after: bytes | None, limit: int, *, node: int, n: int) -> ScrubPage:
    """Check up to ``limit`` stored versions after key ``after`` against their own
    cross checksums (the node's background scrub, node/rw_scrubber.py): no other node is
    asked, since a write was validated before it was stored and only damage since can make
    a stored version fail."""
    start = b"\x00" if after is None else after + b"\x00"
    damaged: list[tuple[int, Timestamp]] = []
    checked = 0
    last = None
    for key, raw in kv.scan(DB_VERSIONS, start, b"\xff" * 256):
        if checked >= limit:
            return ScrubPage(damaged, checked, last)
        checked += 1
        last = bytes(key)
        try:
            block, ts = split_key(last)
        except SchemaError:
            continue  # not a version key: nothing a write could have put here
        if not sound(raw, ts, node=node, n=n):
            damaged.append((block, ts))
    return ScrubPage(damaged, checked, None)


def is_repair(req: WriteRequest, sender: int) -> bool:
    """Whether a write re-creates someone else's version: its timestamp names another
    writer than the principal that sent it (a reader's or a node's repair, a scrub's
    rewrite).  A client's own writes always carry its own id (``RWClient``), so every
    version a correct node stored as an original write was sent by the writer its
    timestamp names; a repair is taken only as a copy of a version that exists already
    (:func:`repair_proven`), so that stays true of every version a correct node holds."""
    return req.ts.writer != sender


def proof_request(block: int, ts: Timestamp) -> ReadRequest:
    """The read witness that asks a peer whether it hosts exactly version ``ts``."""
    return ReadRequest(BlockId(block), data=False, below=ts, inclusive=True)


def hosts_exactly(reply: ReadReply, ts: Timestamp) -> bool:
    """Whether a peer's answer to :func:`proof_request` says it hosts ``ts`` itself."""
    return bool(reply.history) and reply.history[0] == ts


def repair_proven(replies: Mapping[int, ReadReply], ts: Timestamp, b: int) -> bool:
    """Whether ``b + 1`` other nodes host version ``ts``: then one of them is correct and
    stored it as its writer's own write or as a proven repair, so the version exists and
    belongs to the writer its timestamp names (pure; docs/rw.md, "Repairs are charged to
    the version's writer").  ``replies``: peers' answers to :func:`proof_request`."""
    return sum(hosts_exactly(r, ts) for r in replies.values()) >= b + 1


def scrub_due(kv: KV, period_ns: int, now_ns: int) -> int:
    """When the node's next scrub pass is due (node clock ns): ``period_ns`` after its last
    pass ended, or after it first waited for one, as recorded in its store, so a node
    restarted more often than its period still scrubs (issue 31 item 14); ``now_ns +
    period_ns`` when nothing is recorded (:func:`scrub_noted` records the start)."""
    for key in (b"last", b"since"):
        raw = kv.get(DB_SCRUB, key)
        if raw is not None and len(raw) == 8:
            return int.from_bytes(bytes(raw), "big") + period_ns
    return now_ns + period_ns


def scrub_noted(kv: KV, key: bytes, now_ns: int, *, keep: bool = False) -> None:
    """Record ``key`` (``since`` or ``last``) of the scrub's clock; ``keep``: only if not
    recorded yet."""
    if keep and kv.get(DB_SCRUB, key) is not None:
        return
    kv.put(DB_SCRUB, key, max(now_ns, 0).to_bytes(8, "big"))


def floor_of(kv: KV, block: int) -> Timestamp:
    """The block's garbage-collection floor (:data:`ZERO` if nothing was collected)."""
    raw = kv.get(DB_FLOOR, block_prefix(block))
    return ZERO if raw is None else Timestamp.decode(raw)


def store_write(kv: KV, req: WriteRequest, *, owner: int | None = None) -> WriteReply:
    """Execute a write that passed :func:`check_write` (inside the write transaction).

    A version already stored at the timestamp is left alone if it holds the same bytes;
    if it does not, the stored copy is damaged (the timestamp's verifier binds the cross
    checksum and the cross checksum binds this node's fragment, both checked on the
    request), and it is replaced, keeping its flags and its charge: how a scrub heals a
    corrupt fragment (``bftfs verify``, rw/scrub.py).  A new version is charged to
    ``owner`` (quota.py; None: to nobody).
    """
    reply = store_charged(kv, req, owner=owner, quota_bytes=None)
    assert reply is not None  # no quota, no refusal
    return reply


def version_size(req: WriteRequest) -> int:
    """Bytes a write's version takes in the store, as charged (key plus value)."""
    return len(version_key(req.block, req.ts)) + 3 + len(req.cross_checksum) + len(req.fragment)


def store_charged(
    kv: KV, req: WriteRequest, *, owner: int | None, quota_bytes: int | None
) -> WriteReply | None:
    """:func:`store_write`, refusing (None, nothing changed) a new non-empty version that
    would take ``owner`` past ``quota_bytes`` bytes (None: no quota).  Decided inside the
    transaction, so concurrent writes of one client cannot overshoot together."""
    key = version_key(req.block, req.ts)
    raw = kv.get(DB_VERSIONS, key)
    if raw is not None:
        if intact(raw, req):
            return WriteReply(new=False)
        flags = raw[0] if len(raw) else 0
        kv.put(DB_VERSIONS, key, StoredVersion(flags, req.cross_checksum, req.fragment).encode())
        return WriteReply(new=False)
    if req.ts < floor_of(kv, req.block):
        return WriteReply(new=False)
    value = StoredVersion(0, req.cross_checksum, req.fragment).encode()
    size = len(key) + len(value)
    if owner is not None:
        used = quota.used(kv, owner) if quota_bytes is not None else 0
        if quota.over(used, size, quota_bytes, empty=not req.fragment):
            return None
    kv.put(DB_VERSIONS, key, value)
    if owner is not None:
        quota.charge(kv, key, owner, size)
    return WriteReply(new=True)


def _drop(kv: KV, key: bytes) -> bool:
    """Delete one stored version (and its flags) and give back its charge; whether it
    was there."""
    if not kv.delete(DB_VERSIONS, key):
        return False
    kv.delete(DB_FLAGS, key)
    quota.release(kv, key)
    return True


def flagged(kv: KV, key: bytes, value: bytes) -> bool:
    """Whether the stored version ``key`` (whose value is ``value``) is flagged verified:
    in its value (stores flagged before issue 19) or in ``rw.flags`` (schema.py)."""
    if value and value[0] & FLAG_VERIFIED:
        return True
    raw = kv.get(DB_FLAGS, key)
    return raw is not None and bool(raw[0] & FLAG_VERIFIED)


def is_verified(kv: KV, block: int, ts: Timestamp) -> bool:
    """Whether this node hosts version ``ts`` of ``block`` flagged verified."""
    key = version_key(block, ts)
    raw = kv.get(DB_VERSIONS, key)
    return raw is not None and flagged(kv, key, raw)


def intact(raw: bytes, req: WriteRequest) -> bool:
    """Whether a stored version holds exactly what the (validated) write ``req`` carries."""
    try:
        stored = StoredVersion.decode(bytes(raw))
    except SchemaError:
        return False
    return stored.cross_checksum == req.cross_checksum and stored.fragment == req.fragment


def stored_state(kv: KV, req: WriteRequest) -> bool | None:
    """The write's version here: None absent, True stored intact, False stored damaged."""
    raw = kv.get(DB_VERSIONS, version_key(req.block, req.ts))
    return None if raw is None else intact(raw, req)


def has_version(kv: KV, block: int, ts: Timestamp) -> bool:
    """Whether the version is stored (a read-transaction fast path for duplicate writes)."""
    return kv.get(DB_VERSIONS, version_key(block, ts)) is not None


def fresh_conflict(kv: KV, req: WriteRequest) -> Timestamp | None:
    """For a fresh (one-round) write: the hosted timestamp that makes it stale, or None.

    Runs in a read transaction before the write is queued.  It only has to see versions
    whose writes *completed* before this write began (client.py explains why that makes a
    one-round write safe), and those were committed before they were acknowledged, so a read
    transaction sees them; a version committed concurrently may be missed without harm.
    """
    if not req.fresh or has_version(kv, req.block, req.ts):
        return None
    latest = time_step(kv, req.block).latest
    return latest if latest >= req.ts else None


def time_step(kv: KV, block: int) -> TimeReply:
    """TIME_REQUEST: the greatest timestamp hosted for ``block``."""
    found = kv.lower(DB_VERSIONS, block_end(block))
    if found is None or not found[0].startswith(block_prefix(block)):
        return TimeReply(ZERO)
    return TimeReply(split_key(found[0])[1])


def read_step(kv: KV, req: ReadRequest, *, history: int = DEFAULT_HISTORY) -> ReadReply:
    """READ_LATEST / READ_PREV with a history of at most ``history`` versions.

    The history starts with the version the request returns (the greatest in range) and
    continues with the next older ones; ``more`` says whether it was cut short.
    """
    if history < 1:
        raise ValueError("history must be at least 1")
    if req.below is None:
        stop = block_end(req.block)
    else:
        stop = version_key(req.block, req.below)
        if req.inclusive:
            stop += b"\x00"  # the smallest key above `below`'s own key
    hist: list[Timestamp] = []
    first_value: bytes | None = None
    verified = False
    more = False
    for key, value in kv.scan(DB_VERSIONS, block_prefix(req.block), stop, reverse=True):
        if len(hist) == history:
            more = True
            break
        hist.append(split_key(key)[1])
        if first_value is None:
            first_value = value
            verified = flagged(kv, key, value)
    cc = frag = None
    if req.data and first_value is not None:
        stored = StoredVersion.decode(first_value)
        cc, frag = stored.cross_checksum, stored.fragment
    return ReadReply(tuple(hist), more, floor_of(kv, req.block), cc, frag, verified)


#: Above every version key.
_END = b"\xff" * 64


def list_step(kv: KV, after: int | None, limit: int) -> ListReply:
    """LIST: up to ``limit`` blocks above ``after`` (None: all), each with its latest version.

    One seek per block (to the block's first key, then to its last), so a page costs
    ``O(limit)`` seeks however many versions each block keeps.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    start = 0 if after is None else after + 1
    entries: list[tuple[BlockId, Timestamp]] = []
    more = False
    while start < BLOCK_ID_LIMIT:
        first = next(iter(kv.scan(DB_VERSIONS, block_prefix(start), _END)), None)
        if first is None:
            break
        block = split_key(first[0])[0]
        if len(entries) == limit:
            more = True
            break
        entries.append((BlockId(block), time_step(kv, block).latest))
        start = block + 1
    return ListReply(tuple(entries), more)


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
    doomed = [k for k, _ in kv.scan(DB_VERSIONS, block_prefix(block), version_key(block, floor))]
    for key in doomed:
        _drop(kv, key)
    kv.put(DB_FLOOR, block_prefix(block), floor.encode())
    return Collected(len(doomed), floor)


# --- lazy verification --------------------------------------------------------------------


def verified_of(kv: KV, block: int) -> Timestamp:
    """The block's verified mark (:data:`ZERO`: nothing verified yet)."""
    raw = kv.get(DB_VERIFIED, block_prefix(block))
    return ZERO if raw is None else Timestamp.decode(raw)


def hosted_step(kv: KV, block: int) -> list[Timestamp]:
    """Every version of ``block`` this node hosts, newest first."""
    return [
        split_key(k)[1]
        for k, _ in kv.scan(DB_VERSIONS, block_prefix(block), block_end(block), reverse=True)
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
    #: The block is down to its verified empty version (given back): it may be forgotten
    #: (:func:`forget_target`).
    given_back: bool = False


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
    below :func:`bftfs.rw.lazy.gc_floor` of the mark is deleted (:func:`collect_step`);
    ``pins``: snapshot moments whose versions stay (``gc_floor``).
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
            discarded += _drop(kv, version_key(block, ts))
    hosted = hosted_step(kv, block)
    if empty and not pressure and owner_limit is not None:
        pressure = _owner_pressed(kv, block, [ts for ts in hosted if ts < mark], owner_limit)
    collected = Collected(0, floor_of(kv, block))
    if mark > ZERO:
        floor = gc_floor(mark, hosted, now_ns, retention, pressure=pressure, pins=pins)
        collected = collect_step(kv, block, floor)
    left = len(hosted) - collected.deleted
    below = [ts for ts in hosted if collected.floor <= ts < mark]
    revisit = 0
    if not pressure:
        revisit = age_revisit(hosted, collected.floor, mark, retention, pins)
    return Verified(
        newly,
        discarded,
        collected.deleted,
        collected.floor,
        left,
        len(below),
        revisit,
        given_back=empty and left == 1 and not below,
    )


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
    given back, fs/reclaim.py)."""
    if mark == ZERO:
        return False
    raw = kv.get(DB_VERSIONS, version_key(block, mark))
    return raw is not None and erasure.cc_length(StoredVersion.decode(raw).cross_checksum) == 0


def _retention_below(retention: RetentionPolicy, empty: bool) -> RetentionPolicy:
    """The retention of what lies below a verified version: an empty one on top is a
    file's contents given back, and nothing below it is kept for its own sake once older
    than ``keep_seconds``."""
    return replace(retention, keep_versions=1) if empty else retention


def age_revisit(
    hosted: Sequence[Timestamp],
    floor: Timestamp,
    mark: Timestamp,
    retention: RetentionPolicy,
    pins: Sequence[int],
) -> int:
    """When the versions of a block kept below its verified ``mark`` only for their age
    (beyond the newest ``keep_versions`` of ``hosted``, descending) may go: node clock ns,
    0 when none is kept for its age (pure).

    Versions above a snapshot's pinned version stay for it, not for their age: looking
    again when they age would find them still pinned (a block left alone after the
    snapshot is deleted is collected at its next verification)."""
    aged = [ts for ts in hosted[retention.keep_versions :] if floor <= ts < mark]
    pinned = {next((ts for ts in hosted if ts.time <= t), None) for t in pins}
    if not aged or floor in pinned:
        return 0
    return min(ts.time for ts in aged) + int(retention.keep_seconds * 1e9) + 1


@dataclass(frozen=True)
class Unverified:
    """One page of :func:`unverified_step`: ``(block, version)`` pairs, the age revisits
    due (``(block, node clock ns)``), and where to go on."""

    versions: tuple[tuple[BlockId, Timestamp], ...]
    after: BlockId | None
    revisits: tuple[tuple[BlockId, int], ...] = ()


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
    may go (:func:`age_revisit`, as :func:`verified_step` computed it before the restart):
    a restarted verifier's revisits, which live in memory (issue 31 item 14)."""
    out: list[tuple[BlockId, Timestamp]] = []
    revisits: list[tuple[BlockId, int]] = []
    start = 0 if after is None else after + 1
    last: BlockId | None = None
    for _ in range(limit):
        if start >= BLOCK_ID_LIMIT:
            break
        first = next(iter(kv.scan(DB_VERSIONS, block_prefix(start), _END)), None)
        if first is None:
            break
        block = split_key(first[0])[0]
        mark = verified_of(kv, block)
        hosted: list[Timestamp] = []
        for key, value in kv.scan(DB_VERSIONS, block_prefix(block), block_end(block)):
            ts = split_key(key)[1]
            hosted.append(ts)
            if ts > mark and not flagged(kv, key, value):
                out.append((BlockId(block), ts))
        if retention is not None and mark > ZERO and len(hosted) > 1:
            hosted.reverse()
            kept = _retention_below(retention, _empty_at(kv, block, mark))
            due = age_revisit(hosted, floor_of(kv, block), mark, kept, pins)
            if due:
                revisits.append((BlockId(block), due))
        last = BlockId(block)
        start = block + 1
    return Unverified(tuple(out), last, tuple(revisits))


# --- forgetting given-back blocks (docs/lazy.md "Forgetting given-back blocks") ------------


def forget_target(kv: KV, block: int) -> Timestamp | None:
    """The empty version ``block`` may be forgotten at, once every node agrees, or None.

    The block must be down to one version here, empty (a file's contents given back,
    fs/reclaim.py), verified complete (it is the block's verified mark) with nothing kept
    below it.  Forgetting it deletes that version, the floor and the mark: the block
    then reads as never written here, which is the same value, the empty block.
    """
    hosted = hosted_step(kv, block)
    if len(hosted) != 1 or verified_of(kv, block) != hosted[0]:
        return None
    raw = kv.get(DB_VERSIONS, version_key(block, hosted[0]))
    if raw is None or erasure.cc_length(StoredVersion.decode(raw).cross_checksum) != 0:
        return None
    return hosted[0]


def forget_agreed(ts: Timestamp, replies: Mapping[int, ReadReply], n: int) -> bool:
    """Whether all ``n`` nodes' READ_LATEST witnesses list ``ts`` as the only version of
    the block, or none at all (they forgot it already, or never had it) (pure).

    Then no node holds a version below ``ts``, so whatever mix of ``ts`` and nothing a
    reader meets, it returns the empty block: no older contents can resurface.  A lying
    node speaks only for itself: the older versions it may keep are at one node, too few
    to be returned (``QC - missing > b``, rw/classify.py).
    """
    if len(replies) != n:
        return False
    return all(r.history in ((ts,), ()) and not r.more for r in replies.values())


def forget_step(kv: KV, block: int, ts: Timestamp) -> int:
    """Forget given-back ``block`` (re-checks :func:`forget_target`): its last version, with
    its charge, and its floor and verified mark; how many records were deleted."""
    if forget_target(kv, block) != ts:
        return 0
    deleted = int(_drop(kv, version_key(block, ts)))
    deleted += int(kv.delete(DB_FLOOR, block_prefix(block)))
    deleted += int(kv.delete(DB_VERIFIED, block_prefix(block)))
    return deleted


def given_back_page(
    kv: KV, after: int | None, limit: int
) -> tuple[list[tuple[int, Timestamp]], int | None]:
    """Blocks above ``after`` that :func:`forget_target` names, looking at up to ``limit``
    blocks, and where the next page starts (None: the last page)."""
    out: list[tuple[int, Timestamp]] = []
    start = 0 if after is None else after + 1
    for _ in range(limit):
        if start >= BLOCK_ID_LIMIT:
            return out, None
        first = next(iter(kv.scan(DB_VERSIONS, block_prefix(start), _END)), None)
        if first is None:
            return out, None
        block = split_key(first[0])[0]
        ts = forget_target(kv, block)
        if ts is not None:
            out.append((block, ts))
        start = block + 1
    return out, start - 1
