"""The paths of the inodes and file handles the kernel asks about, as far as this mount
has seen them (issue 67): a warning that names ``/src/lua/lapi.c`` tells an operator which
file a program just failed on; one that prints ``args (1375580002349489089, <pyfuse3
RequestContext ...>)`` does not.

The FUSE layer sees every name the kernel resolves (lookup, create, mkdir, mknod, symlink,
link) and every move (rename), so it keeps inode -> (parent, name) and walks that up to
the root.  Bounded: past :data:`LIMIT` names it starts again (an inode it no longer knows
is named by its number); a name is only what this mount last saw, another mount's rename
since is not known here.  A file handle is named by the inode it was opened on."""

from __future__ import annotations

from typing import Any

#: Inodes whose name is kept at most (then all forgotten; about 100 bytes each).
LIMIT = 100_000
#: The root directory's inode (FUSE's).
ROOT_INODE = 1
#: Levels walked up at most (a loop in stale names cannot hang a warning).
DEPTH = 256


class KnownPaths:
    """inode -> (parent, name) and file handle -> inode, from what the kernel asked."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[int, bytes]] = {}
        #: (parent, name) -> the inode last seen under it (a rename finds it at once).
        self._by_name: dict[tuple[int, bytes], int] = {}
        self._handles: dict[int, int] = {}

    def found(self, parent: int, name: bytes, ino: int) -> None:
        """``name`` in ``parent`` is ``ino`` (a lookup, create, mkdir, link ... answered)."""
        if len(self._names) >= LIMIT:
            self._names.clear()
            self._by_name.clear()
        old = self._names.get(ino)
        if old is not None and self._by_name.get(old) == ino:
            del self._by_name[old]
        self._names[ino] = (parent, name)
        self._by_name[(parent, name)] = ino

    def moved(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        """A rename: whatever was ``name`` in ``parent`` is now ``new_name`` in
        ``new_parent``."""
        ino = self._by_name.pop((parent, name), None)
        if ino is not None:
            self.found(new_parent, new_name, ino)

    def opened(self, fh: int, ino: int) -> None:
        if len(self._handles) >= LIMIT:
            self._handles.clear()
        self._handles[fh] = ino

    def released(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def inode_of(self, fh: int) -> int | None:
        """The inode handle ``fh`` was opened on (None: not known here)."""
        return self._handles.get(fh)

    def path(self, ino: int) -> str:
        """``/a/b`` (inside the mount), ``.../b`` when an ancestor is not known, or
        ``inode N`` when nothing is."""
        parts: list[str] = []
        at = ino
        for _ in range(DEPTH):
            if at == ROOT_INODE:
                return "/" + "/".join(reversed(parts))
            where = self._names.get(at)
            if where is None:
                break
            at, name = where
            parts.append(name.decode(errors="replace"))
        return ".../" + "/".join(reversed(parts)) if parts else f"inode {ino}"

    def of_handle(self, fh: int) -> str:
        ino = self._handles.get(fh)
        return f"fh {fh}" if ino is None else f"{self.path(ino)} (fh {fh})"


#: Handlers whose first argument is a file handle (the rest that take one take an inode,
#: or a parent inode and a name).
_BY_HANDLE = frozenset({"read", "write", "flush", "fsync", "release", "readdir", "releasedir"})
_BY_NAME = frozenset({"lookup", "mknod", "mkdir", "symlink", "unlink", "rmdir", "create"})


def describe(paths: KnownPaths, handler: str, args: tuple[Any, ...]) -> str:
    """What a handler's call was about, as a person would name it: a path."""
    if len(args) < 2 or not isinstance(args[1], int):
        return "(no file)"
    if handler in _BY_HANDLE:
        return paths.of_handle(args[1])
    if handler in _BY_NAME and len(args) > 2 and isinstance(args[2], bytes):
        parent = paths.path(args[1])
        return f"{parent.rstrip('/')}/{args[2].decode(errors='replace')}"
    if handler == "rename" and len(args) > 4:
        old = f"{paths.path(args[1]).rstrip('/')}/{args[2].decode(errors='replace')}"
        new = f"{paths.path(args[3]).rstrip('/')}/{args[4].decode(errors='replace')}"
        return f"{old} -> {new}"
    return paths.path(args[1])


def learn(paths: KnownPaths, handler: str, args: tuple[Any, ...], result: Any) -> None:
    """Take what a successful call tells about names and handles."""
    if handler in ("lookup", "mknod", "mkdir", "symlink", "create"):
        attr = result[1] if isinstance(result, tuple) else result
        ino = getattr(attr, "st_ino", None)
        if isinstance(ino, int):
            paths.found(args[1], args[2], ino)
        if handler == "create" and isinstance(result, tuple):
            fh = getattr(result[0], "fh", None)
            if isinstance(fh, int) and isinstance(ino, int):
                paths.opened(fh, ino)
    elif handler == "link":
        paths.found(args[2], args[3], args[1])
    elif handler == "rename":
        paths.moved(args[1], args[2], args[3], args[4])
    elif handler in ("open", "opendir"):
        fh = result[0] if isinstance(result, tuple) else getattr(result, "fh", result)
        if isinstance(fh, int):
            paths.opened(fh, args[1])
    elif handler in ("release", "releasedir"):
        paths.released(args[1])
