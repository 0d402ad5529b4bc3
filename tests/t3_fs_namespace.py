"""Tier 3: namespace operations of the file-system model on the in-process cluster.

Every operation of docs/fs-api.md (seed 004 Table 4.3) and the errno of each refused case,
link counts, times, rename's atomic replace and its refusals, extended attributes, and two
clients seeing each other's namespace changes.  Every test ends with the invariant checks of
``fs_helpers`` (link counts match entries, parent pointers, entry types, file layout).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio
from fs_helpers import Env, run

from bftfs.fs.errors import (
    CrossDevice,
    Exists,
    FsError,
    Invalid,
    IsDir,
    NameTooLong,
    NoAttr,
    NotDir,
    NotEmpty,
    NotFound,
    Permission,
    Removed,
    StaleView,
)
from bftfs.fs.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from bftfs.fs.names import stale
from bftfs.fsobjects import ROOT
from bftfs.qu.objects import MethodRefused
from bftfs.qu.timestamp import MAX_OBJECTS

BAD_NAMES = [(b"", Invalid), (b".", Invalid), (b"..", Invalid), (b"a/b", Invalid),
             (b"a\0b", Invalid), (b"x" * 256, NameTooLong)]  # fmt: skip


def test_errno_of_each_error_class() -> None:
    table = {
        NotFound: errno.ENOENT, Exists: errno.EEXIST, NotEmpty: errno.ENOTEMPTY,
        NotDir: errno.ENOTDIR, IsDir: errno.EISDIR, Invalid: errno.EINVAL,
        NameTooLong: errno.ENAMETOOLONG, NoAttr: errno.ENODATA, CrossDevice: errno.EXDEV,
    }  # fmt: skip
    for cls, code in table.items():
        assert cls().errno == code


def test_root_and_mkdir_lookup_getattr_readdir(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        root = await fs.getattr(ROOT)
        assert stat.S_ISDIR(root.mode) and root.nlink == 2
        a = await fs.mkdir(ROOT, b"a", 0o750, 1000, 100)
        assert stat.S_IMODE(a.mode) == 0o750 and (a.uid, a.gid) == (1000, 100)
        assert a.nlink == 2 and a.ino not in (0, ROOT)
        assert (await fs.getattr(ROOT)).nlink == 3
        assert await fs.lookup(ROOT, b"a") == await fs.getattr(a.ino)
        assert (await fs.lookup(a.ino, b"..")).ino == ROOT
        assert (await fs.lookup(a.ino, b".")).ino == a.ino
        assert (await fs.lookup(ROOT, b"..")).ino == ROOT
        b = await fs.mkdir(a.ino, b"b", 0o755, 0, 0)
        names = [n for n, _ in await fs.readdir(a.ino)]
        assert names == [b"b"]
        assert (await fs.getattr(a.ino)).nlink == 3
        for name in (b"z", b"c", b"m"):
            await fs.mkdir(b.ino, name, 0o755, 0, 0)
        listing = await fs.readdir(b.ino)
        assert [n for n, _ in listing] == [b"c", b"m", b"z"]
        assert all(stat.S_ISDIR(x.mode) for _, x in listing)
        # Errors: missing names and parents, existing names, files as parents, bad names.
        with pytest.raises(NotFound):
            await fs.lookup(ROOT, b"nope")
        with pytest.raises(Exists):
            await fs.mkdir(ROOT, b"a", 0o755, 0, 0)
        with pytest.raises(NotFound):
            await fs.getattr(12345)
        fh, f = await fs.create(ROOT, b"file", 0o644, 0, 0, 0)
        await fs.release(fh)
        with pytest.raises(NotDir):
            await fs.mkdir(f.ino, b"x", 0o755, 0, 0)
        with pytest.raises(NotDir):
            await fs.lookup(f.ino, b"x")
        with pytest.raises(NotDir):
            await fs.readdir(f.ino)
        for name, err in BAD_NAMES:
            with pytest.raises(err):
                await fs.mkdir(ROOT, name, 0o755, 0, 0)
            with pytest.raises(err):
                await fs.create(ROOT, name, 0o644, 0, 0, 0)

    run(tmp_path, body)


def test_create_mknod_symlink_readlink(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, f = await fs.create(ROOT, b"f", 0o640, 7, 8, 0)
        await fs.release(fh)
        assert stat.S_ISREG(f.mode) and stat.S_IMODE(f.mode) == 0o640
        assert (f.nlink, f.size, f.uid, f.gid) == (1, 0, 7, 8)
        fifo = await fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
        assert stat.S_ISFIFO(fifo.mode)
        dev = await fs.mknod(ROOT, b"dev", stat.S_IFCHR | 0o600, 0x0103, 0, 0)
        assert stat.S_ISCHR(dev.mode) and dev.rdev == 0x0103
        sock = await fs.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, 0, 0)
        assert stat.S_ISSOCK(sock.mode)
        reg = await fs.mknod(ROOT, b"reg", 0o600, 0, 0, 0)
        assert stat.S_ISREG(reg.mode)
        ln = await fs.symlink(ROOT, b"ln", b"../some/where", 3, 4)
        assert stat.S_ISLNK(ln.mode) and ln.size == len(b"../some/where")
        assert await fs.readlink(ln.ino) == b"../some/where"
        assert (await fs.lookup(ROOT, b"ln")).ino == ln.ino
        with pytest.raises(Invalid):
            await fs.readlink(f.ino)
        with pytest.raises(Exists):
            await fs.symlink(ROOT, b"f", b"t", 0, 0)
        with pytest.raises(Exists):
            await fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
        with pytest.raises(NameTooLong):
            await fs.symlink(ROOT, b"long", b"x" * 4097, 0, 0)
        with pytest.raises(Invalid):
            await fs.symlink(ROOT, b"empty", b"", 0, 0)
        names = [n for n, _ in await fs.readdir(ROOT)]
        assert names == sorted([b"f", b"fifo", b"dev", b"sock", b"reg", b"ln"])

    run(tmp_path, body)


def test_link_unlink_and_link_counts(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.write(fh, 0, b"data")
        await fs.release(fh)
        l1 = await fs.link(f.ino, d.ino, b"l1")
        assert l1.ino == f.ino and l1.nlink == 2
        l2 = await fs.link(f.ino, ROOT, b"l2")
        assert l2.nlink == 3
        assert (await fs.lookup(d.ino, b"l1")).nlink == 3
        with pytest.raises(Exists):
            await fs.link(f.ino, ROOT, b"l2")
        with pytest.raises(Permission):  # link(2) to a directory: EPERM
            await fs.link(d.ino, ROOT, b"dl")
        await fs.unlink(ROOT, b"f")
        assert (await fs.getattr(f.ino)).nlink == 2
        await fs.unlink(d.ino, b"l1")
        a = await fs.getattr(f.ino)
        assert a.nlink == 1 and a.size == 4
        with pytest.raises(NotFound):
            await fs.unlink(ROOT, b"f")
        with pytest.raises(IsDir):
            await fs.unlink(ROOT, b"d")
        await fs.unlink(ROOT, b"l2")
        assert (await fs.getattr(f.ino)).nlink == 0  # the object remains for open handles
        with pytest.raises(NotFound):  # no new name for a removed file
            await fs.link(f.ino, ROOT, b"back")
        assert [n for n, _ in await fs.readdir(ROOT)] == [b"d"]

    run(tmp_path, body)


def test_objects_no_name_reaches_are_stale_to_callers_that_came_by_name(tmp_path: Path) -> None:
    """The kernel reaches objects through names it caches.  When another client has removed
    what such a name led to (link count 0, or a removed directory), a caller that came by a
    name gets StaleView (ESTALE: the kernel looks the path up again), a truncating open
    changes nothing, and a lookup inside the removed directory says Removed; through a
    handle (no name) the removed file stays readable."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await a.write(fh, 0, b"data")
        await a.release(fh)
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        assert (await a.getattr(f.ino, reached_by_name=True)).nlink == 1
        await b.unlink(ROOT, b"f")
        await b.rmdir(ROOT, b"d")
        for flags in (os.O_RDONLY, os.O_WRONLY | os.O_TRUNC):
            with pytest.raises(StaleView) as e:
                await a.open(f.ino, flags, reached_by_name=True)
            assert e.value.errno == errno.ESTALE
        for ino in (f.ino, d.ino):
            with pytest.raises(StaleView):
                await a.getattr(ino, reached_by_name=True)
        with pytest.raises(Removed):
            await a.lookup(d.ino, b"x")
        assert (await a.getattr(f.ino)).nlink == 0
        fh = await a.open(f.ino, os.O_RDONLY)
        assert await a.read(fh, 0, 100) == b"data"
        await a.release(fh)

    run(tmp_path, body)


def test_the_walk_again_after_a_stale_name_may_use_the_object_it_found_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ESTALE the kernel walks the path again and opens what its lookup found: that
    first use may follow a removal by another client (``looked_up``).  A later open of the
    same object by the then cached name is refused like any stale name, also when the
    first use came through the open's own ``looked_up`` (it used to leave the lookup's
    exception armed: the three-mount checker with leases read a file renamed over)."""
    monkeypatch.setattr(stale, "REVALIDATION_WINDOW", 60.0)  # timing out of the way

    async def body(env: Env) -> None:
        a, b = env.fss
        for name, data in ((b"f", b"old"), (b"g", b"new"), (b"h", b"newest")):
            fh, _ = await b.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
            await b.write(fh, 0, data)
            await b.release(fh)
        old = await a.lookup(ROOT, b"f")
        await b.rename(ROOT, b"g", ROOT, b"f", 0)
        with pytest.raises(StaleView):  # the kernel's cached name leads to a removed file
            await a.open(old.ino, os.O_RDONLY, reached_by_name=True)
        found = await a.lookup(ROOT, b"f")  # the walk again
        fh = await a.open(found.ino, os.O_RDONLY, reached_by_name=True, looked_up=True)
        assert await a.read(fh, 0, 100) == b"new"
        await a.release(fh)
        await b.rename(ROOT, b"h", ROOT, b"f", 0)
        with pytest.raises(StaleView):  # by the cached name, not a walk again: refused
            await a.open(found.ino, os.O_RDONLY, reached_by_name=True)

    run(tmp_path, body)


def test_create_of_a_name_that_exists_meanwhile(tmp_path: Path) -> None:
    """The kernel creates only names it believes absent (a cached negative entry, or a
    lookup another client's create overtook).  Without O_EXCL, open(O_CREAT) opens the
    existing file, as an NFS server's unchecked create does (O_TRUNC truncates it, no
    second file is made); when its mode bits would refuse the caller, the answer is ESTALE
    so the kernel looks again and checks itself; with O_EXCL it is EEXIST."""

    async def body(env: Env) -> None:
        a, b = env.fss
        with pytest.raises(NotFound):
            await a.lookup(ROOT, b"f")
        fh, f = await b.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await b.write(fh, 0, b"theirs")
        await b.release(fh)
        flags = os.O_RDWR | os.O_CREAT
        fh, got = await a.create(ROOT, b"f", 0o600, 0, 0, flags)
        assert (got.ino, got.size, got.mode & 0o777) == (f.ino, 6, 0o644)
        assert await a.read(fh, 0, 100) == b"theirs"
        await a.release(fh)
        with pytest.raises(StaleView) as stale:  # uid 1000 may not write a 0644 root file
            await a.create(ROOT, b"f", 0o600, 1000, 1000, flags | os.O_TRUNC)
        assert stale.value.errno == errno.ESTALE
        with pytest.raises(Exists):
            await a.create(ROOT, b"f", 0o600, 0, 0, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        fh, got = await a.create(ROOT, b"f", 0o600, 0, 0, flags | os.O_TRUNC)
        await a.write(fh, 0, b"mine")
        await a.release(fh)
        again = await b.lookup(ROOT, b"f")
        assert (again.ino, again.size, again.mode & 0o777) == (f.ino, 4, 0o644)
        assert [n for n, _ in await a.readdir(ROOT)] == [b"f"]

    run(tmp_path, body)


def test_rmdir(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        a = await fs.mkdir(ROOT, b"a", 0o755, 0, 0)
        b = await fs.mkdir(a.ino, b"b", 0o755, 0, 0)
        with pytest.raises(NotEmpty):
            await fs.rmdir(ROOT, b"a")
        fh, _ = await fs.create(b.ino, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        with pytest.raises(NotEmpty):
            await fs.rmdir(a.ino, b"b")
        with pytest.raises(NotDir):
            await fs.rmdir(b.ino, b"f")
        with pytest.raises(NotFound):
            await fs.rmdir(ROOT, b"zzz")
        await fs.unlink(b.ino, b"f")
        await fs.rmdir(a.ino, b"b")
        assert (await fs.getattr(a.ino)).nlink == 2
        assert (await fs.getattr(b.ino)).nlink == 0
        with pytest.raises(NotFound):  # a removed directory takes no new entries
            await fs.mkdir(b.ino, b"x", 0o755, 0, 0)
        with pytest.raises(NotFound):
            await fs.readdir(b.ino)
        await fs.rmdir(ROOT, b"a")
        assert (await fs.getattr(ROOT)).nlink == 2
        assert await fs.readdir(ROOT) == []

    run(tmp_path, body)


def test_times_follow_posix(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        assert d.atime_ns == d.mtime_ns == d.ctime_ns
        fh, f = await fs.create(d.ino, b"f", 0o644, 0, 0, 0)
        d1 = await fs.getattr(d.ino)
        assert d1.mtime_ns == d1.ctime_ns == f.ctime_ns > d.mtime_ns  # entry added
        await fs.write(fh, 0, b"x")
        await fs.release(fh)
        f1 = await fs.getattr(f.ino)
        assert f1.mtime_ns > f.mtime_ns and f1.ctime_ns >= f1.mtime_ns
        f2 = await fs.setattr(f.ino, mode=0o600)
        assert f2.ctime_ns > f1.ctime_ns and f2.mtime_ns == f1.mtime_ns
        f3 = await fs.setattr(f.ino, atime_ns=5, mtime_ns=6)
        assert (f3.atime_ns, f3.mtime_ns) == (5, 6) and f3.ctime_ns > f2.ctime_ns
        await fs.link(f.ino, ROOT, b"l")
        f4 = await fs.getattr(f.ino)
        assert f4.ctime_ns > f3.ctime_ns and f4.mtime_ns == 6
        await fs.rename(d.ino, b"f", ROOT, b"g")
        assert (await fs.getattr(f.ino)).ctime_ns > f4.ctime_ns
        d2 = await fs.getattr(d.ino)
        assert d2.mtime_ns > d1.mtime_ns

    run(tmp_path, body)


def test_setattr_mode_owner_and_errors(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        a = await fs.setattr(f.ino, mode=stat.S_IFREG | 0o4711, uid=5, gid=6)
        assert a.mode == stat.S_IFREG | 0o4711 and (a.uid, a.gid) == (5, 6)
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        a = await fs.setattr(d.ino, mode=0o700)
        assert a.mode == stat.S_IFDIR | 0o700
        with pytest.raises(IsDir):
            await fs.setattr(d.ino, size=0)
        ln = await fs.symlink(ROOT, b"ln", b"t", 0, 0)
        with pytest.raises(Invalid):
            await fs.setattr(ln.ino, size=3)
        with pytest.raises(NotFound):
            await fs.setattr(999, mode=0o600)

    run(tmp_path, body)


def test_setgid_directory_passes_on_its_group(tmp_path: Path) -> None:
    """Linux (ext4): every object made in a set-group-ID directory takes its group, a
    subdirectory also the set-group-ID bit; the servers decide it from the directory, so
    a client asking for another group (a Byzantine one, through a raw update) gets it too."""

    async def body(env: Env) -> None:
        fs = env.fs
        d = await fs.mkdir(ROOT, b"d", 0o775, 0, 0)
        await fs.setattr(d.ino, mode=0o2775, gid=1234)
        sub = await fs.mkdir(d.ino, b"sub", 0o755, 7, 8)
        assert sub.gid == 1234 and sub.mode == stat.S_IFDIR | 0o2755 and sub.uid == 7
        fh, f = await fs.create(d.ino, b"f", 0o644, 7, 8, 0)
        await fs.release(fh)
        ln = await fs.symlink(d.ino, b"ln", b"t", 7, 8)
        fifo = await fs.mknod(d.ino, b"fifo", stat.S_IFIFO | 0o600, 0, 7, 8)
        for a in (f, ln, fifo):
            assert a.gid == 1234 and not a.mode & stat.S_ISGID and a.uid == 7
        deeper = await fs.mkdir(sub.ino, b"deeper", 0o700, 0, 0)  # inherited onwards
        assert deeper.gid == 1234 and deeper.mode & stat.S_ISGID
        plain = await fs.mkdir(ROOT, b"plain", 0o755, 7, 8)  # no set-group-ID parent
        assert plain.gid == 8 and not plain.mode & stat.S_ISGID
        arg = {"p": d.ino, "o": d.ino + 5 * env.cluster.config.n, "name": b"raw", "now": 1,
               "mode": stat.S_IFIFO | 0o644, "uid": 9, "gid": 9, "rdev": 0}  # fmt: skip
        raw, _ = await env.raw.update([d.ino, arg["o"]], "fs.create", arg)
        assert raw["gid"] == 1234
        assert (await env.fss[1].lookup(d.ino, b"sub")).gid == 1234

    run(tmp_path, body)


#: The extremes ext4 stores: 1901-12-13T20:45:52Z and 2446-05-10T22:38:55.999999999Z.
OLDEST = -(1 << 31) * 10**9
NEWEST = ((1 << 34) - (1 << 31)) * 10**9 - 1


def test_times_before_1970_and_after_2262_round_trip(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs, other = env.fss
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        for atime, mtime in ((-1, -999_999_999), (OLDEST, NEWEST), (1 << 63, NEWEST - 1)):
            for ino in (f.ino, d.ino):
                a = await fs.setattr(ino, atime_ns=atime, mtime_ns=mtime)
                assert (a.atime_ns, a.mtime_ns) == (atime, mtime)
                b = await other.getattr(ino)
                assert (b.atime_ns, b.mtime_ns) == (atime, mtime)
        fh = await fs.open(f.ino, os.O_RDWR)  # held back with buffered data, then flushed
        await fs.write(fh, 0, b"x")
        await fs.setattr(f.ino, atime_ns=OLDEST, mtime_ns=NEWEST, fh=fh)
        await fs.release(fh)
        b = await other.getattr(f.ino)
        assert (b.atime_ns, b.mtime_ns) == (OLDEST, NEWEST)
        for bad in (OLDEST - 1, NEWEST + 1, 1 << 64, -(1 << 63) - 1):
            with pytest.raises(Invalid):
                await fs.setattr(f.ino, mtime_ns=bad)
            with pytest.raises(Invalid):
                await fs.setattr(d.ino, atime_ns=bad)
            if -(1 << 63) <= bad < 1 << 64:  # (msgpack cannot even carry the others)
                with pytest.raises(MethodRefused) as e:  # the servers refuse it too
                    await env.raw.update([f.ino], "fs.setattr", {"mtime": bad, "now": 1})
                assert e.value.code == "invalid"
        assert (await other.getattr(f.ino)).mtime_ns == NEWEST

    run(tmp_path, body)


def test_rename_file_within_and_across_directories(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        a = await fs.mkdir(ROOT, b"a", 0o755, 0, 0)
        b = await fs.mkdir(ROOT, b"b", 0o755, 0, 0)
        fh, f = await fs.create(a.ino, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        await fs.rename(a.ino, b"f", a.ino, b"g")
        assert [n for n, _ in await fs.readdir(a.ino)] == [b"g"]
        await fs.rename(a.ino, b"g", b.ino, b"h")
        assert await fs.readdir(a.ino) == []
        assert (await fs.lookup(b.ino, b"h")).ino == f.ino
        await fs.rename(b.ino, b"h", b.ino, b"h")  # same name: nothing happens
        assert (await fs.lookup(b.ino, b"h")).ino == f.ino
        with pytest.raises(NotFound):
            await fs.rename(a.ino, b"missing", b.ino, b"x")
        with pytest.raises(NotFound):
            await fs.rename(a.ino, b"missing", 4242, b"x")

    run(tmp_path, body)


def test_rename_replaces_atomically_and_refuses_posix_violations(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        fh, g = await fs.create(d.ino, b"g", 0o644, 0, 0, 0)
        await fs.release(fh)
        # Replace a file: the old target loses its link, in the same update.
        await fs.rename(ROOT, b"f", d.ino, b"g")
        assert (await fs.lookup(d.ino, b"g")).ino == f.ino
        assert (await fs.getattr(g.ino)).nlink == 0
        with pytest.raises(NotFound):
            await fs.lookup(ROOT, b"f")
        # Directories: replace only an empty directory, never a file with a dir or back.
        e1 = await fs.mkdir(ROOT, b"e1", 0o755, 0, 0)
        e2 = await fs.mkdir(ROOT, b"e2", 0o755, 0, 0)
        await fs.mkdir(e2.ino, b"sub", 0o755, 0, 0)
        with pytest.raises(NotEmpty):
            await fs.rename(ROOT, b"e1", ROOT, b"e2")
        with pytest.raises(NotDir):
            await fs.rename(ROOT, b"e1", d.ino, b"g")
        with pytest.raises(IsDir):
            await fs.rename(d.ino, b"g", ROOT, b"e1")
        await fs.rename(e2.ino, b"sub", ROOT, b"e1")  # replaces the empty e1
        assert (await fs.getattr(e1.ino)).nlink == 0
        assert (await fs.getattr(e2.ino)).nlink == 2
        assert (await fs.getattr(ROOT)).nlink == 2 + 3  # d, e1 (was sub), e2
        # Under itself: refused for the directory itself and any descendant.
        x = await fs.mkdir(ROOT, b"x", 0o755, 0, 0)
        y = await fs.mkdir(x.ino, b"y", 0o755, 0, 0)
        z = await fs.mkdir(y.ino, b"z", 0o755, 0, 0)
        for parent in (x, y, z):
            with pytest.raises(Invalid):
                await fs.rename(ROOT, b"x", parent.ino, b"loop")
        # Moving a directory up and across updates both parents' link counts.
        await fs.rename(y.ino, b"z", ROOT, b"z")
        assert (await fs.getattr(y.ino)).nlink == 2
        assert (await fs.lookup(z.ino, b"..")).ino == ROOT
        await fs.rename(ROOT, b"z", y.ino, b"z2")
        assert (await fs.lookup(z.ino, b"..")).ino == y.ino
        # Flags.
        with pytest.raises(Exists):
            await fs.rename(ROOT, b"e2", ROOT, b"d", RENAME_NOREPLACE)
        await fs.rename(ROOT, b"e2", ROOT, b"new", RENAME_NOREPLACE)
        with pytest.raises(NotFound):
            await fs.rename(ROOT, b"new", ROOT, b"absent", RENAME_EXCHANGE)
        with pytest.raises(Invalid):
            await fs.rename(ROOT, b"new", ROOT, b"d", RENAME_EXCHANGE | RENAME_NOREPLACE)

    run(tmp_path, body)


def test_rename_exchange(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        a = await fs.mkdir(ROOT, b"a", 0o755, 0, 0)
        b = await fs.mkdir(ROOT, b"b", 0o755, 0, 0)
        fh, f = await fs.create(a.ino, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        sub = await fs.mkdir(b.ino, b"sub", 0o755, 0, 0)
        await fs.rename(a.ino, b"f", b.ino, b"sub", RENAME_EXCHANGE)
        assert (await fs.lookup(a.ino, b"f")).ino == sub.ino
        assert (await fs.lookup(b.ino, b"sub")).ino == f.ino
        assert (await fs.lookup(sub.ino, b"..")).ino == a.ino
        assert (await fs.getattr(a.ino)).nlink == 3 and (await fs.getattr(b.ino)).nlink == 2
        with pytest.raises(Invalid):  # would put a under its own subdirectory
            await fs.rename(ROOT, b"a", a.ino, b"f", RENAME_EXCHANGE)

    run(tmp_path, body)


def test_rename_beyond_eight_objects_is_exdev(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        parent = ROOT
        for i in range(8):
            parent = (await fs.mkdir(parent, b"d%d" % i, 0o755, 0, 0)).ino
        await fs.mkdir(ROOT, b"m", 0o755, 0, 0)
        with pytest.raises(CrossDevice):
            await fs.rename(ROOT, b"m", parent, b"m")
        fh, _ = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        await fs.rename(ROOT, b"f", parent, b"f")  # files need no ancestor chain

    run(tmp_path, body)


def test_xattrs(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        fs = env.fs
        fh, f = await fs.create(ROOT, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        for ino in (f.ino, d.ino):
            assert await fs.listxattr(ino) == []
            await fs.setxattr(ino, b"user.a", b"1")
            await fs.setxattr(ino, b"user.b", b"")
            assert await fs.getxattr(ino, b"user.a") == b"1"
            assert await fs.getxattr(ino, b"user.b") == b""
            assert await fs.listxattr(ino) == [b"user.a", b"user.b"]
            with pytest.raises(Exists):
                await fs.setxattr(ino, b"user.a", b"2", XATTR_CREATE)
            with pytest.raises(NoAttr):
                await fs.setxattr(ino, b"user.c", b"2", XATTR_REPLACE)
            await fs.setxattr(ino, b"user.a", b"2", XATTR_REPLACE)
            assert await fs.getxattr(ino, b"user.a") == b"2"
            await fs.removexattr(ino, b"user.a")
            with pytest.raises(NoAttr):
                await fs.getxattr(ino, b"user.a")
            with pytest.raises(NoAttr):
                await fs.removexattr(ino, b"user.a")
            with pytest.raises(FsError) as e:
                await fs.setxattr(ino, b"user.big", bytes(65537))
            assert e.value.errno == errno.E2BIG
            with pytest.raises(NameTooLong):
                await fs.setxattr(ino, b"u" * 256, b"")
        assert (await env.fss[1].getxattr(f.ino, b"user.b")) == b""

    run(tmp_path, body)


def test_two_clients_see_each_others_namespace_changes(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        a, b = env.fss
        d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
        assert (await b.lookup(ROOT, b"d")).ino == d.ino
        fh, f = await b.create(d.ino, b"f", 0o644, 0, 0, 0)
        await b.release(fh)
        assert [n for n, _ in await a.readdir(d.ino)] == [b"f"]
        # a's cached entry goes stale when b renames: a's unlink must still do the right
        # thing (the servers refuse the stale view, a re-reads and retries).
        await b.rename(d.ino, b"f", ROOT, b"f")
        fh, f2 = await b.create(d.ino, b"f", 0o644, 0, 0, 0)
        await b.release(fh)
        await a.unlink(d.ino, b"f")
        assert (await b.getattr(f2.ino)).nlink == 0
        assert (await b.getattr(f.ino)).nlink == 1
        # Concurrent creates of one name: exactly one wins.
        results: list[str] = []

        async def mk(fs: object, tag: str) -> None:
            try:
                await fs.mkdir(ROOT, b"race", 0o755, 0, 0)  # type: ignore[attr-defined]
                results.append(tag)
            except Exists:
                results.append("exists")

        async with trio.open_nursery() as n:
            n.start_soon(mk, a, "a")
            n.start_soon(mk, b, "b")
        assert sorted(results)[0] in ("a", "b") and results.count("exists") == 1

    run(tmp_path, body)


def test_statfs(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = await env.fs.statfs()
        assert s["f_namemax"] == 255 and s["f_bsize"] == env.cluster.config.block_size
        assert s["f_blocks"] >= s["f_bfree"] >= 0

    run(tmp_path, body)


def test_lookup_is_one_round_and_follows_replaced_entries(tmp_path: Path) -> None:
    """A cached entry is checked and its attributes fetched in one two-object query; when
    another client replaced or removed the entry, lookup answers what the servers hold."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, first = await a.create(ROOT, b"f", 0o644, 0, 0, 0)
        await a.release(fh)
        ops = a.qu.statistics().operations
        assert (await a.lookup(ROOT, b"f")).ino == first.ino
        assert a.qu.statistics().operations == ops + 1
        await b.unlink(ROOT, b"f")
        fh, second = await b.create(ROOT, b"f", 0o600, 0, 0, 0)
        await b.release(fh)
        got = await a.lookup(ROOT, b"f")
        assert (got.ino, got.mode & 0o777) == (second.ino, 0o600)
        await b.unlink(ROOT, b"f")
        with pytest.raises(NotFound):
            await a.lookup(ROOT, b"f")

    run(tmp_path, body)


def test_new_objects_share_their_directorys_preferred_quorum(tmp_path: Path) -> None:
    """Object ids are random but congruent to the parent's mod n (see Meta.new_oid),
    so a directory and its entries' objects have one preferred quorum."""

    async def body(env: Env) -> None:
        fs = env.fs
        n = env.cluster.config.n
        d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
        fh, f = await fs.create(d.ino, b"f", 0o644, 0, 0, 0)
        await fs.release(fh)
        s = await fs.symlink(d.ino, b"s", b"f", 0, 0)
        assert {x % n for x in (ROOT, d.ino, f.ino, s.ino)} == {ROOT % n}
        assert len({d.ino, f.ino, s.ino}) == 3

    run(tmp_path, body)


def test_readdir_asks_for_attributes_max_objects_at_a_time(tmp_path: Path) -> None:
    """readdir of 70 entries that another client made: one directory query, then the
    entries' attributes in queries of up to the cluster's ``max_objects`` (32 in a new
    cluster: what nodes accept; all share the directory's quorum); a second name of one
    file costs nothing more."""

    async def body(env: Env) -> None:
        a, b = env.fss
        width = b.meta.config.max_objects
        assert width == MAX_OBJECTS == 32
        d = await a.mkdir(ROOT, b"big", 0o755, 0, 0)
        made = {}
        for i in range(70):
            fh, f = await a.create(d.ino, b"f%02d" % i, 0o600 + i % 8, 0, 0, 0)
            await a.release(fh)
            made[b"f%02d" % i] = f
        await a.link(made[b"f00"].ino, d.ino, b"link")
        ops = b.qu.statistics().operations
        listing = await b.readdir(d.ino)
        assert b.qu.statistics().operations - ops == 1 + -(-70 // width)
        assert [n for n, _ in listing] == sorted([*made, b"link"])
        got = dict(listing)
        for name, f in made.items():
            assert (got[name].ino, got[name].mode) == (f.ino, f.mode)
        assert got[b"link"].ino == made[b"f00"].ino and got[b"link"].nlink == 2

    run(tmp_path, body)


def test_own_attributes_yield_to_a_newer_version_the_servers_answered(tmp_path: Path) -> None:
    """A client answers attributes its own update produced for ``attr_ttl`` without asking;
    once the servers have answered a newer version (another client's change, seen at an
    open), a lookup must not go back to the older ones (the consistency checker found a
    lookup answering the old size, and the kernel cut the file's pages to it)."""

    async def body(env: Env) -> None:
        a, b = env.fss
        fh, f = await a.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await a.write(fh, 0, b"x" * 100)
        await a.release(fh)
        fh = await b.open(f.ino, os.O_WRONLY | os.O_APPEND)
        await b.write(fh, 0, b"y" * 8191)
        await b.release(fh)
        fh = await a.open(f.ino, os.O_RDONLY)  # close-to-open: the new version
        assert len(await a.read(fh, 0, 10_000)) == 8291
        await a.release(fh)
        assert (await a.lookup(ROOT, b"f")).size == 8291
        assert (await a.getattr(f.ino)).size == 8291

    run(tmp_path, body, attr_ttl=60.0)
