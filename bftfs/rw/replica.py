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
* :func:`fresh_conflict` - the extra check of a one-round write (not in the seed): refuse
  unless the timestamp is above every hosted version.
* :func:`time_step` - TIME_REQUEST: the greatest hosted timestamp.
* :func:`read_step` - READ_LATEST / READ_PREV (strictly below, or at-or-below for exact
  fetches, spec H.2), with or without the fragment (read witnesses, L1172-1176), and always
  with a bounded history of older versions (L1155-1158) and the node's floor.
* :func:`list_step` - LIST (not in the seed): the blocks hosted above a cursor with their
  latest timestamps, one page at a time (the catch-up of a restarted node, node/rw_catchup.py).

The node's other steps over the same records, one module per job: repairs (repairs.py),
collection and lazy verification (collect.py), forgetting given-back blocks (forget.py) and
the self-check scrub (scrubstep.py).

Every step is a deterministic function of the KV and its arguments, as the group-committing
store requires (node/store.py).
"""

from __future__ import annotations

import hmac

from bftfs import erasure
from bftfs.kv import KV
from bftfs.rw import quota
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
    DB_THINNED,
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
        kv.put(
            DB_VERSIONS, key, StoredVersion(flags, req.cross_checksum, bytes(req.fragment)).encode()
        )
        return WriteReply(new=False)
    if req.ts < floor_of(kv, req.block):
        return WriteReply(new=False)
    # (bytes() returns a request's own bytes as they are: only a client's views copy.)
    value = StoredVersion(0, req.cross_checksum, bytes(req.fragment)).encode()
    size = len(key) + len(value)
    if owner is not None:
        used = quota.used(kv, owner) if quota_bytes is not None else 0
        if quota.over(used, size, quota_bytes, empty=not req.fragment):
            return None
    kv.put(DB_VERSIONS, key, value)
    if owner is not None:
        quota.charge(kv, key, owner, size)
    return WriteReply(new=True)


def drop_version(kv: KV, key: bytes) -> bool:
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
    return _flagged_in_value(value) or _flagged_apart(kv, key)


def _flagged_in_value(value: bytes | None) -> bool:
    return value is not None and len(value) > 0 and bool(value[0] & FLAG_VERIFIED)


def _flagged_apart(kv: KV, key: bytes) -> bool:
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
    return kv.has(DB_VERSIONS, version_key(block, ts))


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
    found = kv.lower_key(DB_VERSIONS, block_end(block))
    if found is None or not found.startswith(block_prefix(block)):
        return TimeReply(ZERO)
    return TimeReply(split_key(found)[1])


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
    first_key: bytes | None = None
    more = False
    # Keys only: the older versions' fragments are not needed (kv.py).
    for key in kv.scan_keys(DB_VERSIONS, block_prefix(req.block), stop, reverse=True):
        if len(hist) == history:
            more = True
            break
        hist.append(split_key(key)[1])
        if first_key is None:
            first_key = key
    floor = floor_of(kv, req.block)
    hole = kv.lower(DB_THINNED, stop)
    if hole is not None and hole[0].startswith(block_prefix(req.block)):
        # A thinned version lies in range: what it was cannot be told any more, so this
        # node answers as if collected up to the next version it hosts above the hole.
        above = _hosted_above(kv, req.block, bytes(hole[0]))
        if above is not None and above > floor:
            floor = above
            keep = [ts for ts in hist if ts >= floor]
            if len(keep) < len(hist):
                hist, more = keep, False
                if not hist:
                    first_key = None
    first_value: bytes | None = None
    verified = False
    if first_key is not None:
        # ``flagged`` in two halves: ``rw.flags`` first, so that a witness reads the value
        # (fragment and all) only for a store flagged before issue 19.
        verified = _flagged_apart(kv, first_key)
        if req.data or not verified:
            first_value = kv.get(DB_VERSIONS, first_key)
            verified = verified or _flagged_in_value(first_value)
    cc = frag = None
    if req.data and first_value is not None:
        stored = StoredVersion.decode(first_value)
        cc, frag = stored.cross_checksum, stored.fragment
    return ReadReply(tuple(hist), more, floor, cc, frag, verified)


def _hosted_above(kv: KV, block: int, key: bytes) -> Timestamp | None:
    """The oldest version of ``block`` this node hosts above version key ``key``."""
    for k in kv.scan_keys(DB_VERSIONS, key + b"\x00", block_end(block)):
        return split_key(k)[1]
    return None


#: Above every version key.
VERSIONS_END = b"\xff" * 64


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
        first = next(kv.scan_keys(DB_VERSIONS, block_prefix(start), VERSIONS_END), None)
        if first is None:
            break
        block = split_key(first)[0]
        if len(entries) == limit:
            more = True
            break
        entries.append((BlockId(block), time_step(kv, block).latest))
        start = block + 1
    return ListReply(tuple(entries), more)
