"""The quota's bookkeeping in the real LMDB store (issue 18): a version and its charge are
committed together or not at all, and both are there after the store is reopened.

A step that fails after storing and charging a version stands for a crash inside the
write transaction: LMDB rolls the whole transaction back, so neither the version nor its
charge is left (no leak, no double count when the write is tried again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import erasure
from bftfs.ids import client_id
from bftfs.node.store import Store
from bftfs.rw import quota, replica
from bftfs.rw.messages import WriteRequest
from bftfs.rw.timestamp import make_timestamp

OWNER = int(client_id(0))


class _Crash(Exception):
    pass


def _req(block: int, time: int) -> WriteRequest:
    enc = erasure.encode(bytes([block]) * 4096, 3, 6)
    return WriteRequest(
        block, make_timestamp(time, OWNER, enc.verifier), enc.cross_checksum, enc.fragments[1]
    )


async def test_a_version_and_its_charge_commit_together_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "lmdb", map_size=1 << 24, durable=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.committer)
        await _write_and_crash(store)
        nursery.cancel_scope.cancel()
    store.close()
    reopened = Store(tmp_path / "lmdb", map_size=1 << 24, durable=True)
    try:
        expected = replica.version_size(_req(1, 10)) + replica.version_size(_req(2, 11))
        assert reopened.read(lambda kv: quota.usage_of(kv, OWNER)) == expected
        assert reopened.read(quota.audit) == ({OWNER: expected}, 0)
    finally:
        reopened.close()


async def _write_and_crash(store: Store) -> None:
    kept = _req(1, 10)
    await store.write(lambda kv: replica.store_write(kv, kept, owner=OWNER))
    lost = _req(2, 11)

    def crashes(kv: Any) -> None:
        replica.store_write(kv, lost, owner=OWNER)
        assert quota.usage_of(kv, OWNER) > replica.version_size(kept)  # charged, then:
        raise _Crash

    with pytest.raises(_Crash):
        await store.write(crashes)
    assert not store.read(lambda kv: replica.has_version(kv, 2, lost.ts))
    assert store.read(lambda kv: quota.usage_of(kv, OWNER)) == replica.version_size(kept)
    # Tried again, it is charged once.
    await store.write(lambda kv: replica.store_write(kv, lost, owner=OWNER))
    await store.write(lambda kv: replica.store_write(kv, lost, owner=OWNER))
