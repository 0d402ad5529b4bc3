"""Erasure coding and cross checksums (bftfs/erasure.py; seed L849-895, L1181-1196)."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bftfs import erasure

CONFIGS = [(1, 1), (1, 6), (2, 5), (3, 6), (5, 11), (4, 4)]


@pytest.mark.parametrize("m,n", CONFIGS)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 16384, 16385, 32 * 1024 + 1])
def test_round_trip_from_every_m_subset(m: int, n: int, size: int) -> None:
    data = random.Random(size * 31 + m).randbytes(size)
    enc = erasure.encode(data, m, n)
    assert len(enc.fragments) == n
    assert len({len(f) for f in enc.fragments}) == 1
    subsets = list(itertools.combinations(range(n), m))
    for subset in subsets[:: max(1, len(subsets) // 40)]:
        frags = {i: enc.fragments[i] for i in subset}
        assert erasure.decode(frags, size, m, n) == data
        regen = erasure.regenerate(frags, enc.cross_checksum, m, n)
        assert regen.valid and regen.data == data and regen.fragments == enc.fragments


@pytest.mark.parametrize("m,n", CONFIGS)
def test_code_is_systematic_with_recorded_length(m: int, n: int) -> None:
    data = b"abcdefghij" * 7  # 70 bytes: padded when m does not divide it
    enc = erasure.encode(data, m, n)
    stripes = b"".join(enc.fragments[:m])
    assert stripes[: len(data)] == data and set(stripes[len(data) :]) <= {0}
    assert len(enc.fragments[0]) == -(-len(data) // m)
    assert erasure.cc_length(enc.cross_checksum) == len(data)


def test_zfec_parameter_order_our_m_is_needed_our_n_is_produced() -> None:
    enc = erasure.encode(b"x" * 30, 3, 6)
    assert len(enc.fragments) == 6 and len(enc.fragments[0]) == 10
    with pytest.raises(erasure.ErasureError):
        erasure.decode({0: enc.fragments[0], 5: enc.fragments[5]}, 30, 3, 6)


def test_m_equal_1_is_replication() -> None:
    enc = erasure.encode(b"replica", 1, 4)
    assert set(enc.fragments) == {b"replica"}


@pytest.mark.parametrize("m,n", [(0, 3), (4, 3), (1, 257)])
def test_invalid_parameters_are_refused(m: int, n: int) -> None:
    with pytest.raises(erasure.ErasureError):
        erasure.encode(b"x", m, n)


def test_cross_checksum_layout_and_verifier() -> None:
    enc = erasure.encode(b"hello", 2, 5)
    cc = enc.cross_checksum
    assert len(cc) == erasure.cross_checksum_size(5) == 8 + 32 * 5
    for i, frag in enumerate(enc.fragments):
        assert erasure.cc_entry(cc, i) == erasure.fragment_hash(frag)
        assert erasure.fragment_matches(cc, i, frag)
        assert not erasure.fragment_matches(cc, (i + 1) % 5, frag)
    assert enc.verifier == erasure.verifier_of(cc)
    assert erasure.verifier_of(cc[:-1] + bytes([cc[-1] ^ 1])) != enc.verifier


@pytest.mark.parametrize("algorithm", erasure.HASHES)
def test_each_fragment_hash_round_trips_and_is_named_in_the_cross_checksum(
    algorithm: int,
) -> None:
    """A cross checksum names its fragment hash in its first byte; readers and nodes check
    with that hash, whichever this machine's writers would pick."""
    data = random.Random(algorithm).randbytes(1000)
    enc = erasure.encode(data, 3, 6, algorithm)
    cc = enc.cross_checksum
    assert erasure.cc_hash(cc) == algorithm and erasure.cc_length(cc) == len(data)
    for i, frag in enumerate(enc.fragments):
        assert erasure.cc_entry(cc, i) == erasure.fragment_hash(frag, algorithm)
        assert erasure.fragment_matches(cc, i, frag)
    regen = erasure.regenerate(dict(enumerate(enc.fragments[3:], start=3)), cc, 3, 6)
    assert regen.valid and regen.data == data and regen.cross_checksum == cc
    # The same fragments under the other hash are another write (other entries, another
    # verifier), valid under the hash it names.
    other_hash = erasure.HASHES[(erasure.HASHES.index(algorithm) + 1) % len(erasure.HASHES)]
    other = erasure.make_cross_checksum(len(data), enc.fragments, other_hash)
    head = erasure.LENGTH_SIZE
    assert other[head:] != cc[head:] and erasure.verifier_of(other) != enc.verifier
    assert erasure.regenerate(dict(enumerate(enc.fragments[:3])), other, 3, 6).valid


def test_a_cross_checksum_from_before_the_hash_byte_reads_as_blake2b() -> None:
    """Before the hash byte, the header was a 64-bit length (its top byte 0): such a cross
    checksum, built here by hand as that code did, names BLAKE2b and validates."""
    import hashlib

    data = b"written by an older bftfs" * 10
    enc = erasure.encode(data, 2, 5, erasure.HASH_BLAKE2B)
    old = len(data).to_bytes(8, "big") + b"".join(
        hashlib.blake2b(f, digest_size=32, person=b"bftfs-frag").digest() for f in enc.fragments
    )
    assert old == enc.cross_checksum
    assert erasure.regenerate(dict(enumerate(enc.fragments[2:], start=2)), old, 2, 5).valid


def test_a_cross_checksum_naming_an_unknown_hash_validates_nothing() -> None:
    enc = erasure.encode(b"x" * 100, 2, 5)
    bad = bytes([7]) + enc.cross_checksum[1:]
    assert erasure.cc_length(bad) == 100
    assert not any(erasure.fragment_matches(bad, i, f) for i, f in enumerate(enc.fragments))
    assert not erasure.regenerate(dict(enumerate(enc.fragments[:2])), bad, 2, 5).valid
    with pytest.raises(erasure.ErasureError):
        erasure.fragment_hash(b"x", 7)


def test_flipped_bit_fails_its_entry() -> None:
    enc = erasure.encode(bytes(range(200)), 3, 6)
    bad = bytearray(enc.fragments[4])
    bad[7] ^= 0x10
    assert not erasure.fragment_matches(enc.cross_checksum, 4, bytes(bad))


def _poisonous(m: int, n: int, a: bytes, b: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """Fragments of two values under one self-consistent cross checksum (a Byzantine writer)."""
    ea, eb = erasure.encode(a, m, n), erasure.encode(b, m, n)
    mixed = ea.fragments[: n // 2] + eb.fragments[n // 2 :]
    return mixed, erasure.make_cross_checksum(len(a), mixed)


@pytest.mark.parametrize("checked", [False, True])
@pytest.mark.parametrize("m,n", [(2, 5), (3, 6), (5, 11)])
def test_poisonous_write_fails_regeneration_from_every_subset(
    m: int, n: int, checked: bool
) -> None:
    """``checked`` (a reader's fragments validated against their entries: only the
    regenerated others are hashed) reaches the same verdict from every subset."""
    a, b = b"A" * 90, b"B" * 90
    mixed, cc = _poisonous(m, n, a, b)
    # Each fragment matches its own entry, so every node accepts its part ...
    assert all(erasure.fragment_matches(cc, i, f) for i, f in enumerate(mixed))
    # ... but no m-subset regenerates the recorded cross checksum (seed L1088-1090).
    for subset in itertools.combinations(range(n), m):
        regen = erasure.regenerate({i: mixed[i] for i in subset}, cc, m, n, checked=checked)
        assert not regen.valid


def test_a_checked_regeneration_hashes_only_the_fragments_it_made() -> None:
    """The reader's regeneration hashes the ``N - m`` fragments it re-encoded, not the
    ``m`` it was given (already validated): half the hashing for m = 3, N = 6."""
    data = random.Random(3).randbytes(3000)
    enc = erasure.encode(data, 3, 6)
    given = {i: enc.fragments[i] for i in (0, 2, 4)}
    hashed: list[bytes] = []
    real = erasure.fragment_hash

    def counting(fragment: bytes, algorithm: int = erasure.DEFAULT_HASH) -> bytes:
        hashed.append(bytes(fragment))
        return real(fragment, algorithm)

    erasure.fragment_hash = counting  # type: ignore[assignment]
    try:
        regen = erasure.regenerate(given, enc.cross_checksum, 3, 6, checked=True)
    finally:
        erasure.fragment_hash = real  # type: ignore[assignment]
    assert regen.valid and regen.data == data and regen.fragments == enc.fragments
    assert sorted(hashed) == sorted(enc.fragments[i] for i in (1, 3, 5))


def test_a_block_written_today_names_blake3() -> None:
    enc = erasure.encode(b"new", 3, 6)
    assert erasure.cc_hash(enc.cross_checksum) == erasure.HASH_BLAKE3 == erasure.DEFAULT_HASH


@pytest.mark.parametrize("checked", [False, True])
def test_non_canonical_padding_and_bad_sizes_are_poisonous(checked: bool) -> None:
    m, n = 3, 6
    # Stripes with non-zero padding: re-encoding the cut value gives other stripes.
    stripes = (b"abcd", b"efgh", b"ij\x01\x02")
    code = erasure.encode(b"abcdefghij\x01\x02", m, n).fragments
    frags = stripes + code[3:]
    cc = erasure.make_cross_checksum(10, frags)
    for subset in itertools.combinations(range(n), m):
        given = {i: frags[i] for i in subset}
        assert not erasure.regenerate(given, cc, m, n, checked=checked).valid
    # A length the stripes cannot hold, and fragments of unequal sizes.
    enc = erasure.encode(b"x" * 9, m, n)
    big = erasure.make_cross_checksum(100, enc.fragments)
    first = dict(enumerate(enc.fragments[:3]))
    assert not erasure.regenerate(first, big, m, n, checked=checked).valid
    uneven = {0: b"aaa", 1: b"bb", 2: b"ccc"}
    assert not erasure.regenerate(uneven, enc.cross_checksum, m, n, checked=checked).valid
    assert not erasure.regenerate(first, b"short", m, n, checked=checked).valid


@pytest.mark.parametrize("checked", [False, True])
def test_padding_that_fills_whole_stripes_must_be_zero(checked: bool) -> None:
    # One byte over three stripes: stripes 1 and 2 are all padding.
    m, n = 3, 6
    good = erasure.encode(b"z", m, n)
    assert erasure.regenerate(dict(enumerate(good.fragments[:3])), good.cross_checksum, m, n)
    for bad in ((b"z", b"\x00", b"\x07"), (b"z", b"\x07", b"\x00")):
        code = erasure.encode(b"".join(bad), m, n).fragments[3:]
        frags = bad + code
        cc = erasure.make_cross_checksum(1, frags)
        for subset in itertools.combinations(range(n), m):
            given = {i: frags[i] for i in subset}
            assert not erasure.regenerate(given, cc, m, n, checked=checked).valid


def _peak_allocated(fn: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


@pytest.mark.parametrize("size", [256 * 1024, 1024 * 1024])
def test_coding_copies_a_block_once(size: int) -> None:
    """Issue 34: encode copies each byte of the block once, into its stripe (plus the
    code fragments it makes); decode and a checked regeneration join the stripes once.
    Padding the block and slicing the copy, or joining and cutting the padding off, took
    twice the memory (and the time of a second copy)."""
    m, n = 3, 6
    data = random.Random(34).randbytes(size)  # not a multiple of m: padded
    enc = erasure.encode(data, m, n)
    stripes = dict(enumerate(enc.fragments[:m]))
    # The stripes (size) and the N - m code fragments (size again), no second copy.
    assert _peak_allocated(lambda: erasure.encode(data, m, n)) < 2.1 * size
    assert _peak_allocated(lambda: erasure.decode(stripes, size, m, n)) < 1.1 * size
    regen = erasure.regenerate(stripes, enc.cross_checksum, m, n, checked=True)
    assert regen.valid and regen.data == data
    # The joined data (size) and the code fragments it re-makes (size).
    assert (
        _peak_allocated(lambda: erasure.regenerate(stripes, enc.cross_checksum, m, n, checked=True))
        < 2.1 * size
    )


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4096, 256 * 1024 + 48, 1024 * 1024 + 48])
def test_a_block_written_into_its_stripes_encodes_as_a_copied_one(length: int) -> None:
    """``encode_into`` (issue 34: a block sealed straight into the stripes it is coded
    from) gives the fragments and cross checksum ``encode`` gives for the same bytes, and
    the block; the stripes are read-only views of one buffer of their own, not copies."""
    m, n = 3, 6
    data = random.Random(length).randbytes(length)

    def fill(out: memoryview) -> None:
        out[:] = data

    enc, block = erasure.encode_into(length, fill, m, n)
    ref = erasure.encode(data, m, n)
    assert bytes(block) == data and enc.cross_checksum == ref.cross_checksum
    assert [bytes(f) for f in enc.fragments] == list(ref.fragments)
    stripes = enc.fragments[:m]
    assert all(isinstance(f, memoryview) and f.readonly for f in (*stripes, block))
    assert len({id(f.obj) for f in stripes}) == 1  # views of one buffer
    got = erasure.decode(dict(enumerate(enc.fragments[m:], start=m)), length, m, n)
    assert got == data
    # Copying the block into stripes held about its size again; writing it there, nothing.
    if length >= 256 * 1024:
        assert _peak_allocated(lambda: erasure.encode_into(length, fill, m, n)) < 2.1 * length
        assert _peak_allocated(lambda: erasure.encode(data, m, n)) > 1.9 * length


def test_decode_errors() -> None:
    enc = erasure.encode(b"x" * 9, 3, 6)
    with pytest.raises(erasure.ErasureError):
        erasure.decode({0: enc.fragments[0]}, 9, 3, 6)
    with pytest.raises(erasure.ErasureError):
        erasure.decode(dict(enumerate(enc.fragments[:3])), 10, 3, 6)
    with pytest.raises(erasure.ErasureError):
        erasure.decode({0: b"a", 1: b"b", 9: b"c"}, 3, 3, 6)


@given(st.binary(max_size=2000), st.sampled_from(CONFIGS), st.randoms(use_true_random=False))
def test_any_m_fragments_regenerate_all(
    data: bytes, cfg: tuple[int, int], rnd: random.Random
) -> None:
    m, n = cfg
    enc = erasure.encode(data, m, n)
    subset = rnd.sample(range(n), m)
    for checked in (False, True):
        regen = erasure.regenerate(
            {i: enc.fragments[i] for i in subset}, enc.cross_checksum, m, n, checked=checked
        )
        assert regen.valid and regen.data == data and regen.fragments == enc.fragments


@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 3), (3, 6)])
def test_decoding_hands_out_a_buffer_of_its_own(m: int, n: int) -> None:
    """The reader of a block may open it in place (``crypto.unseal_in_place``): decode
    and regenerate give a new bytearray each time, never a fragment or a shared buffer."""
    data = random.Random(m * 10 + n).randbytes(1000)
    enc = erasure.encode(data, m, n)
    frags = dict(enumerate(enc.fragments[:m]))
    outs = [
        erasure.decode(frags, len(data), m, n),
        erasure.decode(frags, len(data), m, n),
        erasure.regenerate(frags, enc.cross_checksum, m, n, checked=True).data,
        erasure.regenerate(frags, enc.cross_checksum, m, n).data,
    ]
    assert all(type(o) is bytearray and o == data for o in outs)
    assert len({id(o) for o in outs}) == len(outs)
    assert not any(o is f for o in outs for f in enc.fragments)
