"""Q/U logical timestamps and candidates (seed Figure 4.3 lines 103-104, L2344-2360).

A timestamp is ``<Time, BarrierFlag, ClientID, Operation, OHS>``; as in the prototype's
*compact timestamps* (seed L2616-2620) the last two fields are replaced by one collision-
resistant hash of "operation || conditioned-on (multi-)OHS".  Order is exactly the seed's
(L2309-2311): Time, then BarrierFlag (False < True), then ClientID, then the hash, which
stands in for the lexicographic comparison of Operation and OHS.

The byte encoding is fixed width and big-endian (time u64, flag u8, client u64, 32-byte
digest), so comparing encodings compares timestamps: LMDB keys ``object id || timestamp``
sort object versions in logical-time order and "the version at LT" is one lookup.

A candidate is ``<LT, LT_CO>`` (line 104).  We add the sorted tuple of object ids the update
touched (one id for a single-object update): the seed puts the multi-OHS in the timestamp so
that repairers can find the other objects of a multi-object candidate (L2743-2745); with a
hashed timestamp that set must travel explicitly.  A candidate is identified by ``(LT,
objects)``; ``LT_CO`` is carried along as the seed's "clearly indicates the conditioned-on
version" field (L2351-2353) and used for pruning and the conditioned-on chain.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Final

# Re-exported: the Q/U layer's own names for the objects-per-operation bounds.
from bftfs.thresholds import MAX_OBJECTS as MAX_OBJECTS
from bftfs.thresholds import NARROW_OBJECTS as NARROW_OBJECTS

#: Size of the operation/OHS hash in a timestamp.
DIGEST_SIZE = 32
#: Size of an encoded timestamp.
TIMESTAMP_SIZE = 8 + 1 + 8 + DIGEST_SIZE
#: Largest Time a server will create.  A Byzantine server can put any Time in its own
#: replica history (its authenticator is genuine); refusing to step past this bound keeps
#: the u64 field from overflowing and makes the attack visible as a refusal.
MAX_TIME = 1 << 62

_FMT = struct.Struct(">QBQ")


class TimestampError(ValueError):
    """Bytes that are not a valid encoded timestamp or candidate."""


class Timestamp:
    """One logical timestamp, ordered as the seed orders them (L2309-2311).

    Comparisons use the encoding, which is order-preserving (fixed width, big-endian, field
    order Time, BarrierFlag, ClientID, digest): identical to comparing the field tuples, and
    cheap, which matters because classification compares timestamps constantly.

    Immutable (``Final`` fields, checked by mypy).  Every timestamp a node or client makes
    is compared or encoded, so the encoding is computed at construction (or kept from the
    bytes it was parsed from) instead of on first use.
    """

    __slots__ = ("time", "barrier", "client", "digest", "_bytes")

    def __init__(
        self, time: int, barrier: bool, client: int, digest: bytes, encoded: bytes | None = None
    ) -> None:
        """``encoded``: the encoding when the caller has it (parsing), else it is packed."""
        #: 0 <= time <= MAX_TIME (only ZERO has time 0)
        self.time: Final = time
        self.barrier: Final = barrier
        #: principal id of the client that set it up (0 for ZERO)
        self.client: Final = client
        #: DIGEST_SIZE bytes: H(kind || operation || conditioned-on multi-OHS)
        self.digest: Final = digest
        if encoded is None:
            encoded = _FMT.pack(time, 1 if barrier else 0, client) + digest
        self._bytes: Final = encoded

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timestamp) and self._bytes == other._bytes

    def __lt__(self, other: Timestamp) -> bool:
        return self._bytes < other._bytes

    def __le__(self, other: Timestamp) -> bool:
        return self._bytes <= other._bytes

    def __gt__(self, other: Timestamp) -> bool:
        return self._bytes > other._bytes

    def __ge__(self, other: Timestamp) -> bool:
        return self._bytes >= other._bytes

    def __repr__(self) -> str:
        return (
            f"Timestamp(time={self.time}, barrier={self.barrier}, client={self.client}, "
            f"digest={self.digest.hex()[:16]}...)"
        )

    def __reduce__(self) -> tuple:
        return (Timestamp, (self.time, self.barrier, self.client, self.digest))

    def encode(self) -> bytes:
        """The fixed-width, order-preserving bytes of this timestamp."""
        return self._bytes

    @classmethod
    def decode(cls, data: object) -> Timestamp:
        """Parse :meth:`encode` output (cached by its bytes: every reply of a round names the
        same few timestamps).

        Raises:
            TimestampError: wrong length, flag not 0/1, or Time beyond ``MAX_TIME``.
        """
        if not isinstance(data, bytes) or len(data) != TIMESTAMP_SIZE:
            raise TimestampError(f"timestamp must be {TIMESTAMP_SIZE} bytes")
        return _decode(bytes(data))

    def short(self) -> str:
        """The seed's Table 4.1 notation: Time, with "b" appended for barriers."""
        return f"{self.time}{'b' if self.barrier else ''}"


@functools.lru_cache(maxsize=8192)
def _decode(data: bytes) -> Timestamp:
    """:meth:`Timestamp.decode` of exactly ``TIMESTAMP_SIZE`` bytes, cached by them (only
    valid ones: a refusal raises).  The encoding is canonical (fixed width, flag 0 or 1),
    so ``data`` is the timestamp's encoding and is kept as it."""
    time, flag, client = _FMT.unpack_from(data)
    if flag > 1:
        raise TimestampError("barrier flag must be 0 or 1")
    if time > MAX_TIME:
        raise TimestampError("timestamp time out of range")
    return Timestamp(time, flag == 1, client, data[17:], data)


#: The initial timestamp, ``0`` in the seed (line 900).
ZERO = Timestamp(0, False, 0, bytes(DIGEST_SIZE))


class Candidate:
    """``<LT, LT_CO>`` plus the objects the update touched (empty only for the initial one).

    Immutable, like :class:`Timestamp`.  The values every request needs are computed once,
    at construction:

    - ``_hash``: replica histories (tuples of candidates) are cache keys, hashed per request;
    - ``key``: what identifies a candidate when counting its order, ``(lt bytes, objects)``;
    - ``_wire``: the wire form, re-encoded in every reply and stored request, and compared
      (in C) by ``==``.
    """

    __slots__ = ("lt", "lt_co", "objects", "key", "_hash", "_wire")

    def __init__(self, lt: Timestamp, lt_co: Timestamp, objects: tuple[int, ...]) -> None:
        self.lt: Final = lt
        #: < lt, except for INITIAL where both are ZERO
        self.lt_co: Final = lt_co
        #: sorted, unique, <= MAX_OBJECTS; () only for INITIAL
        self.objects: Final = objects
        self.key: Final[tuple[bytes, tuple[int, ...]]] = (lt._bytes, objects)
        self._wire: Final[tuple[bytes, bytes, tuple[int, ...]]] = (
            lt._bytes,
            lt_co._bytes,
            objects,
        )
        self._hash: Final = hash(self._wire)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return self is other or self._wire == other._wire

    def __repr__(self) -> str:
        return f"Candidate({self.short()}, objects={self.objects})"

    def __reduce__(self) -> tuple:
        return (Candidate, (self.lt, self.lt_co, self.objects))

    @property
    def multi(self) -> bool:
        """Whether this candidate came from a multi-object operation."""
        return len(self.objects) > 1

    def wire(self) -> tuple:
        """The msgpack-able form ``[lt, lt_co, objects]`` (a shared immutable tuple, which
        packs as the same array as a list)."""
        return self._wire

    @classmethod
    def from_wire(cls, value: object) -> Candidate:
        """Parse :meth:`wire` output, checking every field (cached by the wire values: the
        same few candidates arrive in every request for an object).

        Raises:
            TimestampError: malformed fields, ``lt_co >= lt``, or a bad object list.
        """
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise TimestampError("candidate must be [lt, lt_co, objects]")
        lt_raw = value[0]
        co_raw = value[1]
        objs = value[2]
        if not isinstance(objs, list | tuple) or len(objs) > MAX_OBJECTS:
            raise TimestampError("candidate objects must be a short list")
        for o in objs:
            if type(o) is not int:  # before the cache: True == 1
                raise TimestampError("object ids must be integers")
        if not isinstance(lt_raw, bytes) or not isinstance(co_raw, bytes):
            raise TimestampError("candidate timestamps must be bytes")
        return _parse_candidate(lt_raw, co_raw, tuple(objs))

    def short(self) -> str:
        """``<LT, LT_CO>`` in Table 4.1 notation."""
        return f"<{self.lt.short()},{self.lt_co.short()}>"


@functools.lru_cache(maxsize=8192)
def _parse_candidate(lt_raw: bytes, co_raw: bytes, objects: tuple[int, ...]) -> Candidate:
    """:meth:`Candidate.from_wire` once the field types are checked, cached by the fields
    (only valid ones: a refusal raises)."""
    lt = Timestamp.decode(lt_raw)
    lt_co = Timestamp.decode(co_raw)
    if any(not 0 <= o < (1 << 64) for o in objects) or list(objects) != sorted(set(objects)):
        raise TimestampError("candidate objects must be sorted, unique u64 ids")
    cand = Candidate(lt, lt_co, objects)
    if cand == INITIAL:
        return INITIAL
    if not objects or not lt_co < lt:
        raise TimestampError("candidate must name its objects and have lt_co < lt")
    return cand


#: The initial candidate ``<0, 0>`` every replica history starts with (line 900).
INITIAL = Candidate(ZERO, ZERO, ())

#: Operation kinds folded into the digest, so a barrier, a copy and a method set up from the
#: same OHS can never share a timestamp.
KIND_METHOD = b"M"
KIND_BARRIER = b"B"
KIND_COPY = b"C"


def lt_digest(kind: bytes, operation: bytes, ohs_digest: bytes) -> bytes:
    """The compact-timestamp hash of ``kind || operation || conditioned-on multi-OHS``.

    Args:
        kind: one of ``KIND_METHOD``, ``KIND_BARRIER``, ``KIND_COPY``.
        operation: canonical bytes of the operation (for a copy, of the copied timestamps).
        ohs_digest: :func:`bftfs.qu.history.multi_ohs_digest` of the culled multi-OHS.
    """
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"bftfs-qu-lt")
    for part in (kind, operation, ohs_digest):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()
