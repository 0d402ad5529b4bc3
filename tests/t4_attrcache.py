"""Attribute caching and lookup misses (issue 19): what they cost in rounds, and what
another client still sees, through real mounts of one cluster of node processes.

* An open's answer serves the kernel's permission check before the next open within the
  attribute timeout (no ``fs.stat`` round), at the default options.
* Under leases a file's attributes are cached past the attribute timeout, and still an
  open sees the last close's size and contents on another mount, and a permission
  another mount took away is refused at the next open (also before an ``O_TRUNC``
  truncates).
* The lookup before a create keeps asking the servers: a name another mount created and
  closed opens here at once, even right after this mount's own update of the directory.

Round counts come from the mount's Prometheus metrics (``bftfs_mount_qu_operations_total``).
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
from t4_leases import _lease_exclusively

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
    want = f'bftfs_mount_qu_operations_total{{method="{method}"}} '
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
def test_a_leased_files_mode_changed_elsewhere_is_checked_at_once_and_its_close_seen(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Files a mount made under its exclusive lease on their directory are leased to it,
    and its kernel keeps their attributes for the lease's term, past the 1 s attribute
    timeout.  Another mount's ``chmod`` recalls the leases; the holder's kernel forgets
    the attributes (and the holder its own recent updates') before it releases, so the
    kernel's own permission check (``default_permissions``) refuses the next open on the
    new mode at once, an ``O_TRUNC`` one before anything is truncated, and a permission
    granted elsewhere works at once.  (This was the daemon's own check under NFS's
    ``acregmin``/``acregmax``, folded into leases.)  Then close-to-open: another mount's
    new size and contents show at the next open."""
    with (
        Mount(cluster.config, tmp_path / "a", options="allow_other", client="client0") as a,
        Mount(cluster.config, tmp_path / "b", client="client1") as b,
    ):
        d = a.mountpoint / "d"
        d.mkdir(mode=0o777)
        os.chmod(d, 0o777)
        other = b.mountpoint / "d"
        _lease_exclusively(cluster, a, d, "warm")
        (d / "f").write_bytes(b"old")
        (d / "g").write_bytes(b"keep me")
        os.chmod(d / "f", 0o644)
        os.chmod(d / "g", 0o666)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)  # the creates go now, the files leased to this mount with them
        finally:
            os.close(fd)
        assert os.stat(d / "f").st_size == 3 and os.stat(d / "g").st_mode & 0o777 == 0o666
        assert _open_as_nobody(d, "f", os.O_RDONLY) == 0  # the kernel holds 0o644

        # A permission taken away elsewhere: refused at once, though the kernel had
        # cached the old mode for the lease's term.
        os.chmod(other / "f", 0o600)
        os.chmod(other / "g", 0o644)
        assert _open_as_nobody(d, "f", os.O_RDONLY) == errno.EACCES
        assert _open_as_nobody(d, "g", os.O_WRONLY | os.O_TRUNC) == errno.EACCES
        assert (other / "g").read_bytes() == b"keep me"  # not truncated
        # A permission granted elsewhere: at once (the kernel asks again after refusing).
        os.chmod(other / "f", 0o604)
        assert _open_as_nobody(d, "f", os.O_RDONLY) == 0

        # Close-to-open: the other mount's new size and contents show at the next open.
        (other / "f").write_bytes(b"new and longer")
        with open(d / "f", "rb") as fh:
            assert os.fstat(fh.fileno()).st_size == 14
            assert fh.read() == b"new and longer"
        assert os.stat(d / "f").st_size == 14  # and the kernel's cache took it
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
