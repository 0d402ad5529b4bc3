"""A store whose disk fills before its map (issue 60, item 12): an LMDB store with a
64 MiB map on a 16 MiB tmpfs.

``fill`` counts the disk, so the rules a node applies in shares of its capacity see it
coming: block versions stop at ``1 - reserve_fraction`` and growing metadata at the floor
(``short_for_growth``), with no commit failing on the way; a removal then commits in the
room kept, and once LMDB reuses the pages it freed, writes fit again.  A commit that does
not fit at all is :class:`StoreFull` (the node answers ``full``, the client ENOSPC), not a
bare store error (EIO), and aborts cleanly: reads go on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bftfs.node.store import Store, StoreFull

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")

MIB = 1024 * 1024
BIG = 64 * 1024
SMALL = 2 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _key(i: int) -> bytes:
    return i.to_bytes(4, "big")


def _value(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def _put(i: int, size: int) -> Any:
    def step(kv: Any) -> None:
        kv.put("d", _key(i), _value(i, size))

    return step


def test_a_disk_filling_first_keeps_room_for_removals(small_disk: Path) -> None:
    store = Store(small_disk / "lmdb", map_size=64 * MIB, durable=False, reserve_fraction=0.1)
    try:
        assert store.fill(fresh=True).fraction < 0.2
        sizes: dict[int, int] = {}
        # Block versions: refused (by the node) from 90 % of the disk on; no commit fails.
        while store.fill(fresh=True).fraction < 0.9:
            store.write_now(_put(len(sizes), BIG))
            sizes[len(sizes)] = BIG
            assert len(sizes) < 16 * MIB // BIG, "the disk never counted"
        assert store.used_scaled(fresh=True) >= 0.9 * 64 * MIB  # on the map's scale
        assert not store.short_for_growth(fresh=True)
        # Metadata goes on into the reserve, up to the floor kept for removals.
        while not store.short_for_growth(fresh=True):
            store.write_now(_put(len(sizes), SMALL))
            sizes[len(sizes)] = SMALL
        # A removal commits in the floor; two commits on, its pages are free for writes.
        big = [i for i, size in sizes.items() if size == BIG][: len(sizes) // 4]

        def remove(kv: Any) -> None:
            for i in big:
                kv.delete("d", _key(i))
                del sizes[i]

        store.write_now(remove)
        for i in range(8):  # half a MiB: what was removed makes room again
            store.write_now(_put(1000 + i, BIG))
            sizes[1000 + i] = BIG
        # Written past every rule, the commit that does not fit is StoreFull, cleanly.
        with pytest.raises(StoreFull):
            for i in range(2000, 2000 + 16 * MIB // BIG):
                store.write_now(_put(i, BIG))
                sizes[i] = BIG
        got = store.read(lambda kv: {i: kv.get("d", _key(i)) for i in sizes})
        assert got == {i: _value(i, size) for i, size in sizes.items()}
    finally:
        store.close()


@pytest.fixture
def statvfs_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The paths the store measures with ``os.statvfs`` from now on (it still measures)."""
    from bftfs.node import store as store_module

    calls: list[Any] = []
    real = os.statvfs

    def counting(path: Any) -> os.statvfs_result:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(store_module.os, "statvfs", counting)
    return calls


def test_far_from_the_floor_the_growth_check_measures_once_a_quarter_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statvfs_calls: list[Any]
) -> None:
    """Every client update asks ``short_for_growth``; far from the floor it reuses its last
    measure for ``FAR_SECONDS`` (statvfs was 4 % of a busy node's CPU), near it (the small
    disk below) or when asked ``fresh`` it measures every time."""
    from bftfs.node import store as store_module

    disk = os.statvfs(tmp_path)
    free = disk.f_bavail * disk.f_frsize
    if free < 4 * store_module.FAR_BYTES:
        pytest.skip(f"needs {4 * store_module.FAR_BYTES} bytes free, has {free}")
    store = Store(tmp_path / "lmdb", map_size=2048 * MIB, durable=False, reserve_fraction=0.1)
    try:
        clock = [1000.0]
        monkeypatch.setattr(store_module.time, "monotonic", lambda: clock[0])
        statvfs_calls.clear()  # (what opening the store measured)
        assert not store.short_for_growth()
        assert not store.short_for_growth()
        assert len(statvfs_calls) == 1
        assert not store.short_for_growth(fresh=True)
        assert len(statvfs_calls) == 2
        clock[0] += store_module.FAR_SECONDS + 0.01
        assert not store.short_for_growth()
        assert len(statvfs_calls) == 3
    finally:
        store.close()


def test_near_the_floor_the_growth_check_measures_every_time(
    small_disk: Path, statvfs_calls: list[Any]
) -> None:
    store = Store(small_disk / "lmdb", map_size=64 * MIB, durable=False, reserve_fraction=0.1)
    statvfs_calls.clear()  # (what opening the store measured)
    try:
        for _ in range(3):
            assert not store.short_for_growth()
        assert len(statvfs_calls) == 3  # a 16 MiB disk is never FAR_BYTES above its floor
    finally:
        store.close()
