"""Blocks sealed and opened in place (issue 34, third pass): ``crypto.seal_buffer`` and
``crypto.unseal_buffer`` write the same ``nonce || ciphertext || tag`` as ``seal`` and
``unseal``, straight into the buffer they return, and refuse what ``unseal`` refuses; the
block path (``Seal.seal_block``/``open_block``, erasure coding, a file's cached blocks)
takes the bytearrays they give without copying them again and returns the same bytes.
A block the PASIS read joined for its caller alone is opened in its own buffer
(``crypto.unseal_in_place``, tenth pass)."""

from __future__ import annotations

import random

import pytest

from bftfs import erasure
from bftfs.crypto import (
    SEAL_OVERHEAD,
    SealError,
    VolumeKey,
    seal,
    seal_buffer,
    unseal,
    unseal_buffer,
    unseal_in_place,
)
from bftfs.fs.clients import Seal, SealBroken
from bftfs.fs.files import OpenFile
from bftfs.rw.messages import block_id

RNG = random.Random(3434)


def _key() -> bytes:
    return VolumeKey(RNG.randbytes(32)).subkey(b"bftfs-contents")


@pytest.mark.parametrize("size", [0, 1, 1000, 1 << 20])
def test_in_place_sealing_is_the_same_format_both_ways(size: int) -> None:
    key, data = _key(), RNG.randbytes(size)
    made = seal_buffer(key, data, b"aad")
    assert isinstance(made, bytearray) and len(made) == size + SEAL_OVERHEAD
    assert unseal(key, bytes(made), b"aad") == data  # the old opener reads it
    old = seal(key, data, b"aad")
    assert unseal_buffer(key, old, b"aad") == data  # and it reads the old sealer's
    # Any buffer the block path hands it: bytes, a bytearray, a view.
    assert unseal_buffer(key, memoryview(made), b"aad") == data
    assert seal_buffer(key, bytearray(data), b"aad") != made  # a fresh nonce each time
    assert unseal_buffer(key, seal_buffer(key, memoryview(data), b"aad"), b"aad") == data


def test_in_place_opening_refuses_what_unseal_refuses() -> None:
    key, data = _key(), RNG.randbytes(4096)
    made = bytes(seal_buffer(key, data, b"x"))
    for at in (0, 31, 32, 2000, len(made) - 1):  # the nonce, the ciphertext, the tag
        bad = bytearray(made)
        bad[at] ^= 1
        with pytest.raises(SealError):
            unseal_buffer(key, bad, b"x")
    with pytest.raises(SealError):
        unseal_buffer(key, made, b"y")  # bound to other data
    with pytest.raises(SealError):
        unseal_buffer(_key(), made, b"x")  # another key
    with pytest.raises(SealError):
        unseal_buffer(key, made[: SEAL_OVERHEAD - 1], b"x")  # cut
    assert unseal_buffer(key, seal_buffer(key, b"", b"x"), b"x") == b""


def test_a_block_sealed_before_a_key_rotation_still_opens_and_only_as_itself() -> None:
    old, new = VolumeKey(RNG.randbytes(32)), VolumeKey(RNG.randbytes(32))
    before, after = Seal(old), Seal(new, [old])
    one, two = block_id(9, 0), block_id(9, 1)
    data = RNG.randbytes(300_000)
    sealed = bytes(before.seal_block(one, data))
    assert after.open_block(one, sealed) == data  # the previous key opens it
    assert after.open_block(one, bytes(after.seal_block(one, data))) == data
    with pytest.raises(SealBroken):
        after.open_block(two, sealed)  # a node serving block 0 as block 1
    with pytest.raises(SealBroken):
        Seal(new).open_block(one, sealed)  # the old key forgotten: EIO, never plaintext


def test_a_sealed_bytearray_codes_to_the_fragments_of_its_bytes() -> None:
    """``encode`` reads a bytearray once into its stripes (no ``bytes()`` copy first): the
    fragments and cross checksum are those of the same bytes, and later changes to the
    caller's buffer do not reach them."""
    for size in (0, 5, 1 << 20):
        data = bytearray(RNG.randbytes(size))
        got, want = erasure.encode(data, 3, 6), erasure.encode(bytes(data), 3, 6)
        assert got == want
        if size:
            data[0] ^= 0xFF
            assert erasure.decode(dict(enumerate(got.fragments[:3])), size, 3, 6) != data


def test_a_file_reads_its_opened_blocks_as_bytes() -> None:
    """A cached block opened in place is a bytearray: a read inside it and a read across
    blocks give the same bytes as from ``bytes`` blocks."""
    bs = 64
    data = RNG.randbytes(3 * bs)
    st = {"d": 1, "v": 1, "size": len(data), "alloc": 1 << 20, "inl": False}
    f = OpenFile.from_stat(2, st, bs)
    for k in range(3):
        f.remember(k, bytearray(data[k * bs : (k + 1) * bs]))
    inside, across = f.assemble(10, 20), f.assemble(50, 100)
    assert type(inside) is bytes and inside == data[10:30]
    assert type(across) is bytes and across == data[50:150]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, (1 << 20) + 5])
def test_opening_in_place_gives_the_plaintext_in_the_same_buffer(size: int) -> None:
    key, data = _key(), RNG.randbytes(size)
    for sealed in (seal(key, data, b"aad"), seal_buffer(key, data, b"aad")):
        buf = bytearray(sealed)
        got = unseal_in_place(key, buf, b"aad")
        assert got is buf and buf == data
        buf.extend(b"more")  # the buffer is released and resizable again
        assert buf == data + b"more"


def test_opening_in_place_refuses_what_unseal_refuses() -> None:
    key, data = _key(), RNG.randbytes(4096)
    made = bytes(seal_buffer(key, data, b"x"))
    for at in (0, 31, 32, 2000, len(made) - 1):
        bad = bytearray(made)
        bad[at] ^= 1
        with pytest.raises(SealError):
            unseal_in_place(key, bad, b"x")
    for key2, aad in ((key, b"y"), (_key(), b"x")):
        with pytest.raises(SealError):
            unseal_in_place(key2, bytearray(made), aad)
    with pytest.raises(SealError):
        unseal_in_place(key, bytearray(made[: SEAL_OVERHEAD - 1]), b"x")


def test_a_joined_block_opens_in_its_own_buffer_under_every_key() -> None:
    """What ``SealedBlocks.read_blocks`` does with a block the read joined: the last key
    in place, earlier keys on the untouched buffer (a failed attempt in place zeroes it),
    so a block sealed under either key of a rotation opens, in place or not."""
    old, new = VolumeKey(RNG.randbytes(32)), VolumeKey(RNG.randbytes(32))
    before, after = Seal(old), Seal(new, [old])
    one = block_id(9, 0)
    data = RNG.randbytes(300_000)
    for sealer in (before, after):
        enc = erasure.encode(sealer.seal_block(one, data), 3, 6)
        joined = erasure.decode(dict(enumerate(enc.fragments[:3])), len(data) + SEAL_OVERHEAD, 3, 6)
        assert isinstance(joined, bytearray)
        assert all(joined is not f for f in enc.fragments)
        opened = after.open_block(one, joined, in_place=True)
        assert opened == data
        assert (opened is joined) == (sealer is before)  # the last key (old) in place
    with pytest.raises(SealBroken):
        Seal(new).open_block(one, bytearray(before.seal_block(one, data)), in_place=True)
