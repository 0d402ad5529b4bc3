"""Large object states stored once per distinct part (content-addressed blobs).

A node keeps every Q/U object version (the version history depends on it), and a method's
new state is a whole value: a directory of 5000 names is about 165 KB of entry buckets, and
each create or unlink used to store all of it again, so storage grew with the square of a
directory's size.  Most of such a state is byte strings the update did not touch (the other
buckets of :mod:`bftfs.fsobjects.dirents`, an inline file's content under a chmod).  This module
splits a large state into a *skeleton* - its bytes with each large byte string replaced
by a reference to the string's hash - and the byte strings themselves, which the store
keeps once, by hash, with a reference count (:mod:`bftfs.qu.schema`).  An update of one
bucket then costs the skeleton (about 2.5 KB) and one new bucket.

Splitting is a storage matter only: what a version *is* stays its canonical bytes.  A
skeleton is the state's own bytes with each large byte string cut out and a reference put
in its place, so :func:`join` is a concatenation that gives back exactly those bytes (no
re-encoding, nothing to trust about the encoder).  Only byte strings at the top level of a
map state and one map level down are looked for: that is where object types keep bulk data
(directory buckets, inline file content), and a bounded walk keeps splitting cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgpack

#: States shorter than this are stored whole (splitting would cost more than it saves).
SPLIT_MIN = 8 * 1024
#: Byte strings at least this long are stored as blobs.
BLOB_MIN = 1024
HASH_SIZE = 32


class BlobError(Exception):
    """A skeleton that does not parse or names a blob the store does not hold."""


def blob_hash(data: bytes) -> bytes:
    """The key of a blob: SHA-256 of its bytes (a client choosing directory names cannot
    make two buckets collide; SHA-256 is the fastest full-strength hash here, 2 us per
    2.4 KB bucket against 3.6 us for BLAKE2b)."""
    return hashlib.sha256(data).digest()


def _large(value: Any) -> list[bytes]:
    """The large byte strings of a state's value, in encoding order."""
    out: list[bytes] = []
    if not isinstance(value, dict):
        return out
    for v in value.values():
        for x in v.values() if isinstance(v, dict) else (v,):
            if isinstance(x, bytes) and len(x) >= BLOB_MIN:
                out.append(x)
    return out


def split(state: bytes) -> tuple[bytes, list[bytes], dict[bytes, bytes]] | None:
    """``(skeleton, references in order, blobs by hash)`` of a large map state, or None
    when it is not worth splitting (small, not a map, no large byte strings)."""
    if len(state) < SPLIT_MIN:
        return None
    try:
        value = msgpack.unpackb(state, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData):
        return None
    pieces: list[Any] = []
    refs: list[bytes] = []
    data: dict[bytes, bytes] = {}
    pos = 0
    for blob in _large(value):
        at = state.find(blob[:64], pos)  # a short needle finds it faster...
        if at < 0 or state[at : at + len(blob)] != blob:  # ...then check the whole
            at = state.find(blob, pos)
        if at < 0:  # cannot happen for a value unpacked from these bytes
            return None
        # The cut-out bytes equal the blob wherever find matched, so joining gives back
        # ``state`` exactly.
        h = blob_hash(blob)
        pieces += [state[pos:at], h]
        refs.append(h)
        data[h] = blob
        pos = at + len(blob)
    if not refs:
        return None
    pieces.append(state[pos:])
    return msgpack.packb(pieces, use_bin_type=True), refs, data  # [bytes, hash, ..., bytes]


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
