"""POSIX semantics through the kernel on a real mount: errno of every refused case, link
counts, times, and permission checks by the kernel (``default_permissions``) for a
non-root user.

The same checks run on a local directory first (``reference``), so each expectation is
what Linux itself does, not what we believe it does; then on a mount, and on a mount with
leases (``lease=30``: shared and exclusive leases, directory write-back).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

NOBODY = 65534


def _mounted(
    factory: pytest.TempPathFactory, options: str | None, **cluster: Any
) -> Iterator[Path]:
    where = _open_dir(Path(tempfile.gettempdir()))
    home = factory.mktemp("cluster") / "c"
    try:
        with (
            ProcessCluster(home, map_size=1 << 29, durable=False, **cluster) as pc,
            Mount(pc.config, where / "m", options=options) as m,
        ):
            os.chmod(m.mountpoint, 0o755)
            yield m.mountpoint
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def mnt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from _mounted(tmp_path_factory, None)


@pytest.fixture(scope="module")
def mnt_lease(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A mount with leases (issue 33): shared and exclusive leases, directory write-back."""
    yield from _mounted(tmp_path_factory, "allow_other,lease=30")


def _open_dir(base: Path) -> Path:
    """A directory other users can reach (pytest's temporary directories are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="bftfs-posix-", dir=base))
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def mnt_four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A mount of four nodes (issue 68: FaB metadata, blocks in Byzantine Listeners
    registers, ``bftfs init --engine fab --n 4``), leases on."""
    yield from _mounted(tmp_path_factory, "allow_other", engine="fab", n=4)


MOUNTS = {"bftfs": "mnt", "bftfs-lease": "mnt_lease", "bftfs-four": "mnt_four"}


@pytest.fixture(
    params=["reference", "bftfs", "bftfs-lease", pytest.param("bftfs-four", marks=pytest.mark.slow)]
)
def root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the local disk (reference) or in a mount (with leases; of four
    nodes, in the slow suite)."""
    if request.param == "reference":
        base = _open_dir(Path(tempfile.gettempdir()))
        d = base / "ref"
    else:
        base = None
        mount = request.getfixturevalue(MOUNTS[request.param])
        d = mount / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


def err(fn: Callable[[], object]) -> int:
    """The errno ``fn`` fails with (0 if it succeeds)."""
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def test_errno_of_refused_operations(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    (root / "e").mkdir()
    (root / "file").write_bytes(b"y")
    assert err(lambda: (root / "d").mkdir()) == errno.EEXIST
    assert err(lambda: os.mkdir(root / "missing" / "x")) == errno.ENOENT
    assert err(lambda: (root / "d").rmdir()) == errno.ENOTEMPTY
    assert err(lambda: os.rmdir(root / "file")) == errno.ENOTDIR
    assert err(lambda: os.unlink(root / "d")) == errno.EISDIR
    assert err(lambda: os.unlink(root / "nothing")) == errno.ENOENT
    assert err(lambda: os.listdir(root / "file")) == errno.ENOTDIR
    assert err(lambda: os.rename(root / "d", root / "d" / "inside")) == errno.EINVAL
    assert err(lambda: os.rename(root / "d", root / "file")) == errno.ENOTDIR
    assert err(lambda: os.rename(root / "file", root / "d")) == errno.EISDIR
    assert err(lambda: os.rename(root / "e", root / "d")) == errno.ENOTEMPTY
    assert err(lambda: os.link(root / "d", root / "dlink")) == errno.EPERM
    assert err(lambda: os.symlink("t", root / "file")) == errno.EEXIST
    assert err(lambda: os.readlink(root / "file")) == errno.EINVAL
    assert err(lambda: (root / "d").write_bytes(b"")) == errno.EISDIR
    assert err(lambda: os.open(root / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST
    assert err(lambda: (root / ("n" * 256)).write_bytes(b"")) == errno.ENAMETOOLONG
    assert err(lambda: os.getxattr(root / "file", "user.none")) == errno.ENODATA


def test_link_counts(root: Path) -> None:
    (root / "d").mkdir()
    assert os.stat(root / "d").st_nlink == 2
    (root / "d" / "sub1").mkdir()
    (root / "d" / "sub2").mkdir()
    assert os.stat(root / "d").st_nlink == 4
    (root / "d" / "sub2").rmdir()
    assert os.stat(root / "d").st_nlink == 3
    (root / "e").mkdir()
    os.rename(root / "d" / "sub1", root / "e" / "sub1")
    assert os.stat(root / "d").st_nlink == 2 and os.stat(root / "e").st_nlink == 3
    (root / "f").write_bytes(b"1")
    os.link(root / "f", root / "g")
    os.link(root / "f", root / "e" / "h")
    assert os.stat(root / "f").st_nlink == 3
    (root / "target").write_bytes(b"2")
    os.rename(root / "target", root / "g")  # replaces one of f's names atomically
    assert os.stat(root / "f").st_nlink == 2
    assert (root / "g").read_bytes() == b"2"
    os.unlink(root / "f")
    assert os.stat(root / "e" / "h").st_nlink == 1
    assert (root / "e" / "h").read_bytes() == b"1"


def test_times(root: Path) -> None:
    f = root / "t"
    f.write_bytes(b"1")
    st0 = os.stat(f)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    st1 = os.stat(f)
    assert (st1.st_atime_ns, st1.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    assert st1.st_ctime_ns >= st0.st_ctime_ns
    before = time.time_ns()
    with open(f, "ab") as fh:
        fh.write(b"2")
    st2 = os.stat(f)
    assert st2.st_mtime_ns >= before - 10**9  # writing updates mtime (clock granularity)
    d_before = os.stat(root).st_mtime_ns
    (root / "new").write_bytes(b"")
    assert os.stat(root).st_mtime_ns >= d_before  # creating a name updates the directory
    os.utime(root, ns=(1_000_000_000, 1_000_000_000))
    for k in range(6):  # (with leases, the later ones are made and removed in the mount)
        (root / f"tmp{k}").write_bytes(b"x")
        os.unlink(root / f"tmp{k}")
    assert os.stat(root).st_mtime_ns > 1_000_000_000  # so does removing one


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    # The system interpreter: the virtualenv's may live where "nobody" cannot execute it.
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run(
        [python, "-c", code],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_permissions_checked_by_the_kernel(root: Path) -> None:
    (root / "ro").write_bytes(b"secret")
    os.chmod(root / "ro", 0o600)
    (root / "pub").write_bytes(b"public")
    os.chmod(root / "pub", 0o644)
    (root / "closed").mkdir()
    os.chmod(root / "closed", 0o700)
    (root / "mine").mkdir()
    os.chown(root / "mine", NOBODY, NOBODY)
    probe = f"""
import errno, os
def e(fn):
    try:
        fn()
    except OSError as x:
        return x.errno
    return 0
r = {str(root)!r}
print(e(lambda: open(r + "/ro", "rb").read()),
      e(lambda: open(r + "/pub", "rb").read()),
      e(lambda: open(r + "/pub", "ab")),
      e(lambda: os.listdir(r + "/closed")),
      e(lambda: os.chmod(r + "/pub", 0o777)),
      e(lambda: open(r + "/mine/own", "wb").write(b"ok")),
      e(lambda: os.chown(r + "/mine", 0, 0)))
"""
    out = _as_nobody(probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        str(x) for x in (errno.EACCES, 0, errno.EACCES, errno.EACCES, errno.EPERM, 0, errno.EPERM)
    ]
    assert os.stat(root / "mine" / "own").st_uid == NOBODY


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """renameat2(2) (Python has no wrapper): flags 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_fifo_and_rename_flags(root: Path) -> None:
    os.mkfifo(root / "fifo", 0o640)
    st = os.stat(root / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    (root / "a").write_bytes(b"A")
    (root / "b").write_bytes(b"B")
    assert err(lambda: _renameat2(root / "a", root / "b", 1)) == errno.EEXIST
    _renameat2(root / "a", root / "b", 2)  # exchange: both names stay, contents swap
    assert (root / "a").read_bytes() == b"B" and (root / "b").read_bytes() == b"A"
    _renameat2(root / "a", root / "c", 1)
    assert not (root / "a").exists() and (root / "c").read_bytes() == b"B"
    (root / "dir").mkdir()
    _renameat2(root / "dir", root / "c", 2)  # a directory and a file may trade places
    assert (root / "c").is_dir() and (root / "dir").read_bytes() == b"B"


def test_setgid_directory_passes_on_its_group(root: Path) -> None:
    d = root / "sg"
    d.mkdir()
    os.chown(d, -1, 1234)
    os.chmod(d, 0o2775)
    (d / "sub").mkdir(mode=0o755)
    (d / "f").write_bytes(b"x")
    os.symlink("f", d / "ln")
    os.mkfifo(d / "fifo")
    (d / "sub" / "deeper").mkdir()
    for name in ("sub", "f", "fifo", "sub/deeper"):
        assert os.stat(d / name).st_gid == 1234, name
    assert os.lstat(d / "ln").st_gid == 1234
    assert stat.S_IMODE(os.stat(d / "sub").st_mode) == 0o2755
    assert os.stat(d / "sub" / "deeper").st_mode & stat.S_ISGID
    assert not os.stat(d / "f").st_mode & stat.S_ISGID
    (root / "plain").mkdir()
    assert os.stat(root / "plain").st_gid == 0 and not os.stat(root / "plain").st_mode & 0o7000


#: ext4's extremes: 1901-12-13T20:45:52Z and 2446-05-10T22:38:55Z (ext4 drops the
#: nanoseconds of its last second; bftfs keeps them).
OLDEST = -(1 << 31) * 10**9
NEWEST = ((1 << 34) - (1 << 31) - 1) * 10**9


def test_times_before_1970_and_after_2262(root: Path) -> None:
    f = root / "t"
    f.write_bytes(b"1")
    (root / "d").mkdir()
    for path in (f, root / "d"):
        for atime, mtime in ((-1, -1_500_000_000), (OLDEST, NEWEST), (1 << 63, 1 << 63)):
            os.utime(path, ns=(atime, mtime))
            st = os.stat(path)
            assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    with open(f, "r+b") as fh:  # set through the handle while writing (held back, flushed)
        fh.write(b"2")
        fh.flush()
        os.utime(fh.fileno(), ns=(OLDEST, NEWEST))
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (OLDEST, NEWEST)


def test_fstat_of_an_open_unlinked_file(root: Path) -> None:
    fd = os.open(root / "u", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"hello")
        os.unlink(root / "u")
        assert os.fstat(fd).st_nlink == 0
        os.write(fd, b" again")
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b"hello again"
        assert os.fstat(fd).st_nlink == 0 and os.fstat(fd).st_size == 11
    finally:
        os.close(fd)
    (root / "v").write_bytes(b"old")
    fd = os.open(root / "v", os.O_RDONLY)
    try:
        (root / "w").write_bytes(b"new")
        os.rename(root / "w", root / "v")  # replaced: the open file has no name left
        assert os.fstat(fd).st_nlink == 0 and os.read(fd, 10) == b"old"
    finally:
        os.close(fd)


def test_posix_fallocate(root: Path) -> None:
    """bftfs answers fallocate(2) EOPNOTSUPP (pyfuse3 has no handler); glibc's
    posix_fallocate then writes a zero byte per block, which gives the right size and
    zeros, and keeps what was written."""
    fd = os.open(root / "fa", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"head")
        os.posix_fallocate(fd, 0, 300_000)
        assert os.fstat(fd).st_size == 300_000
        os.posix_fallocate(fd, 100, 50)  # inside: no change
        assert os.fstat(fd).st_size == 300_000
    finally:
        os.close(fd)
    assert (root / "fa").read_bytes() == b"head" + bytes(300_000 - 4)
