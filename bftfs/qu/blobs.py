"""Object states stored as content-addressed parts, so a version costs what its update
changed (issues 34 and 60).

A node keeps every Q/U object version (the version history depends on it), and a method's
new state is a whole value.  Stored whole, every update of an object would cost - and be
charged to its sender - the object's full size: a create in a directory of 5000 names
about 165 KB of entry buckets, and (issue 60) a create in a root where another client put
70 extended attributes of 900 bytes 69 KiB instead of 7 KiB, a lock/unlock pair on a file
where another client holds 255 read locks 17-21 KiB instead of 4.7.  One client's bytes
in a shared object spent another client's quota.

This module splits a state into a *skeleton* and *parts*.  It walks the state's msgpack
structure (:data:`MAX_DEPTH` levels): a byte or text string of at least :data:`BLOB_MIN`
bytes is a part of its own (its payload, so the part's hash is the string's, as before);
the elements of a map or array (a map's key and value together) below
:data:`PART_TARGET` bytes are grouped into runs that end where an element's own hash says
so (content-defined, on average every ``PART_TARGET`` bytes), and each run of at least
:data:`PART_MIN` bytes is a part; a larger element is walked in turn.  What is left - the
containers' headers, the keys of large values, short runs - stays in the skeleton with a
reference to the hash of each part.  The store keeps each part once by hash, with a
reference count (:mod:`bftfs.qu.schema`), charged to the request that stored it first.

Because a run ends where its own last element says (never at a count or a position), an
update that adds, changes or removes one element changes the one run holding it (and
may join it with or split it from a neighbour); every other run is the same bytes with
the same hash, already stored: the new version costs its skeleton (about 35 bytes per
part) and the runs it touched (about ``PART_TARGET`` each), whatever others keep in the
object.  A client that picks the elements it adds (names, lock owners) can make its own
run long; an update of another client inside that run pays for it (docs/threat-model.md).

Splitting is a storage matter only: what a version *is* stays its canonical bytes.  The
pieces are slices of the state's own bytes (element boundaries found by msgpack's skipping,
nothing decoded or re-encoded), so :func:`join` is a concatenation that gives back exactly
those bytes (a state that is not one msgpack value is stored whole).  A skeleton is
``[literal, hash, literal, ..., literal]``: the format records written by the first
splitter (large byte strings only, :data:`SPLIT_VERSION` 1) also use, so both read alike.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import msgpack

#: Which splitter a stored skeleton came from (``"sk"`` of a version record,
#: ``qu/schema.py``): 1 (stored as ``true``) cut large byte strings at the top two levels
#: of a map; 2 cuts parts as above.  Both are read by :func:`join`.
SPLIT_VERSION = 2
#: States shorter than this are stored whole (what another client's update of a state
#: this small pays for others' bytes in it is at most this).
SPLIT_MIN = 2 * 1024
#: Byte strings at least this long are parts of their own.
BLOB_MIN = 1024
#: The average size of a run of small elements; an element this long is walked alone.
PART_TARGET = 1024
#: Runs shorter than this stay in the skeleton (a reference would cost about as much).
PART_MIN = 128
#: Levels of containers walked into (a state's map, a map in it, the strings or
#: entries in that, one more for a map nested there).
MAX_DEPTH = 4
HASH_SIZE = 32


class BlobError(Exception):
    """A skeleton that does not parse or names a blob the store does not hold."""


def blob_hash(data: bytes) -> bytes:
    """The key of a blob: SHA-256 of its bytes (a client choosing directory names cannot
    make two buckets collide; SHA-256 is the fastest full-strength hash here, 2 us per
    2.4 KB bucket against 3.6 us for BLAKE2b)."""
    return hashlib.sha256(data).digest()


#: The msgpack type bytes of strings (``str`` and ``bin``) and containers with a length
#: field after them: ``type -> (kind, header length)``.  Fixed-size forms (the length in
#: the type byte) are handled in :func:`_head`.
_SIZED = {
    0xD9: ("s", 2),
    0xDA: ("s", 3),
    0xDB: ("s", 5),
    0xC4: ("s", 2),
    0xC5: ("s", 3),
    0xC6: ("s", 5),
    0xDC: ("a", 3),
    0xDD: ("a", 5),
    0xDE: ("m", 3),
    0xDF: ("m", 5),
}


#: The longest msgpack scalar (a 64-bit integer: type byte and 8 bytes).
_SCALAR_MAX = 9


def _head(raw: memoryview) -> tuple[str, int, int]:
    """``(kind, header length, n)`` of the msgpack value at the start of ``raw``: kind
    ``"m"`` (a map of ``n`` pairs), ``"a"`` (an array of ``n``), ``"s"`` (a string or
    byte string of ``n`` bytes) or ``""`` (anything else)."""
    t = raw[0]
    if 0x80 <= t <= 0x8F:
        return "m", 1, t & 0x0F
    if 0x90 <= t <= 0x9F:
        return "a", 1, t & 0x0F
    if 0xA0 <= t <= 0xBF:
        return "s", 1, t & 0x1F
    got = _SIZED.get(t)
    if got is None:
        return "", 0, 0
    kind, size = got
    return kind, size, int.from_bytes(raw[1:size], "big")


def ends_run(element: bytes | memoryview) -> bool:
    """Whether a run of small elements ends after ``element``: with probability
    ``len / PART_TARGET``, decided by the element's own bytes (CRC-32: cheap, the same on
    every node), so runs are about ``PART_TARGET`` bytes and their ends move with the
    elements, not with positions."""
    return zlib.crc32(element) * PART_TARGET < len(element) << 32


class _Splitter:
    """Collects a state's pieces: literal bytes (merged) and parts.  It reads the state's
    bytes in place - element boundaries from msgpack's own skipping, never a decode and
    re-encode - so every piece is a slice of the state and they join back to it."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.literal: list[bytes] = []
        self.refs: list[bytes] = []
        self.data: dict[bytes, bytes] = {}

    def keep(self, raw: memoryview) -> None:
        if raw:
            self.literal.append(bytes(raw))

    def cut(self, raw: memoryview) -> None:
        part = bytes(raw)
        h = blob_hash(part)
        self.pieces += [b"".join(self.literal), h]
        self.literal = []
        self.refs.append(h)
        self.data[h] = part

    def run(self, raw: memoryview) -> None:
        """A run of elements (or one value not walked): a part unless it is short."""
        if len(raw) >= PART_MIN:
            self.cut(raw)
        else:
            self.keep(raw)

    def walk(self, raw: memoryview, depth: int) -> None:
        """The pieces of the one msgpack value ``raw`` holds.

        Raises:
            ValueError, msgpack.UnpackException: ``raw`` is not one msgpack value.
        """
        kind, size, n = _head(raw)
        if kind == "s":
            if size + n != len(raw):
                raise ValueError("string length")
            if n >= BLOB_MIN:
                self.keep(raw[:size])
                self.cut(raw[size:])
            else:
                self.keep(raw)
            return
        if not kind:
            if len(raw) > _SCALAR_MAX:  # an extension type or garbage: no state holds one
                raise ValueError("not a state value")
            self.keep(raw)
            return
        if depth >= MAX_DEPTH:
            self.run(raw)  # too deep to walk: a part of its own if not tiny
            return
        self.keep(raw[:size])
        up = msgpack.Unpacker(max_buffer_size=len(raw))
        up.feed(raw[size:])
        skip, tell = up.skip, up.tell  # the loop runs once per element
        pairs = kind == "m"
        pos = start = size  # the end of the last element; the start of the current run
        for _ in range(n):
            mid = pos
            if pairs:
                skip()
                mid = size + tell()
            skip()
            end = size + tell()
            length = end - pos
            if length >= PART_TARGET:  # a large element: on its own, walked in turn
                self.run(raw[start:pos])
                self.keep(raw[pos:mid])
                self.walk(raw[mid:end], depth + 1)
                start = end
            elif ends_run(raw[pos:end]):
                self.run(raw[start:end])
                start = end
            pos = end
        if pos != len(raw):
            raise ValueError("trailing bytes")
        self.run(raw[start:pos])


def split(state: bytes) -> tuple[bytes, list[bytes], dict[bytes, bytes]] | None:
    """``(skeleton, references in order, parts by hash)`` of a state, or None when it is
    stored whole (small, not one msgpack value, nothing worth a part)."""
    if len(state) < SPLIT_MIN:
        return None
    s = _Splitter()
    try:
        s.walk(memoryview(state), 0)
    except (ValueError, IndexError, msgpack.UnpackException):
        return None
    if not s.refs:
        return None
    s.pieces.append(b"".join(s.literal))
    return msgpack.packb(s.pieces, use_bin_type=True), s.refs, s.data  # [bytes, hash, ..., bytes]


def _pieces(skeleton: bytes) -> list[bytes]:
    """A skeleton's pieces: literal bytes at even positions, blob hashes at odd ones."""
    try:
        pieces = msgpack.unpackb(skeleton, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData) as e:
        raise BlobError(f"bad skeleton: {e}") from e
    if (
        not isinstance(pieces, list)
        or len(pieces) % 2 != 1
        or not all(isinstance(p, bytes) for p in pieces)
        or any(len(h) != HASH_SIZE for h in pieces[1::2])
    ):
        raise BlobError("bad skeleton")
    return pieces


def references(skeleton: bytes) -> list[bytes]:
    """The blob hashes a skeleton refers to, once per reference."""
    return _pieces(skeleton)[1::2]


def join(skeleton: bytes, get: Callable[[bytes], bytes | None]) -> bytes:
    """The state a skeleton stands for, byte for byte, blobs read through ``get``.

    Raises:
        BlobError: the skeleton does not parse or a blob is missing.
    """
    pieces = _pieces(skeleton)
    for i in range(1, len(pieces), 2):
        data = get(pieces[i])
        if data is None:
            raise BlobError(f"missing blob {pieces[i].hex()}")
        pieces[i] = data
    return b"".join(pieces)
