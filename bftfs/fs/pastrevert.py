"""Carrying out a revert plan (:func:`bftfs.fs.pastplan.plan_revert`) through a client's
own :class:`~bftfs.fs.filesystem.FileSystem` (``bftfs revert``; issue 36).

Through a mount, each step was a handful of FUSE requests, each file's create, write and
``utime`` their own Q/U updates, one step after another except the files' contents.  Here
the steps go through the calls :class:`~bftfs.fs.pastrestore.TreeWriter` writes trees
with: the directories the plan touches are leased exclusively first, so that directory
write-back holds the removals and creates and sends them several to an update; a run of
``restore`` steps (the plan puts them last) goes :data:`~bftfs.fs.pastrestore.PARALLEL`
at a time; then everything held is sent, many directories at once, and the directories
made again get their times (after their entries, which would move them).

The steps and what each does are the plan's, as through a mount: ``remove`` (a directory
with everything in it; already gone: nothing), ``move`` (the destination's parents made
where missing), ``mkdir`` (with its mode, owner as root, times), ``restore`` (the old
content, mode and times, written by object id: never through a link put in the way).  A
step that fails stops the revert with :class:`RevertStopped`, which says which step and
that the ones before it are done: run again, the plan (from the same ``--since``) finds
what is left.
"""

from __future__ import annotations

import stat as st
from collections.abc import Sequence
from typing import Any

import trio

from bftfs.fs.errors import FsError, NotFound
from bftfs.fs.pastplan import Action
from bftfs.fs.pastrestore import PARALLEL, PARALLEL_DIRS, Counts, TreeWriter, Update, _quiet
from bftfs.fsobjects import ROOT


class RevertStopped(Exception):
    """A step of a revert failed: which one, why, and how many were done before it."""

    def __init__(self, done: int, total: int, action: Action, why: BaseException) -> None:
        what = f"{action.path} -> {action.to}" if action.kind == "move" else action.path
        super().__init__(
            f"revert stopped at step {done + 1} of {total} ({action.kind} {what or '.'}): "
            f"{why}; the {done} steps before it are done, the rest are not: the same command "
            "again does the rest"
        )
        self.done = done


def _name(part: str) -> bytes:
    return part.encode(errors="surrogateescape")


class RevertWriter:
    """Carries out revert plans under the path ``root`` of the file system ``writer``
    writes to (module docstring)."""

    def __init__(self, writer: TreeWriter, root: str) -> None:
        self.writer = writer
        self.fs = writer.fs
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.counts = Counts()
        #: Directories made again, with the state whose times they get at the end.
        self._made: list[tuple[int, dict[str, Any]]] = []

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root or "/"

    async def _find(self, path: str) -> Any | None:
        """The attributes of ``path``, or None where it (or a parent) is missing."""
        ino: int = ROOT
        found = None
        for part in [p for p in path.split("/") if p]:
            try:
                found = await self.fs.lookup(ino, _name(part))
            except NotFound:
                return None
            ino = found.ino
        return found if found is not None else await self.fs.getattr(ROOT)

    async def _parent(self, rel: str, make: bool) -> tuple[int | None, bytes]:
        """The object id of ``rel``'s directory (made where missing if ``make``, else
        None when missing) and ``rel``'s name."""
        head, _, last = self._full(rel).rpartition("/")
        if make:
            return await self.writer.make_dirs(head), _name(last)
        found = await self._find(head)
        if found is None or not st.S_ISDIR(found.mode):
            return None, _name(last)
        return found.ino, _name(last)

    async def carry_out(self, actions: Sequence[Action], update: Update = _quiet) -> Counts:
        """Each step of ``actions`` in order, a run of ``restore`` steps
        :data:`PARALLEL` at a time (each writes another path); what was written.

        Raises:
            RevertStopped: a step failed (the steps before it are done).
        """
        await self._lease(actions)
        done = [0]
        i = 0
        while i < len(actions):
            j = i
            while j < len(actions) and actions[j].kind == "restore":
                j += 1
            try:
                if j > i:
                    await self._restores(actions[i:j], done, len(actions), update)
                else:
                    await self._step(actions[i])
                    done[0] += 1
                    update(done[0], len(actions))
            except* (FsError, OSError, _Failed) as group:
                failed = _first(group)
                step = failed.action if isinstance(failed, _Failed) else actions[i]
                why = failed.why if isinstance(failed, _Failed) else failed
                raise RevertStopped(done[0], len(actions), step, why) from None
            i = max(j, i + 1)
        await self.fs.write_back(parallel=PARALLEL_DIRS)

        async def times(ino: int, s: dict[str, Any]) -> None:
            await self.writer.dir_attrs(ino, s)

        async with trio.open_nursery() as nursery:
            for ino, s in self._made:
                nursery.start_soon(times, ino, s)
        return self.counts

    async def _restores(
        self, run: Sequence[Action], done: list[int], total: int, update: Update
    ) -> None:
        """A run of ``restore`` steps: their directories first (made where missing, one
        after the other: they may share parents), then the files :data:`PARALLEL` at a
        time."""
        parents: dict[str, int] = {}
        where: list[tuple[int, bytes]] = []
        for a in run:
            head, _, last = self._full(a.path).rpartition("/")
            if head not in parents:
                try:
                    parents[head] = await self.writer.make_dirs(head)
                except (FsError, OSError) as e:
                    raise _Failed(a, e) from e
            where.append((parents[head], _name(last)))
        limiter = trio.CapacityLimiter(PARALLEL)

        async def one(a: Action, parent: int, name: bytes) -> None:
            assert a.version is not None
            async with limiter:
                try:
                    await self.writer.leaf(parent, name, a.version, False, self.counts)
                except (FsError, OSError) as e:
                    raise _Failed(a, e) from e
            done[0] += 1
            update(done[0], total)

        async with trio.open_nursery() as nursery:
            for a, (parent, name) in zip(run, where, strict=True):
                nursery.start_soon(one, a, parent, name)

    async def _lease(self, actions: Sequence[Action]) -> None:
        """Exclusive leases on the existing directories the steps change, so that their
        removals and creates wait in write-back and go several to an update."""
        dirs: dict[int, None] = {}
        for rel in {p.rpartition("/")[0] for a in actions for p in (a.path, a.to) if p}:
            found = await self._find(self._full(rel))
            if found is not None and st.S_ISDIR(found.mode):
                dirs[found.ino] = None
        await self.writer.lease(list(dirs))

    async def _step(self, a: Action) -> None:
        """One ``remove``, ``move`` or ``mkdir`` step of the plan (module docstring)."""
        if a.kind == "remove":
            parent, name = await self._parent(a.path, make=False)
            if parent is None:
                return
            try:
                attr = await self.fs.lookup(parent, name)
            except NotFound:
                return  # gone already (inside a directory removed before it)
            await self.writer.remove(parent, name, attr)
            self.counts.deleted += 1
        elif a.kind == "move":
            src, name = await self._parent(a.path, make=False)
            dst, to = await self._parent(a.to, make=True)
            if src is None:
                raise NotFound(f"{a.path}: its directory is gone")
            assert dst is not None
            await self.fs.rename(src, name, dst, to)
        elif a.kind == "mkdir":
            assert a.version is not None and a.version.state is not None
            s = a.version.state
            parent, name = await self._parent(a.path, make=True)
            assert parent is not None
            try:
                found = await self.fs.lookup(parent, name)
            except NotFound:
                uid, gid = self.writer.owner(s)
                found = await self.fs.mkdir(parent, name, int(s["mode"]) & 0o7777, uid, gid)
            self.counts.dirs += 1
            self._made.append((found.ino, s))
        else:
            raise ValueError(f"not a step of a revert plan: {a.kind!r}")


class _Failed(Exception):
    """A step's failure, with the step (unwrapped by :meth:`RevertWriter.carry_out`)."""

    def __init__(self, action: Action, why: BaseException) -> None:
        super().__init__(str(why))
        self.action = action
        self.why = why


def _first(group: BaseException) -> BaseException:
    """The first error in an exception group (itself if it is none)."""
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group
