"""Systematic m-of-N erasure coding and cross checksums for PASIS blocks.

A block is striped over the first ``m`` fragments (seed L1186-1189: "stripes the data-item
across the first m data-fragments") and the code computes the ``N - m`` code fragments, so any
``m`` fragments decode the block and regenerate all ``N`` (seed L849-852).  Fragment ``i`` is
stored at node ``i``.

Cross checksum (seed L854-862, MAKE_CROSS_CHECKSUM at L1000 of Figure 3.1, lines 972-977 of
the seed text): one hash per fragment, concatenated in node order.  We use a 256-bit hash
instead of the seed's MD5 (L1194, spec H.10): BLAKE2b-256 or SHA-256, named in the cross
checksum itself.  Because the code needs equal-length stripes, the block is zero-padded to a
multiple of ``m``; the true length is recorded *inside* the cross checksum so that it is
covered by the verifier like everything else.  The code is zfec's (its generator matrix);
:mod:`bftfs.erasure_kernel` computes it with ISA-L's vector kernels where they load, with
zfec's own tables otherwise, byte for byte the same fragments:

    ======  ==========  =============================================
    offset  size        field
    ======  ==========  =============================================
    0       1           fragment hash: 0 = BLAKE2b-256, 1 = SHA-256, 2 = BLAKE3
    1       7           block length in bytes, unsigned big-endian
    8       32 * N      the hash of fragment 0, 1, ..., N-1
    ======  ==========  =============================================

The hash byte was the top byte of a 64-bit length before, always 0 (blocks are at most a
few MiB), so every cross checksum written before names BLAKE2b and reads as it did.  A
writer names BLAKE3 (keyed with a fixed key for domain separation: 6.1 GB/s on the machine
of docs/performance.md against SHA-256's 1.6 with SHA instructions and BLAKE2b's 0.8;
issue 34); versions written before name SHA-256 (where the CPU has SHA instructions, x86
``sha_ni``, arm64 ``sha2``) or BLAKE2b.  Readers and nodes check each version with the hash
it names, and a cross checksum naming any other value validates nothing.  Each is a
256-bit collision-resistant hash, so a writer's choice gives it nothing: the cross checksum
is bound by the verifier in the timestamp whichever it names.

The verifier that goes into the low-order part of the logical timestamp is the BLAKE2b-256
hash of the whole cross checksum (validating timestamps, seed L875-881, MAKE_TIMESTAMP).

Padding is canonical: the fragment size is exactly ``ceil(length / m)``.  A cross checksum
whose length field disagrees with the fragment size is not the output of :func:`encode` and is
treated like any other poisonous write by :func:`regenerate`.

Everything here is synchronous and releases the GIL inside the code's kernel and hashlib;
callers move large blocks to a worker thread (STYLE.md section 1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from blake3 import blake3

from bftfs.buffers import unfilled
from bftfs.erasure_kernel import kernel

#: Size of one cross-checksum entry and of the verifier (BLAKE2b-256).
HASH_SIZE = 32
#: Size of the length header at the start of a cross checksum.
LENGTH_SIZE = 8
#: A code over GF(2^8) has at most 256 fragments.
MAX_FRAGMENTS = 256

_FRAG_PERSON = b"bftfs-frag"
_CC_PERSON = b"bftfs-cc"
#: The fragment hashes a cross checksum may name (its first byte).
HASH_BLAKE2B = 0
HASH_SHA256 = 1
HASH_BLAKE3 = 2
HASHES = (HASH_BLAKE2B, HASH_SHA256, HASH_BLAKE3)
#: The block length takes the low 56 bits of the header.
_LENGTH_MASK = (1 << 56) - 1
#: SHA-256's prefix: the same domain separation BLAKE2b's personalisation gives.
_SHA_PREFIX = hashlib.sha256(_FRAG_PERSON)
#: BLAKE3's key: the same domain separation, as a keyed hash.
_BLAKE3_KEY = hashlib.blake2b(_FRAG_PERSON, digest_size=32).digest()


def _cpu_has_sha() -> bool:
    """Whether this CPU hashes SHA-256 in hardware (Linux: ``/proc/cpuinfo``'s flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool({"sha_ni", "sha2"} & set(line.split(":", 1)[-1].split()))
    except OSError:
        pass
    return False


#: What writers named before BLAKE3 (the cheaper of the two on this CPU).
LEGACY_HASH = HASH_SHA256 if _cpu_has_sha() else HASH_BLAKE2B
#: What this process's writers name (see the module docstring).
DEFAULT_HASH = HASH_BLAKE3


class ErasureError(ValueError):
    """Invalid coding parameters or inputs that cannot be decoded."""


def fragment_hash(fragment: bytes | memoryview, algorithm: int = DEFAULT_HASH) -> bytes:
    """The cross-checksum entry of one fragment (domain separated).

    Raises:
        ErasureError: ``algorithm`` is not one of :data:`HASHES`.
    """
    if algorithm == HASH_BLAKE3:
        return blake3(fragment, key=_BLAKE3_KEY).digest()
    if algorithm == HASH_SHA256:
        h = _SHA_PREFIX.copy()
        h.update(fragment)
        return h.digest()
    if algorithm == HASH_BLAKE2B:
        return hashlib.blake2b(fragment, digest_size=HASH_SIZE, person=_FRAG_PERSON).digest()
    raise ErasureError(f"unknown fragment hash {algorithm}")


def verifier_of(cross_checksum: bytes) -> bytes:
    """The verifier of a cross checksum: the hash that goes into the logical timestamp."""
    return hashlib.blake2b(cross_checksum, digest_size=HASH_SIZE, person=_CC_PERSON).digest()


def cross_checksum_size(n: int) -> int:
    """Length in bytes of a cross checksum for ``n`` fragments."""
    return LENGTH_SIZE + HASH_SIZE * n


def make_cross_checksum(
    length: int, fragments: Sequence[bytes | memoryview], algorithm: int = DEFAULT_HASH
) -> bytes:
    """MAKE_CROSS_CHECKSUM: the header (hash, length) and one hash per fragment in order."""
    if not 0 <= length <= _LENGTH_MASK:
        raise ErasureError(f"block length {length} does not fit a cross checksum")
    parts = [((algorithm << 56) | length).to_bytes(LENGTH_SIZE, "big")]
    parts.extend(fragment_hash(f, algorithm) for f in fragments)
    return b"".join(parts)


def cc_length(cross_checksum: bytes) -> int:
    """The block length recorded in a cross checksum."""
    return int.from_bytes(cross_checksum[:LENGTH_SIZE], "big") & _LENGTH_MASK


def cc_hash(cross_checksum: bytes) -> int:
    """The fragment hash a cross checksum names (may be one this code does not know)."""
    return cross_checksum[0] if cross_checksum else -1


def cc_entry(cross_checksum: bytes, index: int) -> bytes:
    """The hash recorded for fragment ``index``."""
    start = LENGTH_SIZE + HASH_SIZE * index
    return cross_checksum[start : start + HASH_SIZE]


def fragment_matches(cross_checksum: bytes, index: int, fragment: bytes | memoryview) -> bool:
    """Whether ``fragment`` is the one the cross checksum records at ``index``.

    This is the second half of the seed's VALIDATE (Figure 3.2): ``HASH(D) == CC[S]``.
    The caller checks that ``index`` is in range (the cross checksum size fixes ``N``).
    """
    algorithm = cc_hash(cross_checksum)
    if algorithm not in HASHES:
        return False
    return hmac.compare_digest(fragment_hash(fragment, algorithm), cc_entry(cross_checksum, index))


def fragment_size(length: int, m: int) -> int:
    """Size of every fragment of a ``length``-byte block (canonical padding)."""
    return -(-length // m)


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


def encode(
    data: bytes | bytearray | memoryview, m: int, n: int, algorithm: int = DEFAULT_HASH
) -> Encoded:
    """ENCODE + MAKE_CROSS_CHECKSUM for one block.

    Args:
        data: the block contents (any length, including 0); read once, into the stripes,
            which are copies: the fragments and their cross checksum agree even if the
            caller's buffer changes afterwards.
        m: fragments needed to decode.
        n: fragments produced, one per node.
        algorithm: the fragment hash the cross checksum names.
    """
    check_params(m, n)
    stripes = _split(data, m)
    fragments = stripes if m == n else stripes + tuple(kernel().code(stripes, m, n))
    return Encoded(fragments, make_cross_checksum(len(data), fragments, algorithm))


@dataclass(frozen=True)
class EncodedViews:
    """The output of :func:`encode_into`: as :class:`Encoded`, the data fragments being
    read-only views of the stripes' buffer."""

    fragments: tuple[bytes | memoryview, ...]
    cross_checksum: bytes

    @property
    def verifier(self) -> bytes:
        """The verifier to put into the write's timestamp."""
        return verifier_of(self.cross_checksum)


def encode_into(
    length: int,
    fill: Callable[[memoryview], None],
    m: int,
    n: int,
    algorithm: int = DEFAULT_HASH,
) -> tuple[EncodedViews, memoryview]:
    """:func:`encode` of a block that ``fill`` writes, and the block: ``fill`` writes the
    ``length`` bytes into the view it is given, which is the start of the stripes' own
    buffer, so the stripes are views of it rather than copies (:func:`encode` copies the
    block into them: 1 MiB with the GIL held, into fresh pages, per block a sequential
    writer fills; issue 34).  Nothing else holds the buffer: the stripes and the returned
    block are read-only views, so the fragments and their cross checksum always agree."""
    check_params(m, n)
    size = fragment_size(length, m)
    buf = unfilled(size * m)
    with memoryview(buf) as writable:
        fill(writable[:length])
        writable[length:] = bytes(size * m - length)  # the canonical zero padding
    view = memoryview(buf).toreadonly()
    stripes = tuple(view[i * size : (i + 1) * size] for i in range(m))
    coded: list[bytes] = [] if m == n else kernel().code(stripes, m, n)
    fragments: tuple[bytes | memoryview, ...] = (*stripes, *coded)
    cc = make_cross_checksum(length, fragments, algorithm)
    return EncodedViews(fragments, cc), view[:length]


def _split(data: bytes | bytearray | memoryview, m: int) -> tuple[bytes, ...]:
    """The ``m`` stripes of a block, the last zero-padded to the size of the others.

    Each byte of ``data`` is copied once, into its stripe: padding the whole block first
    and slicing the padded copy copied every byte twice (issue 34: a block's length is
    rarely a multiple of ``m``, 256 KiB and 1 MiB never are for ``m = 3``)."""
    size = fragment_size(len(data), m)
    view = memoryview(data)
    stripes = []
    for i in range(m):
        part = view[i * size : (i + 1) * size]
        stripes.append(
            bytes(part) if len(part) == size else b"".join((part, bytes(size - len(part))))
        )
    return tuple(stripes)


def _join(stripes: Sequence[bytes], length: int) -> bytearray:
    """The first ``length`` bytes of the stripes, in one copy, as a new buffer that nothing
    else holds: whoever reads the block may change it in place (a sealed block is opened
    in place, ``crypto.unseal_in_place``: no second buffer of a block's size, issue 34).
    The buffer is not zeroed first: every byte is written here (``buffers.unfilled``)."""
    out = unfilled(length)
    at = 0
    with memoryview(out) as into:  # (a bytearray's slice assignment copies a view first)
        for stripe in stripes:
            if at >= length:
                break
            take = min(len(stripe), length - at)
            into[at : at + take] = memoryview(stripe)[:take]
            at += take
    if at != length:  # (callers check the sizes first) never hand out unwritten memory
        raise ErasureError(f"{len(stripes)} stripes hold {at} bytes, not {length}")
    return out


def _padding_is_zero(stripes: Sequence[bytes], length: int) -> bool:
    """Whether every byte of the stripes past ``length`` is zero (the canonical padding)."""
    size = len(stripes[0]) if stripes else 0
    for i, stripe in enumerate(stripes):
        tail = stripe[max(length - i * size, 0) :]  # fewer than m bytes in all
        if tail.count(0) != len(tail):
            return False
    return True


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
    return kernel().stripes([fragments[i] for i in chosen], chosen, m, n)


def decode(fragments: Mapping[int, bytes], length: int, m: int, n: int) -> bytearray:
    """DECODE: the block from any ``m`` fragments, cut to its true ``length``, in a new
    buffer the caller owns (:func:`_join`).

    Raises:
        ErasureError: fewer than ``m`` fragments, unequal sizes, or ``length`` larger than
            the stripes can hold.
    """
    stripes = _stripes(fragments, m, n)
    if length > len(stripes[0]) * m:
        raise ErasureError(f"length {length} exceeds {m} stripes of {len(stripes[0])} bytes")
    return _join(stripes, length)


@dataclass(frozen=True)
class Regenerated:
    """The result of regenerating a candidate from ``m`` fragments.

    ``valid`` is the validated-cross-checksum test of the seed's READ (Figure 3.2, lines 6-8):
    the cross checksum recomputed from the regenerated fragments equals the candidate's.
    Only then may ``data`` be returned or ``fragments`` be written back as repair.
    """

    valid: bool
    #: A buffer of its own (:func:`_join`), or ``b""`` for an invalid candidate.
    data: bytes | bytearray
    fragments: tuple[bytes, ...]
    cross_checksum: bytes


def regenerate(
    fragments: Mapping[int, bytes],
    cross_checksum: bytes,
    m: int,
    n: int,
    *,
    checked: bool = False,
) -> Regenerated:
    """GENERATE_FRAGMENTS + MAKE_CROSS_CHECKSUM + compare (poisonous-write detection).

    Decodes ``m`` of ``fragments``, re-encodes all ``N``, and compares the resulting cross
    checksum (length header included) with ``cross_checksum``.  If the fragments that were
    stored under this cross checksum are not one codeword, *every* ``m``-subset regenerates a
    codeword that differs from the recorded one in some position, so every correct reader
    reaches the same verdict whichever nodes it read (seed L1088-1090).

    ``checked``: every given fragment was already found to match its entry of
    ``cross_checksum`` (a reader's VALIDATE).  The ``m`` fragments decoded from come back
    unchanged from re-encoding (the codeword through ``m`` positions is unique), so only
    the other ``N - m`` are hashed and compared: the same verdict for half the hashing.

    Fragments that cannot be decoded at all (unequal sizes, non-canonical padding) are a
    poisonous write as well and give ``valid=False`` rather than an exception.
    """
    invalid = Regenerated(False, b"", (), cross_checksum)
    if len(cross_checksum) != cross_checksum_size(n) or cc_hash(cross_checksum) not in HASHES:
        return invalid
    length = cc_length(cross_checksum)
    try:
        stripes = _stripes(fragments, m, n)
    except ErasureError:
        return invalid
    if len(stripes[0]) != fragment_size(length, m):
        return invalid
    data = _join(stripes, length)
    if not checked:
        again = encode(data, m, n, cc_hash(cross_checksum))
        if not hmac.compare_digest(again.cross_checksum, cross_checksum):
            return invalid
        return Regenerated(True, data, again.fragments, again.cross_checksum)
    if not _padding_is_zero(stripes, length):
        return invalid  # not the canonical zero padding encode() writes
    code = kernel().code(stripes, m, n) if m < n else []
    regenerated = tuple(stripes) + tuple(code)
    given = sorted(fragments)[:m]
    algorithm = cc_hash(cross_checksum)
    for i in range(n):
        if i in given:
            continue  # equal to the given fragment, whose hash matched
        if not hmac.compare_digest(
            fragment_hash(regenerated[i], algorithm), cc_entry(cross_checksum, i)
        ):
            return invalid
    return Regenerated(True, data, regenerated, cross_checksum)
