"""Systematic m-of-N erasure coding (zfec) and cross checksums for PASIS blocks.

A block is striped over the first ``m`` fragments (seed L1186-1189: "stripes the data-item
across the first m data-fragments") and zfec computes the ``N - m`` code fragments, so any
``m`` fragments decode the block and regenerate all ``N`` (seed L849-852).  Fragment ``i`` is
stored at node ``i``.

Cross checksum (seed L854-862, MAKE_CROSS_CHECKSUM at L1000 of Figure 3.1, lines 972-977 of
the seed text): one hash per fragment, concatenated in node order.  We use BLAKE2b-256 instead
of the seed's MD5 (L1194, spec H.10).  Because zfec needs equal-length stripes, the block is
zero-padded to a multiple of ``m``; the true length is recorded *inside* the cross checksum so
that it is covered by the verifier like everything else:

    ======  ==========  =============================================
    offset  size        field
    ======  ==========  =============================================
    0       8           block length in bytes, unsigned big-endian
    8       32 * N      BLAKE2b-256 of fragment 0, 1, ..., N-1
    ======  ==========  =============================================

The verifier that goes into the low-order part of the logical timestamp is the BLAKE2b-256
hash of the whole cross checksum (validating timestamps, seed L875-881, MAKE_TIMESTAMP).

Padding is canonical: the fragment size is exactly ``ceil(length / m)``.  A cross checksum
whose length field disagrees with the fragment size is not the output of :func:`encode` and is
treated like any other poisonous write by :func:`regenerate`.

zfec's parameter names clash with ours: ``zfec.Encoder(k, m)`` takes *k = our m* (fragments
needed) and *its m = our N* (fragments produced).  This is the only module importing zfec.
Everything here is synchronous and releases the GIL inside zfec and hashlib; callers move
large blocks to a worker thread (STYLE.md section 1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import zfec

#: Size of one cross-checksum entry and of the verifier (BLAKE2b-256).
HASH_SIZE = 32
#: Size of the length header at the start of a cross checksum.
LENGTH_SIZE = 8
#: zfec supports at most 256 fragments.
MAX_FRAGMENTS = 256

_FRAG_PERSON = b"bftfs-frag"
_CC_PERSON = b"bftfs-cc"


class ErasureError(ValueError):
    """Invalid coding parameters or inputs that cannot be decoded."""


def fragment_hash(fragment: bytes | memoryview) -> bytes:
    """The cross-checksum entry of one fragment (BLAKE2b-256, domain separated)."""
    return hashlib.blake2b(fragment, digest_size=HASH_SIZE, person=_FRAG_PERSON).digest()


def verifier_of(cross_checksum: bytes) -> bytes:
    """The verifier of a cross checksum: the hash that goes into the logical timestamp."""
    return hashlib.blake2b(cross_checksum, digest_size=HASH_SIZE, person=_CC_PERSON).digest()


def cross_checksum_size(n: int) -> int:
    """Length in bytes of a cross checksum for ``n`` fragments."""
    return LENGTH_SIZE + HASH_SIZE * n


def make_cross_checksum(length: int, fragments: Sequence[bytes]) -> bytes:
    """MAKE_CROSS_CHECKSUM: the length header followed by one hash per fragment in order."""
    parts = [length.to_bytes(LENGTH_SIZE, "big")]
    parts.extend(fragment_hash(f) for f in fragments)
    return b"".join(parts)


def cc_length(cross_checksum: bytes) -> int:
    """The block length recorded in a cross checksum."""
    return int.from_bytes(cross_checksum[:LENGTH_SIZE], "big")


def cc_entry(cross_checksum: bytes, index: int) -> bytes:
    """The hash recorded for fragment ``index``."""
    start = LENGTH_SIZE + HASH_SIZE * index
    return cross_checksum[start : start + HASH_SIZE]


def fragment_matches(cross_checksum: bytes, index: int, fragment: bytes) -> bool:
    """Whether ``fragment`` is the one the cross checksum records at ``index``.

    This is the second half of the seed's VALIDATE (Figure 3.2): ``HASH(D) == CC[S]``.
    The caller checks that ``index`` is in range (the cross checksum size fixes ``N``).
    """
    return hmac.compare_digest(fragment_hash(fragment), cc_entry(cross_checksum, index))


def fragment_size(length: int, m: int) -> int:
    """Size of every fragment of a ``length``-byte block (canonical padding)."""
    return -(-length // m)


@lru_cache(maxsize=64)
def _encoder(m: int, n: int) -> zfec.Encoder:
    # zfec: Encoder(k=fragments needed, m=fragments produced) -- ours are (m, N).
    return zfec.Encoder(m, n)


@lru_cache(maxsize=64)
def _decoder(m: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(m, n)


def check_params(m: int, n: int) -> None:
    """Raise :class:`ErasureError` unless ``1 <= m <= n <= 256``."""
    if not 1 <= m <= n <= MAX_FRAGMENTS:
        raise ErasureError(f"need 1 <= m <= N <= {MAX_FRAGMENTS}, got m={m}, N={n}")


@dataclass(frozen=True)
class Encoded:
    """The output of :func:`encode`: every fragment and the cross checksum over them."""

    #: ``fragments[i]`` goes to node ``i``; ``len(fragments) == N``.
    fragments: tuple[bytes, ...]
    cross_checksum: bytes

    @property
    def verifier(self) -> bytes:
        """The verifier to put into the write's timestamp."""
        return verifier_of(self.cross_checksum)


def encode(data: bytes, m: int, n: int) -> Encoded:
    """ENCODE + MAKE_CROSS_CHECKSUM for one block.

    Args:
        data: the block contents (any length, including 0).
        m: fragments needed to decode (zfec's ``k``).
        n: fragments produced, one per node (zfec's ``m``).
    """
    check_params(m, n)
    size = fragment_size(len(data), m)
    padded = data.ljust(size * m, b"\0")
    stripes = tuple(padded[i * size : (i + 1) * size] for i in range(m))
    if m == n:
        fragments = stripes
    else:
        code = _encoder(m, n).encode(stripes, tuple(range(m, n)))
        fragments = stripes + tuple(bytes(c) for c in code)
    return Encoded(fragments, make_cross_checksum(len(data), fragments))


def _stripes(fragments: Mapping[int, bytes], m: int, n: int) -> list[bytes]:
    """The ``m`` systematic stripes from any ``m`` fragments (by node index)."""
    check_params(m, n)
    if len(fragments) < m:
        raise ErasureError(f"need {m} fragments, got {len(fragments)}")
    # Prefer systematic fragments: decoding from stripes 0..m-1 costs nothing (seed L1686).
    chosen = sorted(fragments)[:m]
    if any(not 0 <= i < n for i in chosen):
        raise ErasureError(f"fragment index out of range 0..{n - 1}: {chosen}")
    sizes = {len(fragments[i]) for i in chosen}
    if len(sizes) != 1:
        raise ErasureError(f"fragments have different sizes {sorted(sizes)}")
    if chosen == list(range(m)):
        return [bytes(fragments[i]) for i in chosen]
    blocks = tuple(fragments[i] for i in chosen)
    return [bytes(s) for s in _decoder(m, n).decode(blocks, tuple(chosen))]


def decode(fragments: Mapping[int, bytes], length: int, m: int, n: int) -> bytes:
    """DECODE: the block from any ``m`` fragments, cut to its true ``length``.

    Raises:
        ErasureError: fewer than ``m`` fragments, unequal sizes, or ``length`` larger than
            the stripes can hold.
    """
    stripes = _stripes(fragments, m, n)
    if length > len(stripes[0]) * m:
        raise ErasureError(f"length {length} exceeds {m} stripes of {len(stripes[0])} bytes")
    return b"".join(stripes)[:length]


@dataclass(frozen=True)
class Regenerated:
    """The result of regenerating a candidate from ``m`` fragments.

    ``valid`` is the validated-cross-checksum test of the seed's READ (Figure 3.2, lines 6-8):
    the cross checksum recomputed from the regenerated fragments equals the candidate's.
    Only then may ``data`` be returned or ``fragments`` be written back as repair.
    """

    valid: bool
    data: bytes
    fragments: tuple[bytes, ...]
    cross_checksum: bytes


def regenerate(
    fragments: Mapping[int, bytes], cross_checksum: bytes, m: int, n: int
) -> Regenerated:
    """GENERATE_FRAGMENTS + MAKE_CROSS_CHECKSUM + compare (poisonous-write detection).

    Decodes ``m`` of ``fragments``, re-encodes all ``N``, and compares the resulting cross
    checksum (length header included) with ``cross_checksum``.  If the fragments that were
    stored under this cross checksum are not one codeword, *every* ``m``-subset regenerates a
    codeword that differs from the recorded one in some position, so every correct reader
    reaches the same verdict whichever nodes it read (seed L1088-1090).

    Fragments that cannot be decoded at all (unequal sizes, non-canonical padding) are a
    poisonous write as well and give ``valid=False`` rather than an exception.
    """
    invalid = Regenerated(False, b"", (), cross_checksum)
    if len(cross_checksum) != cross_checksum_size(n):
        return invalid
    length = cc_length(cross_checksum)
    try:
        stripes = _stripes(fragments, m, n)
    except ErasureError:
        return invalid
    if len(stripes[0]) != fragment_size(length, m):
        return invalid
    data = b"".join(stripes)[:length]
    again = encode(data, m, n)
    if not hmac.compare_digest(again.cross_checksum, cross_checksum):
        return invalid
    return Regenerated(True, data, again.fragments, again.cross_checksum)
