"""PASIS logical timestamps (seed L826-832, L937-941, MAKE_TIMESTAMP in Figure 3.1).

A logical timestamp is ``<Time, Writer, Verifier>``, compared in that order:

    ======  ====  ================================================================
    offset  size  field
    ======  ====  ================================================================
    0       8     ``time``: unsigned big-endian; nanoseconds since the Unix epoch
    8       4     ``writer``: principal id of the client that made the timestamp
    12      32    ``verifier``: BLAKE2b-256 of the cross checksum (erasure.py)
    ======  ====  ================================================================

The fixed-width big-endian encoding makes byte order equal timestamp order, so a node's
versions of a block sort by time in LMDB (DESIGN.md "Storage on a node").

Choices where the seed is silent (spec H.3, A.6):

* ``writer`` sits between Time and Verifier.  The seed's PASIS timestamp has no client id
  (L979-982).  Adding it makes two clients that pick the same Time still produce distinct,
  ordered timestamps, and records who wrote a version (for history, for blame, and for the
  quota: a version is charged to its writer).  Only the verifier binds the data.  A node
  takes a *new* version only from the writer it names (the frame authenticates the
  sender); a write naming another writer is a repair, taken only when ``b + 1`` other
  nodes host that very version (``rw/repairs.py`` ``repair_proven``), so a client cannot
  write new data in another client's name.
* ``time`` is a hybrid clock: :func:`next_time` takes ``max(observed + 1, now)``.  The seed
  takes ``max + 1`` (READ_TIMESTAMP, MAKE_TIMESTAMP); also taking the wall clock keeps
  timestamps close to real time, which the version-history views (``bftfs cat --at``) rely on,
  and keeps them strictly increasing for every later write of the block.
* A node refuses a write whose time lies more than ``max_ahead_ns`` beyond its own clock,
  and a client ignores a TIME reply beyond its own clock plus the same bound (see
  :func:`plausible`).  The seed accepts timestamp inflation as a performance problem only
  (L1456-1462); this bound keeps a Byzantine node's "huge time" from being used at all and
  limits how far any principal can push a block's clock ahead of real time.

The zero timestamp :data:`ZERO` stands for the initial version of every block, whose value
is the empty block (the seed's well-known zero time and null value, L815-816).
"""

from __future__ import annotations

from dataclasses import dataclass

from bftfs.erasure import HASH_SIZE

#: Encoded size of a timestamp in bytes.
TIMESTAMP_SIZE = 8 + 4 + HASH_SIZE
#: Largest representable ``time`` (8 bytes).
MAX_TIME = (1 << 64) - 1
#: Largest representable ``writer`` (4 bytes).
MAX_WRITER = (1 << 32) - 1
#: Default bound on how far ahead of a node's clock a write's time may be (60 s).
#: Clocks of nodes and clients must agree to well within this; a larger skew makes correct
#: nodes refuse writes from a fast client (a liveness, not a safety, problem).
DEFAULT_MAX_AHEAD_NS = 60 * 1_000_000_000


class TimestampError(ValueError):
    """Bytes that are not an encoded timestamp."""


@dataclass(frozen=True, order=True)
class Timestamp:
    """One logical timestamp; field order is comparison order."""

    time: int
    writer: int
    #: BLAKE2b-256 of the version's cross checksum; all zeros only in :data:`ZERO`.
    verifier: bytes

    def encode(self) -> bytes:
        """The 44-byte big-endian form (byte order == timestamp order)."""
        return self.time.to_bytes(8, "big") + self.writer.to_bytes(4, "big") + self.verifier

    @classmethod
    def decode(cls, raw: bytes) -> Timestamp:
        """Parse an encoded timestamp.

        Raises:
            TimestampError: wrong type or length.
        """
        if not isinstance(raw, bytes) or len(raw) != TIMESTAMP_SIZE:
            raise TimestampError("timestamp must be 44 bytes")
        return cls(int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:12], "big"), raw[12:])

    def __repr__(self) -> str:
        return f"TS({self.time}, w={self.writer}, {self.verifier[:4].hex()})"


ZERO = Timestamp(0, 0, bytes(HASH_SIZE))


def make_timestamp(time: int, writer: int, verifier: bytes) -> Timestamp:
    """MAKE_TIMESTAMP with range checks (a bad value is a programming error here)."""
    if not 0 < time <= MAX_TIME or not 0 <= writer <= MAX_WRITER or len(verifier) != HASH_SIZE:
        raise ValueError(f"bad timestamp fields time={time} writer={writer}")
    return Timestamp(time, writer, verifier)


def next_time(observed: int, now_ns: int) -> int:
    """The Time of a new write: after every observed time, and never behind the clock."""
    return max(observed + 1, now_ns)


def plausible(time: int, now_ns: int, max_ahead_ns: int) -> bool:
    """Whether ``time`` is not further ahead of ``now_ns`` than the bound allows.

    Nodes apply it to writes; clients apply it to TIME replies with the same bound, so a
    time a client adopts (at most ``now + bound``, plus one) is one a correct node with the
    same or a later clock accepts.
    """
    return time <= now_ns + max_ahead_ns
