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
bytes is a part of its own (its payload, so the part's hash is the string's, as before),
unless it is :data:`PACKED_MIN` bytes or more and holds one msgpack map or array (a big
directory's entry bucket), which is walked like one; the elements of a map or array (a
map's key and value together) below :data:`PART_TARGET` bytes are grouped into runs that
end where an element's own hash says so (content-defined, on average every
``PART_TARGET`` bytes), and each run of at least :data:`PART_MIN` bytes is a part; a
larger element is walked in turn.  What is left - the containers' headers, the keys of
large values, short runs - stays in the skeleton with a reference to each part.  A walked
container with :data:`NEST_MIN` references or more gets a skeleton of its own, stored as
a blob under :func:`skeleton_hash` and referred to from its parent's with ``NESTED``
after the hash: the skeletons form a tree of content-addressed nodes.  The store keeps
each blob once by hash, with a count of the skeletons referring to it
(:mod:`bftfs.qu.schema`), charged to the request that stored it first.

Because a run ends where its own last element says (never at a count or a position), an
update that adds, changes or removes one element changes the one run holding it (and
may join it with or split it from a neighbour); every other run is the same bytes with
the same hash, already stored, and so is the skeleton of every container it did not
change.  The new version costs the skeletons on the path to what it changed (about 35
bytes per part of each container on that path) and the runs it touched (about
``PART_TARGET`` each), whatever others keep in the object.  A client that picks the
elements it adds (names, lock owners) can make its own run long; an update of another
client inside that run pays for it (docs/threat-model.md).

Splitting is a storage matter only: what a version *is* stays its canonical bytes.  The
pieces are slices of the state's own bytes (element boundaries found by msgpack's skipping,
nothing decoded or re-encoded), so :func:`join` is a concatenation that gives back exactly
those bytes (a state that is not one msgpack value is stored whole), and the split is a
function of those bytes alone: every node splits a version alike.  A skeleton is
``[literal, reference, literal, ..., literal]``, the format of the records written by the
first splitter too (long byte strings only, :data:`SPLIT_VERSION` 1, no nested
references), so those read as they are.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable

import msgpack

#: Which splitter a stored skeleton came from (``"sk"``/``"ak"`` of a version record,
#: ``qu/schema.py``): 1 (stored as ``true``) cut long byte strings at the top two levels
#: of a map; 2 cuts parts and nests skeletons as above.  Both are read by :func:`join`
#: (a node of before version 2 cannot read version 2's nested references).
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
#: A byte string at least this long holding one msgpack map or array (the entry bucket of
#: a directory of more than about 16 000 names) is walked like one, so a create there costs
#: the run its name lands in rather than the whole bucket; what such a string splits into is
#: remembered (:data:`_INNER`), so only the bucket an update changed is walked again.
PACKED_MIN = 8 * 1024
#: Levels of containers walked into (a state's map, a map in it, the strings or
#: entries in that, one more for a map nested there).
MAX_DEPTH = 4
HASH_SIZE = 32
#: A walked container with this many references or more gets a skeleton of its own.
NEST_MIN = 4
#: What follows a nested skeleton's hash in a reference (a part's is the bare hash).
NESTED = b"\x01"


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


def skeleton_hash(skeleton: bytes) -> bytes:
    """The key of a nested skeleton: SHA-256 in a domain of its own, so no part - bytes a
    client chose, an xattr's value - can have a skeleton's key (a part taken for a
    skeleton, or the reverse, would count its references wrongly)."""
    return hashlib.sha256(b"bftfs skeleton\0" + skeleton).digest()


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
    """Collects the pieces of a state, or of one container in it: literal bytes (merged)
    and references.  It reads the state's bytes in place - element boundaries from
    msgpack's own skipping, never a decode and re-encode - so every piece is a slice of
    the state and they join back to it."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.literal: list[bytes] = []
        #: References in order: a part's hash, or a nested skeleton's hash and ``NESTED``.
        self.refs: list[bytes] = []
        #: Every blob the references reach (parts and nested skeletons), by hash.
        self.data: dict[bytes, bytes] = {}
        #: The references of each nested skeleton, by its hash.
        self.kids: dict[bytes, list[bytes]] = {}
        #: This splitter's own skeleton and its hash, once nested somewhere.
        self.sealed: tuple[bytes, bytes] | None = None

    def keep(self, raw: memoryview | bytes) -> None:
        if raw:
            self.literal.append(bytes(raw))

    def ref(self, entry: bytes) -> None:
        self.pieces += [b"".join(self.literal), entry]
        self.literal = []
        self.refs.append(entry)

    def cut(self, raw: memoryview) -> None:
        part = bytes(raw)
        h = blob_hash(part)
        self.data[h] = part
        self.ref(h)

    def whole(self) -> list[bytes]:
        """The pieces, the last literal included: ``[literal, ref, ..., literal]``."""
        return [*self.pieces, b"".join(self.literal)]

    def nest(self, sub: _Splitter) -> None:
        """Add a walked container's pieces: one reference to its own skeleton, stored as
        a blob, when it has :data:`NEST_MIN` references or more (an update elsewhere in
        the state then reuses it whole, and one inside it stores its skeleton again, not
        the state's); inline otherwise."""
        self.data.update(sub.data)
        self.kids.update(sub.kids)
        pieces = sub.whole()
        if len(sub.refs) >= NEST_MIN:
            if sub.sealed is None:  # once per splitter: a cached one is nested again
                skeleton = msgpack.packb(pieces, use_bin_type=True)
                sub.sealed = skeleton_hash(skeleton), skeleton
            h, skeleton = sub.sealed
            self.data[h] = skeleton
            self.kids[h] = sub.refs
            self.ref(h + NESTED)
            return
        self.keep(pieces[0])
        for i in range(1, len(pieces), 2):
            self.ref(pieces[i])
            self.keep(pieces[i + 1])

    def run(self, raw: memoryview) -> None:
        """A run of elements (or one value not walked): a part unless it is short."""
        if len(raw) >= PART_MIN:
            self.cut(raw)
        else:
            self.keep(raw)

    def walk(self, raw: memoryview, depth: int) -> None:
        """The pieces of the one msgpack value ``raw`` holds.

        Raises:
            ValueError, IndexError, msgpack.UnpackException: ``raw`` is not one msgpack
                value.
        """
        kind, size, n = _head(raw)
        if kind == "s":
            if size + n != len(raw):
                raise ValueError("string length")
            inner = _inner(raw[size:], depth + 1) if n >= PACKED_MIN else None
            if inner is not None:
                self.keep(raw[:size])
                self.nest(inner)
            elif n >= BLOB_MIN:
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
                value = raw[mid:end]
                if _head(value)[0] in ("m", "a") and depth + 1 < MAX_DEPTH:
                    sub = _Splitter()
                    sub.walk(value, depth + 1)
                    self.nest(sub)
                else:
                    self.walk(value, depth + 1)
                start = end
            elif ends_run(raw[pos:end]):
                self.run(raw[start:end])
                start = end
            pos = end
        if pos != len(raw):
            raise ValueError("trailing bytes")
        self.run(raw[start:pos])


#: What long strings holding msgpack split into: ``(depth, payload) -> splitter`` (read
#: only once made) or None (not one map or array).  Bounded by :data:`_INNER_MAX` bytes of
#: payloads; a plain dict in insertion order (the oldest goes first), under
#: :data:`_INNER_LOCK` for writes in case a store ever splits off the event loop's thread.
_INNER: dict[tuple[int, bytes], _Splitter | None] = {}
_INNER_MAX = 8 * 1024 * 1024
_INNER_SIZE = [0]
_INNER_LOCK = threading.Lock()
_MISS = _Splitter()


def _inner(payload: memoryview, depth: int) -> _Splitter | None:
    """The pieces of a long string's payload walked as the one msgpack map or array it
    holds, or None if it holds none."""
    if depth >= MAX_DEPTH or _head(payload)[0] not in ("m", "a"):
        return None
    key = (depth, bytes(payload))
    hit = _INNER.get(key, _MISS)
    if hit is not _MISS:
        return hit
    made = _Splitter()
    s: _Splitter | None = made
    try:
        made.walk(payload, depth)
    except (ValueError, IndexError, msgpack.UnpackException):
        s = None
    with _INNER_LOCK:
        _INNER[key] = s
        _INNER_SIZE[0] += len(key[1])
        while _INNER_SIZE[0] > _INNER_MAX and _INNER:
            old = next(iter(_INNER))
            del _INNER[old]
            _INNER_SIZE[0] -= len(old[1])
    return s


Split = tuple[bytes, list[bytes], dict[bytes, bytes], dict[bytes, list[bytes]]]


#: Recent splits, by the state's bytes (read only once made; the oldest goes first past
#: :data:`_SPLITS_MAX` bytes): a multi-object update stores the same applied table, its
#: client's answer, at each of its up to 32 objects, and splitting it again for each was
#: a sixth of a node's update work beside a reader looking over a writer's directory.
_SPLITS: dict[bytes, Split | None] = {}
_SPLITS_MAX = 4 * 1024 * 1024
_SPLITS_SIZE = [0]


def split(state: bytes) -> Split | None:
    """``(skeleton, its references in order, blobs by hash, references of each nested
    skeleton by hash)`` of a state, or None when it is stored whole (small, not one
    msgpack value, nothing worth a part).  Shared with every caller splitting the same
    bytes: never changed."""
    if len(state) < SPLIT_MIN:
        return None
    key = bytes(state)
    hit = _SPLITS.get(key, _MISS)
    if hit is not _MISS:
        return hit  # type: ignore[return-value]
    got = _split(key)
    with _INNER_LOCK:
        _SPLITS[key] = got
        _SPLITS_SIZE[0] += len(key)
        while _SPLITS_SIZE[0] > _SPLITS_MAX and _SPLITS:
            old = next(iter(_SPLITS))
            del _SPLITS[old]
            _SPLITS_SIZE[0] -= len(old)
    return got


def _split(state: bytes) -> Split | None:
    s = _Splitter()
    try:
        s.walk(memoryview(state), 0)
    except (ValueError, IndexError, msgpack.UnpackException):
        return None
    if not s.refs:
        return None
    return msgpack.packb(s.whole(), use_bin_type=True), s.refs, s.data, s.kids


def is_nested(entry: bytes) -> bool:
    """Whether a reference names a nested skeleton (joined in turn), not a part."""
    return len(entry) == HASH_SIZE + 1


def ref_hash(entry: bytes) -> bytes:
    """The blob hash a reference names."""
    return entry[:HASH_SIZE]


def _pieces(skeleton: bytes) -> list[bytes]:
    """A skeleton's pieces: literal bytes at even positions, references at odd ones."""
    try:
        pieces = msgpack.unpackb(skeleton, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData) as e:
        raise BlobError(f"bad skeleton: {e}") from e
    if (
        not isinstance(pieces, list)
        or len(pieces) % 2 != 1
        or not all(isinstance(p, bytes) for p in pieces)
        or any(
            len(h) != HASH_SIZE and (len(h) != HASH_SIZE + 1 or h[HASH_SIZE:] != NESTED)
            for h in pieces[1::2]
        )
    ):
        raise BlobError("bad skeleton")
    return pieces


def references(skeleton: bytes) -> list[bytes]:
    """The references a skeleton holds (:func:`ref_hash`, :func:`is_nested`), once per
    reference; a nested skeleton's own are not included."""
    return _pieces(skeleton)[1::2]


#: How many levels of nested skeletons :func:`join` follows (a state nests at most
#: ``MAX_DEPTH`` containers and one packed string per level).
MAX_NESTING = 2 * MAX_DEPTH + 2


def join(skeleton: bytes, get: Callable[[bytes], bytes | None], nesting: int = 0) -> bytes:
    """The state a skeleton stands for, byte for byte, blobs read through ``get``.

    Raises:
        BlobError: the skeleton does not parse, a blob is missing or nesting goes too deep.
    """
    if nesting > MAX_NESTING:
        raise BlobError("skeletons nested too deep")
    pieces = _pieces(skeleton)
    for i in range(1, len(pieces), 2):
        entry = pieces[i]
        data = get(ref_hash(entry))
        if data is None:
            raise BlobError(f"missing blob {ref_hash(entry).hex()}")
        pieces[i] = join(data, get, nesting + 1) if is_nested(entry) else data
    return b"".join(pieces)
