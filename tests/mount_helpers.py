"""Helpers shared by the real-mount tests: seeded source trees and tree comparison."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bftfs.testing.mounts import Mount
from bftfs.testing.processes import ProcessCluster

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, seed: int, files: int = 60, block: int = 65536) -> Path:
    """A seeded tree of files of awkward sizes, nested directories, links and empty files."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    dirs = [root]
    for i in range(files):
        if rng.random() < 0.2:
            d = rng.choice(dirs) / f"dir{i}"
            d.mkdir()
            dirs.append(d)
        size = rng.choice(
            [
                0,
                1,
                100,
                4095,
                4096,
                block - 1,
                block,
                block + 1,
                3 * block + 7,
                rng.randrange(300_000),
            ]
        )
        (rng.choice(dirs) / f"f{i}.bin").write_bytes(rng.randbytes(size))
    (root / "link").symlink_to("f1.bin")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "private.bin").write_bytes(rng.randbytes(5000))
    os.chmod(root / "private.bin", 0o640)
    return root


def assert_same_tree(a: Path, b: Path) -> None:
    r = subprocess.run(
        ["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def suite_cluster(home: Path) -> ProcessCluster:
    """The node processes a real-mount suite shares (``with`` it): 1 GiB maps, not durable
    (a test's data need not survive a power cut, and fsyncs only slow the suite)."""
    return ProcessCluster(home, map_size=1 << 30, durable=False)


@contextmanager
def two_mounts(pc: ProcessCluster, base: Path) -> Iterator[tuple[Path, Path]]:
    """Mounts of ``client0`` and ``client1`` under ``base`` (``a``, ``b``): their
    mountpoints, unmounted on exit."""
    with (
        Mount(pc.config, base / "a", client="client0") as a,
        Mount(pc.config, base / "b", client="client1") as b,
    ):
        yield a.mountpoint, b.mountpoint


def write_fsynced(path: Path, data: bytes) -> int:
    """Write ``data`` as the whole content of ``path`` and ``fsync`` it; the moment after
    close returned.  (A file a mount keeps writing comes leased to it, and its closes
    leave the writes to write-back: history holds what reached the nodes.)"""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return time.time_ns()


def at(moment_ns: int) -> str:
    """``--at`` for a moment, exactly (seconds since the epoch with nine decimals)."""
    return f"@{moment_ns // 10**9}.{moment_ns % 10**9:09d}"


def write_whole(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, not fsynced."""
    with open(path, "wb") as f:  # ENOSPC may come at write, flush or close
        f.write(data)


def fill_until_enospc(
    root: Path, rng: random.Random, size: int, most: int
) -> tuple[dict[str, bytes], int | None]:
    """Write files ``f0``, ``f1``, ... of ``size`` random bytes under ``root`` until one
    is refused with ENOSPC (any other error fails the test), at most ``most``: the files
    written whole, and the index of the refused one (None: none was)."""
    written: dict[str, bytes] = {}
    for i in range(most):
        data = rng.randbytes(size)
        try:
            write_whole(root / f"f{i}", data)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return written, i
        written[f"f{i}"] = data
    return written, None
