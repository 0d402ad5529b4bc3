"""A PASIS storage node's self-check (its background scrub, node/rw_scrubber.py):
synchronous steps over a ``KV``.

* :func:`scrub_step` - check a page of stored versions against their own cross checksums
  (:func:`sound`: as their write was validated, replica.check_write);
* :func:`scrub_due`, :func:`scrub_noted` - the scrub's clock, kept in the node's store so a
  node restarted more often than its period still scrubs (issue 31 item 14).

Repairing a damaged copy is an ordinary write (replica.store_write replaces it).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from bftfs import erasure
from bftfs.kv import KV
from bftfs.rw.schema import DB_SCRUB, DB_VERSIONS, SchemaError, StoredVersion, split_key
from bftfs.rw.timestamp import Timestamp


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
