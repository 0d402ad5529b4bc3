"""On-disk layout of PASIS block versions in a node's store (DESIGN.md "Storage on a node").

Schema version :data:`RW_SCHEMA_VERSION`.  Named databases:

``rw.versions`` - one entry per hosted version (seed L1147-1151: a multi-version b-tree keyed
by ``<block, timestamp>``):

    ==========  ====  ==========================================================
    part        size  content
    ==========  ====  ==========================================================
    key         16    block id, unsigned big-endian
                44    timestamp (timestamp.py layout: time, writer, verifier)
    value       1     flags (bit 0: verified by lazy verification; others 0)
                2     length of the cross checksum, unsigned big-endian
                var   cross checksum
                var   the fragment (the rest of the value)
    ==========  ====  ==========================================================

Because both parts of the key are fixed-width big-endian, byte order is (block, time)
order: READ_LATEST is one reverse seek from the end of the block's range, READ_PREV one
reverse seek from ``(block, lt)``, and a bounded history is the next few reverse steps.

``rw.floor`` - key: block id (16 bytes); value: a timestamp (44 bytes).  Versions of the block
strictly below it may have been garbage-collected; every version at or above it is kept.
Absent means nothing was ever collected.

``rw.verified`` - key: block id (16 bytes); value: a timestamp (44 bytes).  A version at or
above it is known to be complete and valid (this node verified one, or ``b + 1`` NOTIFYs
put it there: node/rw_verifier.py); garbage collection never raises the floor above it.
Absent: nothing verified yet.  (Added in schema 1 without a version change: a store
without it simply has nothing verified.)

``rw.flags`` - key: a version key (as in ``rw.versions``); value: flags (1 byte, bit 0:
verified).  Where a version's verified flag is set since issue 19: setting bit 0 of the
version's own value rewrote its whole fragment (about 22 KB per 64 KiB block with m = 3),
so lazy verification wrote every block to the disk a second time.  A version is verified
when either its value's bit 0 (stores flagged before) or its entry here says so; the entry
is deleted with the version.  (Added in schema 1 without a version change: a store
without it has its flags in the values.)

``rw.thinned`` - key: a version key (as in ``rw.versions``); value: empty.  A version the
retention schedule thinned away (rw/collect.py ``thin_step``): a hole above the floor.
READ_PREV reports a floor just above the newest hole at or below what it asks for
(``rw.replica.read_step``), so a read of the past at a thinned version learns that it is
gone instead of taking an older version for it.  Entries below the floor are deleted
with it.  (Added in schema 1 without a version change: a store without it has no holes.)

``rw.charge`` - key: a version key (as in ``rw.versions``); value: 8 bytes owner (the
principal id the version's bytes are charged to: the client that wrote it, or a node for
what catch-up and verification stored), 8 bytes size (key plus stored value), both
unsigned big-endian.  Written and deleted in the same transaction as the version itself
(rw/quota.py), so a crash can neither leak nor double count.

``rw.usage`` - key: an owner (8 bytes); value: the sum of its charges (8 bytes).  The
per-client quota of ``[limits]`` is checked against it.  (Both added in schema 1 without a
version change: versions stored before them are charged to nobody.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bftfs.rw.messages import BLOCK_ID_SIZE, encode_block_id
from bftfs.rw.timestamp import TIMESTAMP_SIZE, Timestamp

RW_SCHEMA_VERSION = 1
DB_VERSIONS = "rw.versions"
DB_FLOOR = "rw.floor"
DB_VERIFIED = "rw.verified"
DB_CHARGE = "rw.charge"
DB_USAGE = "rw.usage"
DB_FLAGS = "rw.flags"
DB_THINNED = "rw.thinned"
#: The in-node scrub's clock (node/rw_scrubber.py): ``since`` (when the node first waited
#: for a pass) and ``last`` (when its last pass ended), node clock ns, 8 bytes big-endian.
DB_SCRUB = "rw.scrub"

FLAG_VERIFIED = 0x01

_HEAD = struct.Struct(">BH")
#: Appended to a block prefix, sorts after every key of that block.
_AFTER = b"\xff" * (TIMESTAMP_SIZE + 1)


class SchemaError(ValueError):
    """A stored entry that does not follow this layout (local corruption)."""


def version_key(block: int, ts: Timestamp) -> bytes:
    """The key of one version."""
    return encode_block_id(block) + ts.encode()


def block_prefix(block: int) -> bytes:
    """The first possible key of ``block`` (every version key starts with it)."""
    return encode_block_id(block)


def block_end(block: int) -> bytes:
    """A bound above every version key of ``block`` and below the next block's keys."""
    return encode_block_id(block) + _AFTER


def split_key(key: bytes) -> tuple[int, Timestamp]:
    """(block, timestamp) of a version key."""
    if len(key) != BLOCK_ID_SIZE + TIMESTAMP_SIZE:
        raise SchemaError(f"version key of {len(key)} bytes")
    return int.from_bytes(key[:BLOCK_ID_SIZE], "big"), Timestamp.decode(key[BLOCK_ID_SIZE:])


@dataclass(frozen=True)
class StoredVersion:
    """The value stored for one version."""

    flags: int
    cross_checksum: bytes
    fragment: bytes

    def encode(self) -> bytes:
        return (
            _HEAD.pack(self.flags, len(self.cross_checksum)) + self.cross_checksum + self.fragment
        )

    @classmethod
    def decode(cls, raw: bytes) -> StoredVersion:
        if len(raw) < _HEAD.size:
            raise SchemaError("stored version shorter than its header")
        flags, cc_len = _HEAD.unpack_from(raw)
        end = _HEAD.size + cc_len
        if len(raw) < end:
            raise SchemaError("stored version shorter than its cross checksum")
        return cls(flags, bytes(raw[_HEAD.size : end]), bytes(raw[end:]))
