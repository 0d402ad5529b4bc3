"""Attribute caching and lookup misses (issue 19): what they cost in rounds, and what
another client still sees, through real mounts of one cluster of node processes.

* An open's answer serves the kernel's permission check before the next open within the
  attribute timeout (no ``fs.stat`` round), at the default options.
* ``acregmin``/``acregmax`` (opt-in): a regular file's attributes are cached longer, and
  still an open sees the last close's size and contents on another mount, and a
  permission another mount took away is refused at the next open (also before an
  ``O_TRUNC`` truncates).
* The lookup before a create keeps asking the servers: a name another mount created and
  closed opens here at once, even right after this mount's own update of the directory.

Round counts come from the mount's Prometheus metrics (``bftfs_mount_qu_operations``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import suite_cluster

from bftfs.fuse import control
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

#: A user that owns nothing in the mount (the permission checks are of "others" bits).
NOBODY = 65534


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with suite_cluster(tmp_path_factory.mktemp("cluster") / "c") as pc:
        yield pc


def _rounds(pc: ProcessCluster, mountpoint: Path, method: str) -> int:
    """How many Q/U operations ``method`` the mount has made so far (its metrics)."""
    status = control.status_file(pc.config, mountpoint)
    deadline = time.monotonic() + 10
    while not status.exists():  # written when the mount starts serving
        assert time.monotonic() < deadline, "no status file"
        time.sleep(0.05)
    address = json.loads(status.read_text())["metrics"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    want = f'bftfs_mount_qu_operations_count{{method="{method}"}} '
    for line in text.splitlines():
        if line.startswith(want):
            return int(float(line.split()[-1]))
    return 0


def _open_close(path: Path, times: int) -> None:
    for _ in range(times):
        os.close(os.open(path, os.O_RDONLY))


def test_open_close_within_the_attribute_timeout_costs_the_open_round_only(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    # lease=0: the rounds of the attribute timeout alone (under a lease the opens after
    # the first cost none: t3_fs_leases).
    options = "allow_other,metrics_port=0,lease=0"
    with Mount(cluster.config, tmp_path / "m", options=options) as m:
        f = m.mountpoint / "f"
        f.write_bytes(b"x" * 100)
        _open_close(f, 1)
        stats, opens = (_rounds(cluster, m.mountpoint, x) for x in ("fs.stat", "fs.open"))
        _open_close(f, 10)  # well within the 1 s attribute timeout
        assert _rounds(cluster, m.mountpoint, "fs.open") - opens == 10
        # Before: each open invalidated the kernel's attributes, and the next open's
        # permission check asked fs.stat (10 more rounds).
        assert _rounds(cluster, m.mountpoint, "fs.stat") - stats <= 1


def test_acreg_caches_a_regular_files_attributes_past_the_attribute_timeout(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    # A short attribute timeout, so the test passes it quickly; files' attributes 30 s.
    short = "allow_other,metrics_port=0,attr_timeout=0.2"
    with (
        Mount(cluster.config, tmp_path / "a", options=short) as plain,
        Mount(
            cluster.config,
            tmp_path / "b",
            client="client1",
            options=short + ",acregmin=30,acregmax=60",
        ) as ac,
    ):
        (plain.mountpoint / "f").write_bytes(b"y" * 100)
        counts: dict[str, int] = {}
        for m in (plain, ac):
            f = m.mountpoint / "f"
            _open_close(f, 1)
            before = _rounds(cluster, m.mountpoint, "fs.stat")
            for _ in range(3):
                time.sleep(0.3)  # past the attribute timeout (time passing, not waiting)
                os.stat(f)
                _open_close(f, 1)
            counts[m.client] = _rounds(cluster, m.mountpoint, "fs.stat") - before
        # The mount's root directory keeps the 0.2 s timeout: one fs.stat per walk both
        # ways (the kernel's search permission check).  The file: one per stale stat
        # without acreg, none with it (the opens' answers keep its 30 s cache fresh).
        assert counts["client1"] <= 3
        assert counts["client0"] - counts["client1"] >= 3


def _open_as_nobody(cwd: Path, name: str, flags: int, *, run: bool = False) -> int:
    """Open ``name`` as user nobody in ``cwd`` (a forked child: chdir first as root, since
    the test's temporary directories above the mount are closed to others), or with
    ``run`` execute it; 0 if that succeeded (the program's exit code), else its errno."""
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 1
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if run:
                os.execv(name, [name])
            os.close(os.open(name, flags))
            code = 0
        except OSError as e:
            code = e.errno or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_acreg_open_sees_another_mounts_close_and_permission_changes(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    opts = "allow_other,acregmin=30,acregmax=60"
    with (
        Mount(cluster.config, tmp_path / "a", options=opts, client="client0") as a,
        Mount(cluster.config, tmp_path / "b", client="client1") as b,
    ):
        d = a.mountpoint / "d"
        d.mkdir(mode=0o777)
        os.chmod(d, 0o777)
        other = b.mountpoint / "d"
        (d / "f").write_bytes(b"old")
        (d / "g").write_bytes(b"keep me")
        os.chmod(d / "f", 0o644)
        os.chmod(d / "g", 0o666)
        # This mount caches both files' attributes for 30 s.
        assert os.stat(d / "f").st_size == 3 and os.stat(d / "g").st_mode & 0o777 == 0o666

        # Close-to-open: the other mount's new size and contents show at the next open.
        (other / "f").write_bytes(b"new and longer")
        with open(d / "f", "rb") as fh:
            assert os.fstat(fh.fileno()).st_size == 14
            assert fh.read() == b"new and longer"
        assert os.stat(d / "f").st_size == 14  # and the kernel's cache took it

        # A permission taken away elsewhere: refused at the next open, though the
        # kernel's cached mode still allows it.
        os.chmod(other / "f", 0o600)
        os.chmod(other / "g", 0o644)
        assert _open_as_nobody(d, "f", os.O_RDONLY) == errno.EACCES
        # O_TRUNC is checked before the truncation on a mode at most the attribute timeout
        # (1 s) old, as without acreg; the kernel still holds 0o666 for 30 s.
        time.sleep(1.2)  # time passing, not waiting for anything
        assert _open_as_nobody(d, "g", os.O_WRONLY | os.O_TRUNC) == errno.EACCES
        assert (other / "g").read_bytes() == b"keep me"  # not truncated
        # A permission granted elsewhere: at once (the kernel asks again after refusing).
        os.chmod(other / "f", 0o604)
        assert _open_as_nobody(d, "f", os.O_RDONLY) == 0
        # execve asks for execute permission only: a program others may run, not read.
        shutil.copyfile("/bin/true", d / "true")
        os.chmod(d / "true", 0o711)
        assert _open_as_nobody(d, "./true", os.O_RDONLY) == errno.EACCES
        assert _open_as_nobody(d, "./true", 0, run=True) == 0


def test_a_name_created_elsewhere_opens_at_once_after_an_own_update_of_the_directory(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Why lookup misses are still asked of the servers: a mount that answered them from
    what its own update of the directory told it would not find ``x`` here."""
    with (
        Mount(cluster.config, tmp_path / "a", client="client0") as a,
        Mount(cluster.config, tmp_path / "b", client="client1") as b,
    ):
        (a.mountpoint / "misses").mkdir()
        for i in range(20):
            (a.mountpoint / "misses" / f"own{i}").write_bytes(b"mine")  # updates of d here
            (b.mountpoint / "misses" / f"x{i}").write_bytes(b"theirs")  # created, closed there
            assert (a.mountpoint / "misses" / f"x{i}").read_bytes() == b"theirs"
