"""Tier 4: what ``fsync`` and ``close`` answer on a real mount when every node is stopped
(issue 60, items 3 and 13), with node processes and FUSE mounts.

A directory ``fsync`` answers 0 only once the directory's held-back entries are on a
quorum; EIO means not applied: what the call held back is dropped, and no mount sees it
once the nodes are back (docs/fs.md, "What EIO means")."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from t4_leases import _lease_exclusively, _leases, _wait

from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

MIB = 1024 * 1024
#: Seconds a call waits for the stopped cluster before it answers EIO (``timeo``).
TIMEO = 2


def _errno_of(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except OSError as e:
        return e.errno or 0
    return 0


@pytest.mark.slow  # about 50 s: six node restarts and two mounts
def test_fsyncs_cut_off_from_every_node_answer_eio_and_apply_nothing(
    tmp_path: Path,
) -> None:
    """A mount holds its directory with three creates left to write-back (closed) and an
    append buffered in an open file; every node is stopped.  The directory's ``fsync``
    answered 0 after every send had failed (item 3), and an append answered EIO took
    effect once the nodes came back (item 13).  Both fsyncs must answer EIO, and once the
    nodes are back neither mount sees the files or the appended bytes; the program's
    retry of the append lands once.  (The directory's fsync had no error handler: its
    first error ended the mount.)"""
    opts = f"allow_other,lease=30,commit=60,timeo={TIMEO}"
    with ProcessCluster(tmp_path / "c", map_size=64 * MIB, durable=False) as pc:
        a = Mount(pc.config, tmp_path / "a", client="client0", options=opts)
        b = Mount(pc.config, tmp_path / "b", client="client1", options=opts)
        with a, b:
            d = a.mountpoint / "d"
            d.mkdir()
            sent = _lease_exclusively(pc, a, d, "sent")
            (d / "log").write_bytes(b"one\n")
            fsync_paths(d / "log", d)
            before = sorted([*sent, "log"])
            deferred = _leases(pc, a).get("deferred", 0)
            for k in range(3):
                (d / f"held{k}").write_bytes(b"held %d" % k)
            _wait(
                "closes left to write-back",
                10,
                lambda: _leases(pc, a).get("deferred", 0) >= deferred + 3,
            )
            fd = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"two\n")
            for i in range(pc.config.n):
                pc.stop(i)
            started = time.monotonic()
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert _errno_of(lambda: os.fsync(dfd)) == errno.EIO
            finally:
                os.close(dfd)
            assert _errno_of(lambda: os.fsync(fd)) == errno.EIO
            os.close(fd)  # (0: the fsync's EIO dropped what it was about, nothing is left)
            took = time.monotonic() - started
            for i in range(pc.config.n):
                pc.start(i)
            fsync_paths(a.mountpoint)  # (what `bftfs` commands do: nothing dropped goes)
            for m in (b, a):
                assert sorted(os.listdir(m.mountpoint / "d")) == before
                assert (m.mountpoint / "d" / "log").read_bytes() == b"one\n"
            with open(d / "log", "ab") as f:  # the program's retry
                f.write(b"two\n")
            for m in (b, a):
                assert (m.mountpoint / "d" / "log").read_bytes() == b"one\ntwo\n"
            assert took < 10 * TIMEO, f"the EIO answers took {took:.1f} s"
