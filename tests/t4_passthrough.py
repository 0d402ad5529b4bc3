"""FUSE passthrough of verified copies (issue 63, ``fuse/passthrough.py``), through real
mounts of one cluster of node processes:

* a file read whole through a ``passthrough`` mount is kept as a copy (mode 0600 in a
  0700 directory beside the mount's status file), and read again after a remount it is
  served by the kernel from that copy: the daemon answers no read request;
* another mount's write makes the first mount's next open read the new content (the copy
  is of the old version), and the new content's copy is then kept in its place;
* a write open beside an open passed through waits for it, then fails with ETXTBSY (the
  kernel's rule), and works once the reader closed.

Skipped, with the reason, where pyfuse3 was built without libfuse 3.17 or the kernel does
not offer passthrough (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH), or not as root (a
backing file needs CAP_SYS_ADMIN).
"""

from __future__ import annotations

import errno
import os
import random
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
from mount_helpers import suite_cluster

from bftfs.fuse import control
from bftfs.fuse.passthrough import BUSY_WAIT
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(
        not getattr(pyfuse3, "PASSTHROUGH", False),
        reason="pyfuse3 built against a libfuse without passthrough (< 3.17: scripts/libfuse.sh)",
    ),
    pytest.mark.skipif(os.getuid() != 0, reason="a backing file needs CAP_SYS_ADMIN"),
]

OPTIONS = "allow_other,passthrough"
#: Did the kernel refuse passthrough? (the daemon says so in its log)
REFUSED = "every read is served by the daemon"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


def _copies(pc: ProcessCluster, mountpoint: Path) -> Path:
    return control.status_file(pc.config, mountpoint).with_suffix(".passthrough")


def _wait_for_copy(directory: Path, prefix: str) -> Path:
    """The copy named ``prefix*`` once kept (the handle's release, which keeps it, is sent
    by the kernel after the close returned)."""
    deadline = time.monotonic() + 20
    while True:
        found = [
            p for p in directory.iterdir() if p.name.startswith(prefix) and ".part" not in p.name
        ]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no copy {prefix}* in {sorted(directory.iterdir())}"
        time.sleep(0.05)


def _reads_served(m: Mount) -> int:
    """The daemon's read requests, from the statistics it logs when unmounted."""
    text = m.log.read_text(errors="replace")
    table = text.rsplit("requests served:", 1)[1]
    got = re.search(r"^read\s+(\d+)\s", table, re.MULTILINE)
    return int(got.group(1)) if got else 0


def _skip_if_refused(m: Mount) -> None:
    if REFUSED in m.log_text():
        pytest.skip("the kernel does not offer FUSE passthrough: " + m.log_text()[-300:])


def test_a_verified_file_read_again_after_a_remount_is_served_by_the_kernel(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    data = random.Random(63).randbytes(3 * 1024 * 1024 + 123)
    mountpoint = tmp_path / "m"
    with Mount(cluster.config, mountpoint, options=OPTIONS) as m:
        _skip_if_refused(m)
        f = m.mountpoint / "big.bin"
        f.write_bytes(data)
        ino = os.stat(f).st_ino
        assert f.read_bytes() == data  # read whole through the daemon: the copy is made
        copy = _wait_for_copy(_copies(cluster, m.mountpoint), f"{ino}-")
    assert _reads_served(m) > 0
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert copy.read_bytes() == data

    with Mount(cluster.config, mountpoint, options=OPTIONS) as m:
        assert (m.mountpoint / "big.bin").read_bytes() == data
        with open(m.mountpoint / "big.bin", "rb") as r:  # and a second descriptor, seeking
            r.seek(1_000_000)
            assert r.read(5000) == data[1_000_000:1_005_000]
    assert _reads_served(m) == 0


def test_another_mounts_write_is_read_at_the_next_open(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    rng = random.Random(6363)
    old, new = rng.randbytes(700_000), rng.randbytes(900_001)
    with (
        Mount(cluster.config, tmp_path / "a", options=OPTIONS) as a,
        Mount(cluster.config, tmp_path / "b", client="client1") as b,
    ):
        _skip_if_refused(a)
        fa, fb = a.mountpoint / "f.bin", b.mountpoint / "f.bin"
        fa.write_bytes(old)
        ino = os.stat(fa).st_ino
        assert fa.read_bytes() == old
        first = _wait_for_copy(_copies(cluster, a.mountpoint), f"{ino}-")
        assert fa.read_bytes() == old  # passed through
        assert fb.read_bytes() == old
        fb.write_bytes(new)  # closed: the next open on a must see it
        assert fa.read_bytes() == new
        assert not first.exists()  # the old version's copy is gone
        second = _wait_for_copy(_copies(cluster, a.mountpoint), f"{ino}-")
        assert second != first and second.read_bytes() == new
        assert fa.read_bytes() == new


def test_a_write_open_beside_a_passthrough_reader_waits_then_fails_busy(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    data = random.Random(636).randbytes(200_000)
    with Mount(cluster.config, tmp_path / "m", options=OPTIONS) as m:
        _skip_if_refused(m)
        f = m.mountpoint / "f.bin"
        f.write_bytes(data)
        ino = os.stat(f).st_ino
        assert f.read_bytes() == data
        _wait_for_copy(_copies(cluster, m.mountpoint), f"{ino}-")
        with open(f, "rb") as reader:
            started = time.monotonic()
            with pytest.raises(OSError) as refused:
                open(f, "r+b").close()
            assert refused.value.errno == errno.ETXTBSY
            assert time.monotonic() - started >= BUSY_WAIT * 0.9
            assert reader.read() == data
        with open(f, "r+b") as w:  # the reader's release came: it works (and drops the copy)
            w.write(b"changed")
        assert f.read_bytes() == b"changed" + data[7:]
