"""Audits with proofs of storage, the pure part (issue 68, rational nodes; docs/bar.md):
what an auditor challenges, what a node answers, and the verdict.  The task that runs them
is ``node/audits.py``; this module has no I/O (time, randomness and the store are
arguments), so tier 1 checks it whole (``tests/t1_audits.py``).

* **Candidates** (:func:`candidates_page`): a page of the blocks the auditor hosts with
  the version its lazy verification marked complete (``rw.verified``): a complete version
  was stored by enough nodes to be read, and the verifier repaired the nodes that lacked
  it, so every correct node holds its fragment.  A :class:`Reservoir` keeps a uniform
  sample of them (Vitter's algorithm R) with the auditor's random source: a node cannot
  tell which of its fragments will be asked for, so it cannot keep only those.
* **Challenge** (:class:`Challenge`): ``<block, timestamp>``; the audited node answers
  (:func:`answer_step`) with its stored fragment of that version, or says it lacks it.
* **Verdict** (:func:`verdict`): the fragment must match the audited node's entry of the
  version's cross checksum, which the auditor holds (it checked, when it stored its own
  fragment, that the cross checksum hashes to the timestamp's verifier: the writer's
  commitment, ``replica.check_write``).  A hash collision aside, only the true fragment
  passes; a stale fragment (another version's), a made-up one or any other bytes fail.

Why the whole fragment and not something smaller: the cross checksum names one hash of the
*whole* fragment (no Merkle tree inside it), so the auditor, who holds its own fragment but
not the peer's, can check nothing smaller.  A digest ``H(nonce || fragment)`` cannot be
checked without the fragment, and one without a nonce (the entry itself) can be given by a
node that kept only the hash.  The answer is one read from the memory-mapped store and the
fragment's bytes on the wire (a 64 KiB block with m = 3: 22 KB), a few per period: see
docs/bar.md for the cost.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bftfs import erasure
from bftfs.kv import KV
from bftfs.rw import replica
from bftfs.rw.messages import BLOCK_ID_SIZE, MessageError, encode_block_id
from bftfs.rw.schema import (
    DB_VERIFIED,
    DB_VERSIONS,
    SchemaError,
    StoredVersion,
    block_prefix,
    version_key,
)
from bftfs.rw.timestamp import Timestamp

KIND_CHALLENGE = "audit.challenge"
#: Above every key of ``rw.verified`` (block ids are 16 bytes).
_MARKS_END = b"\xff" * (BLOCK_ID_SIZE + 1)
AUDIT_WIRE_VERSION = 1

T = TypeVar("T")


class Verdict(enum.Enum):
    """What one challenge showed about the audited node."""

    #: It returned the fragment its cross-checksum entry names.
    PASSED = "passed"
    #: It returned bytes that are not that fragment (stale, made up, damaged): a lie, or
    #: a store it did not scrub.
    FAILED = "failed"
    #: It said it lacks the fragment (a correct node may, rarely: a write it never got):
    #: it must fetch it before the same version is asked again (``owed``).
    MISSING = "missing"
    #: No answer in time (down, partitioned, overloaded): not evidence, a node down is
    #: reported as down.
    LATE = "late"
    #: Nothing to judge: the auditor's own view moved meanwhile (the version collected
    #: here, a newer one written), or the node is catching up after a restart.
    VOID = "void"


@dataclass(frozen=True)
class Challenge:
    """Prove you hold your fragment of ``block`` at ``ts``."""

    block: int
    ts: Timestamp

    def to_wire(self) -> dict[str, Any]:
        return {"v": AUDIT_WIRE_VERSION, "b": encode_block_id(self.block), "ts": self.ts.encode()}

    @classmethod
    def from_wire(cls, msg: Any) -> Challenge:
        if not isinstance(msg, dict) or msg.get("v") != AUDIT_WIRE_VERSION:
            raise MessageError("not an audit challenge of this version")
        block, ts = msg.get("b"), msg.get("ts")
        if not isinstance(block, bytes) or len(block) != BLOCK_ID_SIZE:
            raise MessageError("audit challenge: bad block id")
        if not isinstance(ts, bytes):
            raise MessageError("audit challenge: bad timestamp")
        try:
            stamp = Timestamp.decode(ts)
        except ValueError as e:
            raise MessageError(f"audit challenge: {e}") from None
        return cls(int.from_bytes(block, "big"), stamp)


@dataclass(frozen=True)
class Answer:
    """The audited node's answer: its fragment, or ``missing``, or ``busy`` (catching up)."""

    fragment: bytes | None = None
    missing: bool = False
    busy: bool = False

    def to_wire(self) -> dict[str, Any]:
        if self.fragment is not None:
            return {"f": self.fragment}
        return {"missing": True} if self.missing else {"busy": True}

    @classmethod
    def from_wire(cls, msg: Any) -> Answer:
        """Whatever came back; a shape that is none of the three is an empty fragment (it
        fails the check, as any wrong bytes do)."""
        if isinstance(msg, dict):
            if isinstance(msg.get("f"), bytes):
                return cls(fragment=msg["f"])
            if msg.get("missing") is True:
                return cls(missing=True)
            if msg.get("busy") is True:
                return cls(busy=True)
        return cls(fragment=b"")


def answer_step(kv: KV, challenge: Challenge) -> Answer:
    """The honest answer: the stored fragment of the challenged version (one read in the
    node's read transaction; nothing hashed), or ``missing``."""
    raw = kv.get(DB_VERSIONS, version_key(challenge.block, challenge.ts))
    if raw is None:
        return Answer(missing=True)
    try:
        return Answer(fragment=StoredVersion.decode(bytes(raw)).fragment)
    except SchemaError:
        return Answer(fragment=b"")  # damaged here: the scrub would have caught it


def cross_checksum_step(kv: KV, block: int, ts: Timestamp) -> bytes | None:
    """The auditor's copy of the version's cross checksum, while ``ts`` is still the
    block's latest version here (None otherwise: the verdict is void)."""
    if replica.time_step(kv, block).latest != ts:
        return None
    raw = kv.get(DB_VERSIONS, version_key(block, ts))
    if raw is None:
        return None
    try:
        return StoredVersion.decode(bytes(raw)).cross_checksum
    except SchemaError:
        return None


def verdict(cross_checksum: bytes | None, index: int, answer: Answer | None) -> Verdict:
    """Judge ``answer`` (None: none in time) against the auditor's ``cross_checksum``
    (None: the auditor no longer holds the version as its latest) for fragment ``index``."""
    if answer is None:
        return Verdict.LATE
    if cross_checksum is None or answer.busy:
        return Verdict.VOID
    if answer.missing:
        return Verdict.MISSING
    assert answer.fragment is not None
    if erasure.fragment_matches(cross_checksum, index, answer.fragment):
        return Verdict.PASSED
    return Verdict.FAILED


def candidates_page(
    kv: KV, after: int | None, limit: int
) -> tuple[list[tuple[int, Timestamp]], int | None]:
    """Up to ``limit`` blocks above ``after`` with their verified mark (``rw.verified``:
    the version lazy verification found complete), as ``(block, ts)``; and where the next
    page starts (None: the end).  One cursor over the marks, no seek per block (a block
    written since its mark is judged void when challenged, ``cross_checksum_step``)."""
    start = block_prefix(0 if after is None else after + 1)
    out: list[tuple[int, Timestamp]] = []
    for key, raw in kv.scan(DB_VERIFIED, start, _MARKS_END):
        if len(out) == limit:
            return out, out[-1][0]
        if len(key) != BLOCK_ID_SIZE:
            continue
        try:
            ts = Timestamp.decode(bytes(raw))
        except ValueError:
            continue
        if ts.time > 0:
            out.append((int.from_bytes(bytes(key), "big"), ts))
    return out, None


@dataclass
class Reservoir(Generic[T]):
    """A uniform sample of at most ``size`` items of a stream of unknown length
    (algorithm R): each item offered ends in the sample with probability size / seen."""

    size: int
    rng: random.Random
    items: list[T] = field(default_factory=list)
    seen: int = 0

    def offer(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


@dataclass
class PeerRecord:
    """What one auditor saw of one peer: verdict counts, the versions it owes (said
    missing: asked again next period), and when it last failed."""

    counts: dict[str, int] = field(default_factory=lambda: {v.value: 0 for v in Verdict})
    owed: list[tuple[int, Timestamp]] = field(default_factory=list)
    last_failed_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.counts, "owed": len(self.owed), "last_failed_ns": self.last_failed_ns}


class Ledger:
    """An auditor's verdicts per peer (the audit half of a node's contribution record)."""

    def __init__(self) -> None:
        self.peers: dict[int, PeerRecord] = {}

    def record(self, peer: int, challenge: Challenge, found: Verdict, now_ns: int) -> None:
        """Count ``found``; a version said missing is owed (asked again next period); one
        owed and missing again is a failure (a correct node fetched it meanwhile)."""
        rec = self.peers.setdefault(peer, PeerRecord())
        key = (challenge.block, challenge.ts)
        was_owed = key in rec.owed
        if was_owed:
            rec.owed.remove(key)
        if found is Verdict.MISSING and was_owed:
            found = Verdict.FAILED
        elif found is Verdict.MISSING:
            rec.owed.append(key)
        rec.counts[found.value] += 1
        if found is Verdict.FAILED:
            rec.last_failed_ns = now_ns

    def owed(self, peer: int) -> list[Challenge]:
        """The versions ``peer`` said it lacks, to ask again first."""
        rec = self.peers.get(peer)
        return [] if rec is None else [Challenge(b, ts) for b, ts in rec.owed]

    def to_json(self) -> dict[str, Any]:
        return {str(p): rec.to_json() for p, rec in sorted(self.peers.items())}
