"""Writing a past tree back into the live file system as new versions, through a client's
own :class:`~bftfs.fs.filesystem.FileSystem` (``bftfs restore`` into the cluster; issue 36).

Through a mount, each restored file was a handful of FUSE requests (a lookup, the create,
the write, the close's flush, a ``utime``), the create and the ``utime`` each a Q/U
update: a thousand files took as long as a ``cp -a`` of them.  Here the tree is written
with the calls a mount's own batching is built on: directories made first, each with its
mode; then every file created with its mode and owner, written, and its times set through
its open handle (they join the buffered write), :data:`PARALLEL` at a time; the closes
leave small files to directory write-back (``fs/writeback/``), which sends them with
their content, six to an update (``fs.createmany``); a file past the inline limit gets its
blocks written as any file's.  Then everything held is sent, :data:`PARALLEL_DIRS`
directories at a time, and directories get their times (their own mtime moves as their
entries arrive).  Directories are made a level at a time, each level's at once.

What is already as it was is not written again: a file whose entry still names the same
object with the same content and attributes (``unchanged``: the caller passes the tree as
it is now, when writing back over the very path the tree was read from), so restoring a
tree in place costs only what changed, and no old block is read for it.

An entry in the way is replaced: a link or a special file where a file, link or directory
was, a file where a directory was (a directory where a file was is refused: its contents
would go).  A file is never written through a link: entries are opened by object id.
"""

from __future__ import annotations

import contextlib
import os
import stat as st
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.fs.errors import FsError, NotFound
from bftfs.fs.history.versions import Version
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.dirents import all_entries

#: Files created and written at once: enough for directory write-back to fill its
#: updates and for the reads of old blocks to overlap, few enough to bound the memory
#: of contents read and not yet handed over.
PARALLEL = 64
#: Directories made, sent (their creates held by write-back) and given their times at
#: once: the updates of one directory follow one another, those of different directories
#: need not (one after the other, a 1 000-file tree's ~170 ``fs.createmany`` were
#: ~170 rounds in a row).
PARALLEL_DIRS = 16
#: Bytes one write call hands over (a mount's writes are 128 KiB at most).
WRITE_CHUNK = 1 << 20

#: ``update(done, total)`` after each file, link or skipped entry.
Update = Callable[[int, int], None]


def _quiet(done: int, total: int) -> None:
    pass


@contextlib.contextmanager
def naming(what: str) -> Iterator[None]:
    """An :class:`FsError` raised within says what failed (``unlink late``) before why:
    a restore that stops tells its user where, and the same command run again can be
    checked against it."""
    try:
        yield
    except FsError as e:
        raise type(e)(f"{what}: {e}") from e


@dataclass
class Counts:
    """What :meth:`TreeWriter.write` did."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    deleted: int = 0
    skipped: int = 0
    #: Files already as they were (same object, content and attributes): not written.
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def same_content(old: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    """Whether a file's state ``now`` reads back as ``old`` and has its attributes: the
    same inline bytes, or the same data id and block Time (so the same blocks), size, mode,
    owner and modification time."""
    if old is None or now is None:
        return False
    keys = ("k", "size", "i", "d", "bt", "t", "mode", "uid", "gid", "mt")
    return all(old.get(k) == now.get(k) for k in keys)


class TreeWriter:
    """Writes trees of :meth:`Past.trees` through ``fs`` (module docstring).

    Args:
        fs: the file system to write through (:class:`~bftfs.fs.filesystem.FileSystem`).
        content: a version's bytes (:meth:`Past.content`).
        uid, gid: who creates what the tree's owners cannot be given (not ``as_root``).
        as_root: give files and directories their old owners (run as root).
    """

    def __init__(
        self,
        fs: Any,
        content: Callable[[Version], Awaitable[bytes]],
        *,
        uid: int,
        gid: int,
        as_root: bool,
    ) -> None:
        self.fs = fs
        self.content = content
        self.uid = uid
        self.gid = gid
        self.as_root = as_root

    def _owner(self, s: Mapping[str, Any]) -> tuple[int, int]:
        return (int(s["uid"]), int(s["gid"])) if self.as_root else (self.uid, self.gid)

    async def _lookup(self, parent: int, name: bytes) -> Any | None:
        try:
            return await self.fs.lookup(parent, name)
        except NotFound:
            return None

    async def make_dirs(self, path: str) -> int:
        """The object id of directory ``path``, made (with its parents, mode 0755) where
        missing."""
        ino = ROOT
        for part in [p for p in path.split("/") if p]:
            name = part.encode(errors="surrogateescape")
            found = await self._lookup(ino, name)
            if found is None:
                found = await self.fs.mkdir(ino, name, 0o755, self.uid, self.gid)
            elif not st.S_ISDIR(found.mode):
                raise FsError(f"{path}: {part} is not a directory")
            ino = found.ino
        return ino

    async def write(
        self,
        tree: Mapping[str, Version],
        dest: str,
        *,
        delete: bool = False,
        current: Mapping[str, Version] | None = None,
        update: Update = _quiet,
    ) -> Counts:
        """Write ``tree`` (relative path -> version, parents first, ``""`` the top) at the
        path ``dest`` of the file system; entries of ``dest`` the tree lacks stay, unless
        ``delete``.  ``current``: the tree at ``dest`` as it is now (when ``dest`` is where
        ``tree`` was read from), whose unchanged files are left as they are."""
        counts = Counts()
        head, _, last = dest.rstrip("/").rpartition("/")
        top_parent = await self.make_dirs(head)
        #: relative path -> (object id, made here: its entries are surely missing).
        dirs: dict[str, tuple[int, bool]] = {}
        leaves: list[tuple[str, Version]] = []
        levels: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        for rel, v in tree.items():
            assert v.state is not None
            if v.state.get("k") != "d":
                leaves.append((rel, v))
            elif not rel and not last:  # the tree goes at the root of the file system
                counts.dirs += 1
                dirs[rel] = ROOT, False
                await self._clean(ROOT, v.state, delete, counts)
            else:
                levels.setdefault(rel.count("/") if rel else -1, []).append((rel, v.state))

        async def make(rel: str, s: dict[str, Any]) -> None:
            async with limiter:
                parent, name = self._where(rel, last, top_parent, dirs)
                with naming(f"directory {rel or '.'}"):
                    dirs[rel] = await self._dir(parent, name, s, delete, counts)

        # Directories level by level (parents first), each level's at once.
        limiter = trio.CapacityLimiter(PARALLEL_DIRS)
        for depth in sorted(levels):
            async with trio.open_nursery() as nursery:
                for rel, s in levels[depth]:
                    nursery.start_soon(make, rel, s)
        with naming("leasing the directories"):
            await self._lease([ino for ino, _ in dirs.values()])
        limiter = trio.CapacityLimiter(PARALLEL)
        done = [0]

        async def one(rel: str, v: Version) -> None:
            async with limiter:
                parent, name = self._where(rel, last, top_parent, dirs)
                fresh = dirs.get(rel.rpartition("/")[0], (0, False))[1] if rel else False
                now = current.get(rel) if current is not None else None
                if now is not None and now.oid == v.oid and same_content(v.state, now.state):
                    counts.unchanged += 1
                else:
                    with naming(f"file {rel or '.'}"):
                        await self._leaf(parent, name, v, fresh, counts)
            done[0] += 1
            update(done[0], len(leaves))

        async with trio.open_nursery() as nursery:
            for rel, v in leaves:
                nursery.start_soon(one, rel, v)
        # The creates write-back holds, many directories at once: directories' times next.
        with naming("sending the files held"):
            await self.fs.write_back(parallel=PARALLEL_DIRS)

        async def attrs(rel: str) -> None:
            async with limiter:
                with naming(f"times of directory {rel or '.'}"):
                    await self._dir_attrs(dirs[rel][0], tree[rel].state or {})

        async with trio.open_nursery() as nursery:  # (a directory's times move no other's)
            for rel in dirs:
                nursery.start_soon(attrs, rel)
        return counts

    async def _lease(self, dirs: list[int]) -> None:
        """Exclusive leases on the tree's directories before their files are written, so
        that directory write-back holds every close there from the first (it asks for
        one only after a few closes, by when a restore has sent them all alone)."""
        leases = getattr(getattr(self.fs, "meta", None), "leases", None)
        if leases is None:
            return
        limiter = trio.CapacityLimiter(PARALLEL)

        async def one(ino: int) -> None:
            async with limiter:
                await leases.take_exclusive(ino)

        async with trio.open_nursery() as nursery:
            for ino in dict.fromkeys(dirs):
                nursery.start_soon(one, ino)

    @staticmethod
    def _where(
        rel: str, last: str, top_parent: int, dirs: Mapping[str, tuple[int, bool]]
    ) -> tuple[int, bytes]:
        """The parent's object id and the name of the tree's entry ``rel``."""
        if not rel:
            return top_parent, last.encode(errors="surrogateescape")
        up, _, name = rel.rpartition("/")
        return dirs[up][0], name.encode(errors="surrogateescape")

    async def _dir(
        self, parent: int, name: bytes, s: dict[str, Any], delete: bool, counts: Counts
    ) -> tuple[int, bool]:
        """A directory of the tree: made with its mode, or the one there (without the
        entries it did not hold then, if ``delete``); its object id and whether it was
        made here."""
        counts.dirs += 1
        found = await self._lookup(parent, name)
        if found is not None and not st.S_ISDIR(found.mode):
            await self.fs.unlink(parent, name)  # a file or link where the directory was
            counts.deleted += 1
            found = None
        if found is None:
            uid, gid = self._owner(s)
            made = await self.fs.mkdir(parent, name, int(s["mode"]) & 0o7777, uid, gid)
            return made.ino, True
        await self._clean(found.ino, s, delete, counts)
        return found.ino, False

    async def _clean(self, ino: int, s: dict[str, Any], delete: bool, counts: Counts) -> None:
        """With ``delete``, remove what directory ``ino`` holds and ``s`` did not."""
        if not delete:
            return
        wanted = set(all_entries(s["e"]))
        for entry, attr in await self.fs.readdir(ino):
            if entry not in wanted:
                with naming(f"removing {entry.decode(errors='replace')}"):
                    await self._remove(ino, entry, attr)
                counts.deleted += 1

    async def _remove(self, parent: int, name: bytes, attr: Any) -> None:
        """Remove the entry ``name`` (a directory with everything in it)."""
        if st.S_ISDIR(attr.mode):
            for entry, inner in await self.fs.readdir(attr.ino):
                await self._remove(attr.ino, entry, inner)
            await self.fs.rmdir(parent, name)
        else:
            await self.fs.unlink(parent, name)

    async def _leaf(
        self, parent: int, name: bytes, v: Version, fresh: bool, counts: Counts
    ) -> None:
        """One file, link or special file of the tree (special files are not made);
        ``fresh``: its directory was made here, so nothing is at its name."""
        s = v.state
        assert s is not None
        mode = int(s["mode"])
        found = None if fresh else await self._lookup(parent, name)
        if found is not None and (
            not st.S_ISREG(found.mode) or not st.S_ISREG(mode)
        ):  # a link, special file or directory in the way, or a file where a link was
            if st.S_ISDIR(found.mode):
                raise FsError(f"a directory is where the file {name!r} was: left as it is")
            await self.fs.unlink(parent, name)
            found = None
        uid, gid = self._owner(s)
        if st.S_ISLNK(mode):
            await self.fs.symlink(parent, name, bytes(s.get("t") or b""), uid, gid)
            counts.links += 1
            return
        if not st.S_ISREG(mode):
            counts.skipped += 1  # devices, fifos, sockets: not brought back
            return
        data = await self.content(v)
        perm = mode & 0o7777
        if found is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            fh, attr = await self.fs.create(parent, name, st.S_IFREG | perm, uid, gid, flags)
        else:
            attr = found
            fh = await self.fs.open(found.ino, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(data)
            for offset in range(0, len(data), WRITE_CHUNK):
                await self.fs.write(fh, offset, bytes(view[offset : offset + WRITE_CHUNK]))
            changes: dict[str, int] = {}
            if st.S_IMODE(attr.mode) != perm:
                changes["mode"] = perm
            if (attr.uid, attr.gid) != (uid, gid) and self.as_root:
                changes["uid"], changes["gid"] = uid, gid
            # Through the handle, with the buffered write: one update with the content.
            await self.fs.setattr(
                attr.ino, atime_ns=int(s["at"]), mtime_ns=int(s["mt"]), fh=fh, **changes
            )
        finally:
            await self.fs.release(fh)
        counts.files += 1
        counts.bytes += len(data)

    async def _dir_attrs(self, ino: int, s: Mapping[str, Any]) -> None:
        """A directory's mode, owner (as root) and times as they were, where they differ."""
        now = await self.fs.getattr(ino)
        changes: dict[str, int] = {}
        perm = int(s["mode"]) & 0o7777
        if st.S_IMODE(now.mode) != perm:
            changes["mode"] = perm
        uid, gid = self._owner(s)
        if self.as_root and (now.uid, now.gid) != (uid, gid):
            changes["uid"], changes["gid"] = uid, gid
        if (now.atime_ns, now.mtime_ns) != (int(s["at"]), int(s["mt"])):
            changes["atime_ns"], changes["mtime_ns"] = int(s["at"]), int(s["mt"])
        if changes:
            await self.fs.setattr(ino, **changes)
