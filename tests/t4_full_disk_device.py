"""A node's disk fills before its LMDB map does (issue 60, item 12): six real node
processes on one small tmpfs (160 MiB, under six 64 MiB sparse maps), one FUSE mount.

Filling the file system gives ENOSPC (a disk's free space counts in a node's ``full``
decision, ``node/store.py``), and then what the ENOSPC-then-delete design promises for a
full map holds for a full disk too: ``ls`` of the root lists, ``rm`` removes, nothing
written before is lost, and once the nodes collect the removed files' blocks a write
succeeds again.  Before, ``rm`` got ENOSPC and ``ls`` EIO until the disk was grown (the
nodes' commits failed: ``StoreFull: mdb_txn_commit: No space left on device``).

The tmpfs is mounted in the test's own directory and always unmounted, even on failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from mount_helpers import fill_until_enospc, write_whole
from waiting import wait_for

from bftfs import local
from bftfs.policy import VerificationPolicy
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)"),
]

MIB = 1024 * 1024
FILE = 4 * MIB
#: Seconds within which room comes back once files were removed (the nodes verify the
#: removed files' empty versions and collect the old ones: t4_full_disk.py).
AGAIN_WITHIN = 60.0


@contextlib.contextmanager
def small_disk(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on ``where``, unmounted on exit (the logs on it
    copied beside it first, under ``logs/``, to read after a failure)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        for log in where.rglob("*.log"):
            with contextlib.suppress(OSError):
                copy = where.parent / "logs" / log.relative_to(where)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, copy)
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def nodes_on_a_small_disk(tmp_path: Path) -> Iterator[tuple[Path, ProcessCluster, Mount]]:
    """Six nodes with 64 MiB maps on one 160 MiB tmpfs (their maps' sum is larger: the
    disk fills first), verifying at once, and one mount; all stopped and unmounted on
    exit.  Yields the disk, the cluster and the mount."""
    with (
        small_disk(tmp_path / "disk", 160) as disk,
        ProcessCluster(
            disk / "c",
            map_size=64 * MIB,
            durable=False,
            verification=VerificationPolicy(settle_seconds=0.2, fallback_seconds=2.0),
        ) as pc,
        Mount(pc.config, tmp_path / "m", client="client0") as mnt,
    ):
        yield disk, pc, mnt


@pytest.mark.slow
def test_a_full_disk_gives_enospc_and_rm_and_ls_still_work(tmp_path: Path) -> None:
    rng = random.Random(60)
    with nodes_on_a_small_disk(tmp_path) as (disk, pc, mnt):
        root = mnt.mountpoint
        # df shows what the disk can hold, not the six maps (issue 67): each node counts
        # on its share of the free disk, the smaller of it and its map's room.
        maps = 64 * MIB * pc.config.m
        df = os.statvfs(root)
        assert 0 < df.f_blocks * df.f_frsize < maps / 2, (df, maps)
        (root / "d").mkdir()
        written, full_at = fill_until_enospc(root, rng, FILE, 60)
        assert full_at is not None, "60 files of 4 MiB fit on a 160 MiB disk"
        # ... and so does status: the nodes' disk is (near) full, the cluster degraded.
        status = subprocess.run(
            [sys.executable, "-m", "bftfs", "status", "--dir", str(disk / "c")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert status.returncode == 1 and "full" in status.stdout, status.stdout
        assert os.statvfs(root).f_bavail * os.statvfs(root).f_frsize < 2 * FILE
        assert len(written) >= 3, len(written)
        # The disk is full, not a map: each node's map has room left.
        assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize < 24 * MIB
        # Listing, removing and metadata work on the full disk.
        names = set(os.listdir(root))
        assert set(written) <= names, names
        (root / f"f{full_at}").unlink(missing_ok=True)
        os.rmdir(root / "d")
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name
        for name in sorted(written)[: len(written) - 3]:
            (root / name).unlink()
            del written[name]
        assert set(os.listdir(root)) == set(written)
        # The nodes collect the removed files' blocks: df shows the room come back (the
        # disk's free space counts in what the nodes report), and then a write fits.
        # (Polled, not retried by writing: a refused write's fragments take room on the
        # nodes that had it, until they are collected in turn.)
        full_df = os.statvfs(root)
        deadline = time.monotonic() + AGAIN_WITHIN
        while os.statvfs(root).f_bavail * full_df.f_frsize < 2 * FILE:
            assert time.monotonic() < deadline, ("no room came back in time", full_df)
            time.sleep(0.5)
        assert os.statvfs(root).f_bfree > full_df.f_bfree
        write_whole(root / "again", b"z" * FILE)
        assert (root / "again").read_bytes() == b"z" * FILE
        for name, data in written.items():
            assert (root / name).read_bytes() == data, name


def _verify_progress(pc: ProcessCluster) -> list[dict[str, Any]]:
    """Each node's lazy verification record (``rw.verify``), from its status."""
    statuses = trio.run(local.query_status, pc.config)
    return [((st.stats or {}).get("progress") or {}).get("rw.verify") or {} for st in statuses]


@pytest.mark.slow
def test_removed_files_history_goes_when_the_disk_fills_later(tmp_path: Path) -> None:
    """Files removed while there was room stay as history (kept for their age: 15 minutes
    here, a week's schedule by default); when the disk fills later, that history goes at
    once and the writes go on.  Before, the nodes revisited it only when the full
    retention let it go: an hour of writing and removing 1 GiB files on a `make up`
    cluster ended in ENOSPC with 8.7 GiB of removed files' history per node."""
    rng = random.Random(62)
    with nodes_on_a_small_disk(tmp_path) as (disk, pc, mnt):
        root = mnt.mountpoint
        first = {f"a{i}": rng.randbytes(FILE) for i in range(10)}
        for name, data in first.items():
            write_whole(root / name, data)
        for name in first:
            (root / name).unlink()
        # The removals are verified while there is room: what the files held is history,
        # kept for its age, on every node.
        wait_for(
            "the removed files' contents to be history on every node",
            lambda: all(
                v.get("backlog_blocks") == 0 and v.get("history_bytes", 0) >= 10 * FILE // 4
                for v in _verify_progress(pc)
            ),
        )
        assert not any(v.get("pressure") for v in _verify_progress(pc))
        # As many bytes again and more: they fit only if that history goes.  A write
        # refused while the nodes collect is tried again (polled, at most AGAIN_WITHIN).
        second = {f"b{i}": rng.randbytes(FILE) for i in range(12)}
        for name, data in second.items():
            deadline = time.monotonic() + AGAIN_WITHIN
            while True:
                try:
                    write_whole(root / name, data)
                    break
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    assert time.monotonic() < deadline, f"{name}: the history gave no room"
                    time.sleep(0.5)
        assert sum(v.get("collected", 0) for v in _verify_progress(pc)) > 0
        for name, data in second.items():
            assert (root / name).read_bytes() == data, name
