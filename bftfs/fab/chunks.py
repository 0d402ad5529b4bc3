"""The replicated state in chunks: a digest that costs what changed, transfers in pieces.

Seed 003 checkpoints (L5896-5933) certify a digest of the state; a lagging node installs a
state whose digest the certificate names.  One canonical blob of the whole state costs
O(state) to encode and hash at every checkpoint, and cannot cross one frame (8 MiB,
``net/frames.py``) once the metadata grows past it.  So the state is cut in chunks:

- chunk 0, the *head*: ``[executed, session table, versions clock]``;
- chunks ``1 .. BUCKETS``: every object id falls in one bucket by a hash of its canonical
  encoding (the same on every node, whatever order the ids arrived in), and a bucket's
  encoding is the list, by id, of ``[oid, [state] or [], owner or None, changed or
  None]``: the object's state (``[]``: none), who is charged for it (``owners``) and the
  slot it last changed at with that version's time and client, ``[slot, time, client]``
  (the versions summary's per-object part, ``fab/versions.py``; the slot alone in a
  state of the format before those stamps).

A chunk's encoding is cut into *pieces* of at most :data:`PIECE` bytes.  The *manifest*
lists, per chunk in order, the number of its pieces (2 bytes, big-endian) and their
BLAKE2b digests (32 bytes each); the checkpoint digest (the *root*) is the digest of the
manifest.  It certifies the whole state, as before; two
nodes with the same state compute the same pieces, manifest and root, however they
reached it (executed every slot, restarted, installed a transferred state).

:class:`~bftfs.fab.execution.Execution` keeps each chunk's pieces and re-encodes only the
buckets an executed update touched, so a checkpoint costs O(changed objects + buckets).
A :class:`StateImage` is immutable: the pieces a checkpoint holds are shared with the
next one where unchanged (copy-on-write), and a node serves the stable state from it
while it goes on executing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from bftfs.qu.canon import canonical

#: Buckets of object ids: fixed for every cluster (a change changes every digest).  More
#: buckets re-encode less per changed object but make the manifest longer (34 bytes a
#: bucket, hashed and stored at every checkpoint): at 1024, a state of 50 000 objects of
#: 1 KB has buckets of 50 KB and a manifest of 35 KB (benchmarks/fab_state.py).
BUCKETS = 1024
#: Largest piece of a chunk's encoding, the unit of state transfer (a frame is 8 MiB; a
#: node queues pieces for a peer, so they are kept well below it).
PIECE = 256 * 1024
#: Most pieces a state may have (a manifest of ``MAX_PIECES`` digests, 34 bytes each,
#: stays below a piece's size): some 1.5 GiB of metadata.  A manifest with more is refused.
MAX_PIECES = 7000
DIGEST = 32

Pieces = tuple[bytes, ...]


def digest_of(data: bytes) -> bytes:
    """The BLAKE2b digest of a piece or a manifest."""
    return hashlib.blake2b(data, digest_size=DIGEST).digest()


def bucket_of(oid: int) -> int:
    """The bucket of object ``oid``: a hash, so ids handed out in runs spread evenly."""
    h = hashlib.blake2b(canonical(oid), digest_size=8).digest()
    return int.from_bytes(h, "big") % BUCKETS


def cut(encoding: bytes) -> Pieces:
    """``encoding`` in pieces of at most :data:`PIECE` bytes (an empty one: one piece)."""
    return tuple(encoding[i : i + PIECE] for i in range(0, max(len(encoding), 1), PIECE))


def encode_bucket(entries: Iterable[list[Any]]) -> bytes:
    """A bucket's encoding: ``entries`` (``[oid, [state] or [], owner, changed]``) by id."""
    return canonical(sorted(entries, key=lambda e: e[0]))


def entry(digests: tuple[bytes, ...]) -> bytes:
    """A chunk's part of the manifest: its number of pieces and their digests."""
    return len(digests).to_bytes(2, "big") + b"".join(digests)


#: An empty bucket's pieces and their digests (most buckets of a small state).
EMPTY: Pieces = cut(encode_bucket([]))
EMPTY_DIGESTS = tuple(digest_of(p) for p in EMPTY)
EMPTY_ENTRY = entry(EMPTY_DIGESTS)


@dataclass(frozen=True)
class StateImage:
    """The state at checkpoint ``seq``: per chunk its pieces and their digests, the
    manifest and its root.  Never changed once made (served while execution goes on)."""

    seq: int
    chunks: tuple[Pieces, ...]
    digests: tuple[tuple[bytes, ...], ...]
    manifest: bytes
    root: bytes
    #: Every piece and its digest in manifest order (state transfer numbers them from 1;
    #: 0 is the manifest).
    pieces: tuple[bytes, ...]
    piece_digests: tuple[bytes, ...]

    @classmethod
    def of(
        cls,
        seq: int,
        chunks: Sequence[Pieces],
        digests: Sequence[tuple[bytes, ...]],
        entries: Sequence[bytes] | None = None,
    ) -> StateImage:
        """The image of ``chunks`` with their ``digests`` (``entries``: each chunk's part
        of the manifest, :func:`entry`, if the caller keeps them)."""
        manifest = b"".join(entries if entries is not None else map(entry, digests))
        pieces = tuple(chain.from_iterable(chunks))
        flat = tuple(chain.from_iterable(digests))
        return cls(seq, tuple(chunks), tuple(digests), manifest, digest_of(manifest), pieces, flat)

    def size(self) -> int:
        """Bytes of its pieces."""
        return sum(len(p) for p in self.pieces)


def parse_manifest(manifest: bytes) -> list[list[bytes]] | None:
    """The digests per chunk a manifest lists, or None if it is not one (wrong shape, more
    than :data:`MAX_PIECES` pieces): checked before its root is compared."""
    chunks: list[list[bytes]] = []
    at = 0
    while at < len(manifest) and len(chunks) <= BUCKETS:
        count = int.from_bytes(manifest[at : at + 2], "big")
        end = at + 2 + count * DIGEST
        if count == 0 or end > len(manifest):
            return None
        chunks.append([manifest[i : i + DIGEST] for i in range(at + 2, end, DIGEST)])
        at = end
    if at != len(manifest) or len(chunks) != BUCKETS + 1:
        return None
    return chunks if sum(len(c) for c in chunks) <= MAX_PIECES else None


def assemble(seq: int, digests: list[list[bytes]], pieces: Sequence[bytes]) -> StateImage | None:
    """The image at ``seq`` of ``pieces`` (in manifest order) under ``digests``, or None if
    a piece does not match its digest."""
    if len(pieces) != sum(len(c) for c in digests):
        return None
    chunks: list[Pieces] = []
    at = 0
    for c in digests:
        chunk = tuple(pieces[at : at + len(c)])
        if any(digest_of(p) != d for p, d in zip(chunk, c, strict=True)):
            return None
        chunks.append(chunk)
        at += len(c)
    return StateImage.of(seq, chunks, [tuple(c) for c in digests])
