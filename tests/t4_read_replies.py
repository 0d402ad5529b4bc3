"""Read replies written from worker threads, in a real mount (issue 63).

The project's pyfuse3 (``scripts/pyfuse3-locks.patch``, version 3) writes a read reply of
``READ_REPLY_THREAD_MIN`` bytes or more from a worker thread while the mount's loop goes
on (``bftfs/fuse/readreplies.py``).  What that must not change: every reply is the bytes
of its moment, also a view of a clean block that a write into the block follows at once,
and while a big read is being answered, other requests are answered too.
"""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bftfs.fuse.readreplies import READ_REPLY_THREAD_MIN
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(
        tmp_path_factory.mktemp("cluster") / "c", map_size=1 << 30, durable=False
    ) as pc:
        yield pc


def _direct_pread(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` through an O_DIRECT descriptor (a page-aligned buffer):
    the daemon answers every such read (in requests of at most 1 MiB), never the kernel's
    pages."""
    with mmap.mmap(-1, max(size, mmap.PAGESIZE)) as buf:
        got = os.preadv(fd, [memoryview(buf)[:size]], offset)
        return bytes(buf[:got])


def test_big_replies_of_clean_blocks_stay_right_when_the_block_is_written_after(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Reads of 256 KiB to 1 MiB inside one block (a view of the clean block, replied from
    a worker thread), each followed at once by a write into the same block and a read of
    it, through O_DIRECT on a client whose blocks come from the servers: each answer is
    the model's bytes of its moment, and the file read by the first client at the end is
    the model."""
    assert READ_REPLY_THREAD_MIN <= 256 * 1024  # the reads below are replied from threads
    rng = random.Random(6301)
    size = 4 * MiB
    model = bytearray(rng.randbytes(size))
    with Mount(cluster.config, tmp_path / "a") as first:
        (first.mountpoint / "viewed").write_bytes(bytes(model))
        with Mount(cluster.config, tmp_path / "b", client="client1") as other:
            fd = os.open(other.mountpoint / "viewed", os.O_RDWR | os.O_DIRECT)
            try:
                for _ in range(16):
                    n = rng.choice((256 * 1024, 512 * 1024, MiB))
                    block = rng.randrange(size // MiB)
                    off = block * MiB + rng.randrange(0, MiB - n + 1) // 4096 * 4096
                    assert _direct_pread(fd, off, n) == model[off : off + n]
                    at = off + rng.randrange(0, n) // 4096 * 4096
                    patch = rng.randbytes(4096)
                    with mmap.mmap(-1, 4096) as buf:
                        buf[:] = patch
                        assert os.pwritev(fd, [buf], at) == 4096
                    model[at : at + 4096] = patch
                    assert _direct_pread(fd, off, n) == model[off : off + n]
                os.fsync(fd)
                assert _direct_pread(fd, 0, size) == model
            finally:
                os.close(fd)
        assert (first.mountpoint / "viewed").read_bytes() == model


def test_requests_are_answered_while_a_big_read_is_in_flight(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A 64 MiB read by one thread (O_DIRECT, so the daemon fetches and answers every MiB
    of it) while another thread asks for the file system's statistics again and again
    (each a FUSE statfs the daemon answers): some of those answers come back before the
    big read ends, and the big read's bytes are the file's."""
    rng = random.Random(6302)
    size = 64 * MiB
    chunk = rng.randbytes(MiB)
    # Each MiB differs (its index at its head): a reply put at the wrong offset shows.
    content = b"".join(i.to_bytes(8, "big") + chunk[8:] for i in range(size // MiB))
    with Mount(cluster.config, tmp_path / "a") as first:
        (first.mountpoint / "big").write_bytes(content)
        with Mount(cluster.config, tmp_path / "b", client="client1") as other:
            fd = os.open(other.mountpoint / "big", os.O_RDONLY | os.O_DIRECT)
            got: list[bytes] = []
            started = threading.Event()
            done = threading.Event()

            def read_all() -> None:
                try:
                    started.set()
                    got.append(_direct_pread(fd, 0, size))
                finally:
                    done.set()

            reader = threading.Thread(target=read_all)
            answered_during = 0
            try:
                reader.start()
                started.wait()
                while not done.is_set():
                    os.statvfs(other.mountpoint)
                    if not done.is_set():
                        answered_during += 1
            finally:
                reader.join()
                os.close(fd)
            assert got == [content]
            assert answered_during > 0


def test_a_reader_killed_during_big_replies_leaves_the_mount_answering(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """A process killed as it starts a 32 MiB read (the daemon may then write replies
    from worker threads to requests the kernel dropped: libfuse answers ENOENT, the
    daemon logs it) leaves the mount serving: the whole file reads back right after."""
    rng = random.Random(6303)
    content = rng.randbytes(32 * MiB)
    with Mount(cluster.config, tmp_path / "a") as first:
        (first.mountpoint / "big").write_bytes(content)
        with Mount(cluster.config, tmp_path / "b", client="client1") as other:
            path = other.mountpoint / "big"
            reader = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT); "
                    "print('reading', flush=True); "
                    "import mmap; b = mmap.mmap(-1, 32 << 20); os.preadv(fd, [b], 0)",
                    str(path),
                ],
                stdout=subprocess.PIPE,
            )
            try:
                assert reader.stdout is not None
                assert reader.stdout.readline() == b"reading\n"
                reader.kill()
            finally:
                reader.wait()
                if reader.stdout is not None:
                    reader.stdout.close()
            assert path.read_bytes() == content
