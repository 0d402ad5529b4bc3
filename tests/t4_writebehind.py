"""Tier 4: create write-behind through the kernel (docs/fs.md, "Create write-behind").

Two mounts of one process cluster: ``open(O_CREAT) + write + close`` of a new name costs
one ``fs.createwrite`` update and no ``fs.create``/``fs.write`` (the mount's metrics), the
other mount sees the file after the close, ``O_EXCL`` on an existing name is EEXIST, and
``-o wsync`` sends every create before it returns.  Also (issue 19) a big file written
sequentially through the kernel takes the big per-file block size.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from t4_health import metric, scrape

from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="FUSE not available")


def methods(m: Mount, pc: ProcessCluster) -> dict[str, float]:
    """Q/U operations the mount sent so far, by method (its metrics)."""
    status = json.loads(control.status_file(pc.config, m.mountpoint).read_text())
    text = scrape(status["metrics"])
    out = {}
    for name in ("fs.create", "fs.createwrite", "fs.write", "fs.lock"):
        try:
            out[name] = metric(text, "bftfs_mount_qu_operations_total", method=name)
        except AssertionError:
            out[name] = 0.0
    return out


@pytest.mark.slow
def test_create_write_close_is_one_update_and_the_other_mount_sees_it(tmp_path: Path) -> None:
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc,
        # lease=0: write-behind alone, each close one update (under a directory's
        # exclusive lease the closes send nothing: t4_leases, t3_fs_writeback)
        Mount(pc.config, tmp_path / "a", options="metrics_port=0,lease=0") as a,
        Mount(pc.config, tmp_path / "b", client="client1") as b,
    ):
        d = a.mountpoint / "d"
        d.mkdir()
        (d / "first").write_bytes(b"0")  # the directory's mode and group become known
        before = methods(a, pc)
        for i in range(5):
            fd = os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"data %d" % i)
            os.close(fd)
        after = methods(a, pc)
        sent = {k: after[k] - before[k] for k in after}
        assert sent == {"fs.create": 0, "fs.createwrite": 5, "fs.write": 0, "fs.lock": 0}
        for i in range(5):
            assert (b.mountpoint / "d" / f"f{i}").read_bytes() == b"data %d" % i
        with pytest.raises(FileExistsError):
            os.open(d / "f0", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        big = os.urandom(200_000)  # past the inline limit: create, then block flush
        (d / "big").write_bytes(big)
        assert (b.mountpoint / "d" / "big").read_bytes() == big
        assert sorted(os.listdir(b.mountpoint / "d")) == sorted(
            ["first", "big"] + [f"f{i}" for i in range(5)]
        )


def test_wsync_sends_every_create_before_it_returns(tmp_path: Path) -> None:
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc,
        Mount(pc.config, tmp_path / "a", options="metrics_port=0,wsync") as a,
    ):
        d = a.mountpoint / "d"
        d.mkdir()
        (d / "first").write_bytes(b"0")
        before = methods(a, pc)
        (d / "f").write_bytes(b"x")
        after = methods(a, pc)
        assert after["fs.createwrite"] == 0
        assert after["fs.create"] - before["fs.create"] == 1


def test_a_file_streamed_through_the_kernel_gets_big_blocks(tmp_path: Path) -> None:
    """Per-file block size (docs/fs.md): ``cp``-like sequential writes through the kernel
    (its page cache and write-back in between) reach the daemon in order, so the file takes
    the big block size (``st_blksize`` reports the file's block size); a small file keeps
    the cluster's.  The other mount reads both back byte for byte, also after a write
    into the middle of the big file (one big block rewritten) and an append."""
    rng = random.Random(19)
    with (
        ProcessCluster(tmp_path / "c", map_size=1 << 28, durable=False) as pc,
        Mount(pc.config, tmp_path / "a") as a,
        Mount(pc.config, tmp_path / "b", client="client1") as b,
    ):
        big = bytearray(rng.randbytes(3 * 1024 * 1024 + 4321))
        with open(a.mountpoint / "big", "wb") as f:
            for off in range(0, len(big), 128 * 1024):
                f.write(big[off : off + 128 * 1024])
        small = rng.randbytes(300_000)
        (a.mountpoint / "small").write_bytes(small)
        assert os.stat(b.mountpoint / "big").st_blksize == pc.config.big_blocks
        assert os.stat(b.mountpoint / "small").st_blksize == pc.config.block_size
        assert (b.mountpoint / "big").read_bytes() == big
        assert (b.mountpoint / "small").read_bytes() == small
        patch = rng.randbytes(5000)
        at = pc.config.big_blocks - 2000
        with open(b.mountpoint / "big", "r+b") as f:
            f.seek(at)
            f.write(patch)
        big[at : at + len(patch)] = patch
        with open(b.mountpoint / "big", "ab") as f:
            f.write(b"tail")
        big += b"tail"
        assert (a.mountpoint / "big").read_bytes() == big
        assert os.stat(a.mountpoint / "big").st_blksize == pc.config.big_blocks
