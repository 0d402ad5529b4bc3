"""Tier 1: a block write that keeps its write lease (``fs.write`` with ``keep``, issue 34):
the lease and its declaration are what an ``fs.lock`` right after the write would leave,
and the client uses a kept lease only for blocks inside what it declared."""

from __future__ import annotations

import pytest
from t1_fs_fileblocks import BS, apply, attribute_object

from bftfs import fsobjects as objects
from bftfs.fs.files.flush import _declared
from bftfs.qu.objects import MethodRefused

LEASE = 30 * 10**9


def test_a_kept_lease_declares_the_next_blocks_and_settles_like_a_locked_one() -> None:
    f = apply(attribute_object(), "fs.write", d=5, v=0, tok=1, end=4 * BS, mtime=1)
    kept = apply(f, "fs.write", d=5, v=f["v"], tok=1, end=8 * BS, mtime=2, keep=LEASE,
                 z=[[8 * BS, 16 * BS]], alloc=1 << 21)  # fmt: skip
    assert kept["wl"] == [1, 10**9 + LEASE, [[8 * BS, 16 * BS]]] and kept["alloc"] == 1 << 21
    assert objects.stat_of(kept)["zl"] == [[8 * BS, 16 * BS]]
    # While it runs, another client is locked out; the holder writes on.
    with pytest.raises(MethodRefused, match="another client"):
        apply(kept, "fs.write", d=5, v=kept["v"], tok=2, end=9 * BS, mtime=3)
    done = apply(kept, "fs.write", d=5, v=kept["v"], tok=1, end=12 * BS, mtime=3)
    assert done["wl"] is None and done["z"] == []
    # Its holder died: the declaration is stale for whoever comes next.
    later = 10**9 + LEASE
    other = apply(kept, "fs.lock", d=5, v=kept["v"], tok=2, lease=10**9, now=later, z=[])
    assert other["z"] == [[8 * BS, 16 * BS]]


def test_only_a_block_write_of_a_known_version_keeps_a_lease() -> None:
    f = attribute_object()
    with pytest.raises(MethodRefused, match="keeps a lease"):
        apply(f, "fs.write", d=5, tok=1, end=4 * BS, mtime=1, keep=LEASE)
    with pytest.raises(MethodRefused, match="keeps a lease"):
        apply(f, "fs.write", d=5, v=0, tok=1, end=3, mtime=1, i=b"abc", keep=LEASE)


def test_a_kept_lease_covers_only_the_blocks_it_declared() -> None:
    st = {"size": 8 * BS, "z": [], "zl": [[8 * BS, 16 * BS]]}
    assert _declared(st, [[6 * BS, 16 * BS]])  # below the size: any
    assert not _declared(st, [[8 * BS, 17 * BS]])
    assert not _declared(st, [[20 * BS, 21 * BS]])
    assert _declared({"size": 0, "z": []}, [[0, 100 * BS]])  # a create's lease
    assert _declared({"size": 0, "zl": [[0, BS]]}, [[0, 100 * BS]])  # no stale record
