"""Tier 1: a claimed write lease (``fs.lock`` with ``any``): taken on whatever version the
file has, declaring, reserving and recording nothing, so that a writer whose flushes keep
finding the file changed by another client's gets a turn (``FlushEngine._claim``)."""

from __future__ import annotations

from typing import Any

import pytest
from t1_fs_fileblocks import BS, apply, attribute_object

from bftfs.qu.objects import MethodRefused

LEASE = 30 * 10**9


def _written(times: int) -> dict[str, Any]:
    """A block file another client (token 1) appended to ``times`` times, version after
    version."""
    f = attribute_object()
    for k in range(times):
        f = apply(f, "fs.write", d=5, v=f["v"], tok=1, end=(k + 1) * BS, mtime=k + 1)
    return f


def test_a_claim_takes_the_lease_on_a_version_the_claimer_never_read() -> None:
    f = _written(3)
    with pytest.raises(MethodRefused, match="file changed"):  # the version it read: 1
        apply(f, "fs.lock", d=5, v=1, tok=2, lease=LEASE, z=[])
    claimed = apply(f, "fs.lock", d=5, v=1, tok=2, lease=LEASE, any=True)
    assert claimed["wl"] == [2, 10**9 + LEASE, []]
    assert claimed["v"] == f["v"] + 1
    # Nothing declared, reserved or recorded: the file is as it was but for the lease.
    assert {k: v for k, v in claimed.items() if k not in ("wl", "v")} == {
        k: v for k, v in f.items() if k not in ("wl", "v")
    }
    # The other writer waits; the claimer locks the version it now reads and writes.
    with pytest.raises(MethodRefused, match="another client"):
        apply(claimed, "fs.lock", d=5, v=claimed["v"], tok=1, lease=LEASE, z=[])
    with pytest.raises(MethodRefused, match="another client"):
        apply(claimed, "fs.write", d=5, v=claimed["v"], tok=1, end=4 * BS, mtime=9)
    locked = apply(claimed, "fs.lock", d=5, v=claimed["v"], tok=2, lease=LEASE,
                   z=[[3 * BS, 4 * BS]], alloc=4 * BS)  # fmt: skip
    done = apply(locked, "fs.write", d=5, v=locked["v"], tok=2, end=4 * BS, mtime=9)
    assert done["wl"] is None and done["size"] == 4 * BS and done["z"] == []


def test_a_claim_waits_for_another_clients_running_lease_and_takes_a_dead_ones() -> None:
    f = apply(_written(1), "fs.lock", d=5, v=1, tok=1, lease=LEASE, z=[[BS, 2 * BS]])
    with pytest.raises(MethodRefused, match="another client"):
        apply(f, "fs.lock", d=5, v=0, tok=2, lease=LEASE, any=True)
    later = 10**9 + LEASE  # the holder died: what it declared may be anywhere in it
    claimed = apply(f, "fs.lock", d=5, v=0, tok=2, lease=LEASE, any=True, now=later)
    assert claimed["wl"][0] == 2 and claimed["z"] == [[BS, 2 * BS]]


def test_a_claim_keeps_what_the_claimers_own_lease_declared() -> None:
    f = apply(_written(1), "fs.lock", d=5, v=1, tok=2, lease=LEASE, z=[[BS, 2 * BS]])
    claimed = apply(f, "fs.lock", d=5, v=0, tok=2, lease=LEASE, any=True)
    assert claimed["wl"] == [2, 10**9 + LEASE, [[BS, 2 * BS]]] and claimed["z"] == []


def test_any_must_be_a_boolean() -> None:
    with pytest.raises(MethodRefused, match="boolean"):
        apply(_written(1), "fs.lock", d=5, v=0, tok=2, lease=LEASE, any=1)
