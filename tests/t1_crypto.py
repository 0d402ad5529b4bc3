"""Identities and pairwise keys."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bftfs.buffers import unfilled
from bftfs.crypto import (
    SEAL_OVERHEAD,
    Identity,
    KeyFileError,
    KeyRing,
    SealError,
    mac,
    mac_ok,
    pairwise_key,
    seal_buffer,
    seal_into,
    unseal_buffer,
)
from bftfs.ids import PrincipalId


def test_pairwise_keys_agree_and_differ_per_pair() -> None:
    a, b, c = (Identity.generate(PrincipalId(i)) for i in range(3))
    assert pairwise_key(a, b.public) == pairwise_key(b, a.public)
    assert pairwise_key(a, b.public) != pairwise_key(a, c.public)
    ring = KeyRing(a, {b.pid: b.public, c.pid: c.public})
    assert ring.key(b.pid) == pairwise_key(a, b.public)
    assert ring.key(PrincipalId(99)) is None


def test_mac_detects_any_change() -> None:
    key = bytes(range(32))
    tag = mac(key, b"hello")
    assert mac_ok(key, b"hello", tag)
    assert not mac_ok(key, b"hellp", tag)
    assert not mac_ok(bytes(32), b"hello", tag)


def test_private_key_file_is_0600_and_loads(tmp_path: Path) -> None:
    ident = Identity.generate(PrincipalId(3))
    path = tmp_path / "private" / "key"
    ident.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Identity.load(PrincipalId(3), path) == ident


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    Identity.generate(PrincipalId(1)).save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="accessible by others"):
        Identity.load(PrincipalId(1), path)


@pytest.mark.parametrize("content", ["zz", "00" * 31, ""])
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        Identity.load(PrincipalId(1), path)


def test_unfilled_buffers_are_bytearrays_of_their_size_and_seal_and_open_whole() -> None:
    """``buffers.unfilled`` skips the zeros ``bytearray(n)`` writes (issue 34); a block
    sealed and opened through such buffers is the block, and a tampered one is refused."""
    for n in (1, 15, 4096, 1 << 20):
        buf = unfilled(n)
        assert type(buf) is bytearray and len(buf) == n
    key = bytes(range(32))
    data = bytes(random.Random(7).randbytes((1 << 20) + 3))
    sealed = seal_buffer(key, data, b"block 1")
    assert unseal_buffer(key, sealed, b"block 1") == data
    sealed[-1] ^= 1
    with pytest.raises(SealError):
        unseal_buffer(key, sealed, b"block 1")
    # Sealed into a given buffer (a block's stripes, erasure.encode_into): the same
    # format, opened by the same call; a buffer of another size is refused.
    into = bytearray(SEAL_OVERHEAD + len(data))
    seal_into(key, data, b"block 1", memoryview(into))
    assert unseal_buffer(key, into, b"block 1") == data
    with pytest.raises(ValueError):
        seal_into(key, data, b"block 1", memoryview(into)[1:])
