"""Verified re-reads at kernel speed: FUSE passthrough of cached copies (issue 63).

With the mount option ``passthrough`` a file this mount has read whole, through the daemon
(every block checked against its hash: only verified bytes are ever returned), is kept as
a local copy, and a later read-only open of the same version of the file (after a
remount too) is answered with a *backing id* for that copy (``FOPEN_PASSTHROUGH``,
kernel >= 6.9, libfuse >= 3.17: ``scripts/pyfuse3-locks.patch`` 4): the kernel then reads
the copy itself, and none of the file's reads reach the daemon.

What keeps it correct:

* **Close-to-open, as for the kernel's own pages.**  A copy is named by the file's
  version ``(d, v)`` (``FileSystemAPI.content_version``): every open asks the servers for
  the version (as it does for ``keep_cache``) and passes a copy through only if it is of
  that very version.  Another client's change makes a new version, so the next open here
  reads through the daemon; a descriptor opened before keeps reading what it opened, as
  with the kernel's pages.  A recall of the mount's lease on the file (another client is
  about to change it), a write or a truncation through this mount drop the copy at once.
* **Only what was read from the servers.**  A copy is filled from the replies of one
  read-only handle and kept only if they covered the whole file, the handle's file held no
  change of this mount's throughout, and its version did not move before the release.
* **The kernel's rules** (``fs/fuse/iomode.c``): an inode open for passthrough may not be
  opened otherwise (EIO), nor the reverse (ETXTBSY).  So a copy is passed through only
  when no other handle of the file is open here, and an open that cannot be passed through
  waits up to :data:`BUSY_WAIT` for the passthrough handles to be released (a close sends
  its release asynchronously: ``cat f; echo >> f`` must work), then fails with ETXTBSY,
  as writing an executing program does.  Passthrough excludes the kernel's writeback
  cache, which bftfs keeps off anyway (``fuse/operations.py``).  Registering a backing
  file needs CAP_SYS_ADMIN (the kernel's rule until backing files show in ``lsof``): a
  daemon without it serves every read itself and says so once.

The copies live in the mount's state directory (``mounts/<key>.passthrough/``, mode
0700, files 0600), at most ``passthrough_cache`` MiB, least recently used evicted first;
docs/confidentiality.md gives their threat model.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

log = logging.getLogger(__name__)

#: Seconds an open that cannot be passed through waits for the file's passthrough handles
#: to be released before it fails with ETXTBSY (their releases are sent after the close).
BUSY_WAIT = 2.0
#: Default bound of the copies (``passthrough_cache=`` MiB).
DEFAULT_CACHE_MIB = 1024

#: ``(d, v, size)``: one version of a file's content, as ``FileSystemAPI.content_version``.
Version = tuple[int, int, int]


@dataclass
class _Copy:
    """A complete, verified copy of one version of a file."""

    version: Version
    path: Path
    used: float  # trio time of its last fill or passthrough open (eviction order)
    backing_id: int = 0  # registered with the kernel (0: not yet, or closed)
    opens: int = 0  # passthrough handles open on it
    dropped: bool = False  # no longer the file's copy: close the backing id at last release


@dataclass
class _Fill:
    """A read-only handle's replies being written into a new copy."""

    ino: int
    version: Version
    path: Path
    fd: int
    covered: list[tuple[int, int]] = field(default_factory=list)  # merged [start, end)

    def add(self, start: int, end: int) -> None:
        if self.covered and start <= self.covered[-1][1] and end >= self.covered[-1][0]:
            s, e = self.covered[-1]
            self.covered[-1] = (min(s, start), max(e, end))
        else:
            self.covered.append((start, end))
            self.covered.sort()
        merged: list[tuple[int, int]] = []
        for s, e in self.covered:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.covered = merged

    def whole(self) -> bool:
        size = self.version[2]
        return self.covered == [(0, size)] if size else False


class Passthrough:
    """The mount's verified copies, and which handles the kernel reads through them."""

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        self.directory = directory
        self.limit = limit_bytes
        #: Set once FUSE_INIT agreed on passthrough and a backing file could be registered.
        self.usable = True
        self._copies: dict[int, _Copy] = {}
        self._fills: dict[int, _Fill] = {}  # by file handle
        #: fh -> (ino, the copy it is passed through to, or None: read by the daemon)
        self._handles: dict[int, tuple[int, _Copy | None]] = {}
        self._cached_opens: Counter[int] = Counter()  # handles read through the daemon
        self._pt_opens: Counter[int] = Counter()  # handles passed through
        self._idle: dict[int, trio.Event] = {}  # ino -> set when its last pt handle goes
        #: Passthrough opens, copies kept, copies dropped (``bftfs status`` and the tests).
        self.stats: Counter[str] = Counter()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._load()

    # Start ---------------------------------------------------------------------------------

    def _load(self) -> None:
        """Adopt the copies a previous mount left (named ``<ino>-<d>-<v>-<size>``); drop
        unfinished ones and anything else."""
        for p in self.directory.iterdir():
            parts = p.name.split("-")
            try:
                ino, d, v, size = (int(x) for x in parts)
                ok = p.is_file() and p.stat().st_size == size
            except (ValueError, OSError):
                ok = False
            if ok:
                self._copies[ino] = _Copy((d, v, size), p, used=p.stat().st_mtime - 1e12)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        self._evict()

    def started(self) -> None:
        """FUSE_INIT is answered: whether the kernel and this pyfuse3 agreed on passthrough."""
        if not (getattr(pyfuse3, "PASSTHROUGH", False) and pyfuse3.passthrough_on()):
            self.usable = False
            log.warning(
                "mount option passthrough: %s; every read is served by the daemon",
                "this pyfuse3 was built without libfuse 3.17 (scripts/libfuse.sh)"
                if not getattr(pyfuse3, "PASSTHROUGH", False)
                else "the kernel did not offer FUSE passthrough (Linux >= 6.9, "
                "CONFIG_FUSE_PASSTHROUGH)",
            )

    # Opens ---------------------------------------------------------------------------------

    async def admit(self, ino: int, flags: int) -> None:
        """Before an open of ``ino`` that may not be passed through (it writes): wait for
        the file's passthrough handles to go, then drop its copy.

        Raises:
            FUSEError(ETXTBSY): they were still open after :data:`BUSY_WAIT`.
        """
        if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
            return
        if ino in self._idle:
            with trio.move_on_after(BUSY_WAIT):
                await self._idle[ino].wait()
            if ino in self._idle:
                raise pyfuse3.FUSEError(errno.ETXTBSY)
        self.drop([ino])

    async def opened(self, ino: int, fh: int, flags: int, version: Version | None) -> int:
        """``fh`` was opened on ``ino`` (``version``: its content, None if this mount holds
        changes of it): the backing id to answer the kernel with, or 0.

        Raises:
            FUSEError(ETXTBSY): the file is open for passthrough here, this open cannot be,
            and those handles stayed open for :data:`BUSY_WAIT`.
        """
        readonly = flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC
        copy = self._copies.get(ino)
        if copy is not None and copy.version != version:
            self.drop([ino])
            copy = None
        if self.usable and readonly and copy is not None and not self._cached_opens[ino]:
            backing = self._backing(copy)
            if backing:
                copy.opens += 1
                copy.used = trio.current_time()
                self._pt_opens[ino] += 1
                self._idle.setdefault(ino, trio.Event())
                self._handles[fh] = (ino, copy)
                self.stats["opens"] += 1
                return backing
        if ino in self._idle:  # passed through here: this one cannot be
            with trio.move_on_after(BUSY_WAIT):
                await self._idle[ino].wait()
            if ino in self._idle:
                raise pyfuse3.FUSEError(errno.ETXTBSY)
        self._handles[fh] = (ino, None)
        self._cached_opens[ino] += 1
        if self.usable and readonly and version is not None and 0 < version[2] <= self.limit:
            self._start_fill(fh, ino, version)
        return 0

    def _backing(self, copy: _Copy) -> int:
        """The copy's backing id, registered on first use (0 if the kernel refuses)."""
        if copy.backing_id:
            return copy.backing_id
        try:
            fd = os.open(copy.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            copy.backing_id = pyfuse3.backing_open(fd)  # the kernel holds its own reference
        except OSError as e:
            self.usable = False
            log.warning("passthrough off: the kernel refused a backing file: %s", e)
            return 0
        finally:
            os.close(fd)
        return copy.backing_id

    # Filling -------------------------------------------------------------------------------

    def _start_fill(self, fh: int, ino: int, version: Version) -> None:
        if any(f.ino == ino for f in self._fills.values()):
            return  # one fill per file at a time
        d, v, size = version
        path = self.directory / f"{ino}-{d}-{v}-{size}.part{fh}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("passthrough: cannot make a copy in %s: %s", self.directory, e)
            return
        self._fills[fh] = _Fill(ino, version, path, fd)

    def read(self, fh: int, offset: int, reply: bytes | memoryview) -> None:
        """A reply the daemon gave ``fh`` (verified bytes of the file): into its copy."""
        fill = self._fills.get(fh)
        if fill is None or not len(reply):
            return
        try:
            os.pwrite(fill.fd, reply, offset)
        except OSError as e:  # a full disk, say: no copy of this file
            log.warning("passthrough: writing a copy failed: %s", e)
            self._end_fill(fh, keep=False)
            return
        fill.add(offset, offset + len(reply))

    def changed(self, ino: int) -> None:
        """``ino`` is written or truncated through this mount: its copy is no longer it."""
        self.drop([ino])

    def written(self, fh: int) -> None:
        """A write through ``fh``."""
        entry = self._handles.get(fh)
        if entry is not None:
            self.drop([entry[0]])

    def drop(self, inos: list[int]) -> None:
        """Forget the copies of ``inos`` (a recall, a write, a new version): their next
        opens read through the daemon.  Files open through a copy keep reading it."""
        for fh, fill in list(self._fills.items()):
            if fill.ino in inos:
                self._end_fill(fh, keep=False)
        for ino in inos:
            copy = self._copies.pop(ino, None)
            if copy is not None:
                self._discard(copy)

    def _discard(self, copy: _Copy) -> None:
        copy.dropped = True
        self.stats["dropped"] += 1
        with contextlib.suppress(OSError):
            copy.path.unlink()
        if not copy.opens:
            self._close_backing(copy)

    def _close_backing(self, copy: _Copy) -> None:
        if copy.backing_id:
            with contextlib.suppress(OSError):
                pyfuse3.backing_close(copy.backing_id)
            copy.backing_id = 0

    # Releases ------------------------------------------------------------------------------

    def released(self, fh: int, version: Version | None) -> None:
        """``fh`` is released (``version``: its file's content just before, as
        :meth:`opened`): a complete fill of that same version becomes the file's copy."""
        entry = self._handles.pop(fh, None)
        if entry is None:
            return
        ino, copy = entry
        if copy is not None:  # passed through
            copy.opens -= 1
            if copy.dropped and not copy.opens:
                self._close_backing(copy)
            self._pt_opens[ino] -= 1
            if not self._pt_opens[ino]:
                del self._pt_opens[ino]
                self._idle.pop(ino).set()
            return
        self._cached_opens[ino] -= 1
        if not self._cached_opens[ino]:
            del self._cached_opens[ino]
        fill = self._fills.get(fh)
        if fill is not None:
            self._end_fill(fh, keep=fill.whole() and fill.version == version)

    def _end_fill(self, fh: int, *, keep: bool) -> None:
        fill = self._fills.pop(fh)
        os.close(fill.fd)
        if not keep:
            with contextlib.suppress(OSError):
                fill.path.unlink()
            return
        final = fill.path.with_name(fill.path.name.split(".part")[0])
        try:
            os.replace(fill.path, final)
        except OSError:
            return
        old = self._copies.pop(fill.ino, None)
        if old is not None:
            self._discard(old)
        self._copies[fill.ino] = _Copy(fill.version, final, used=trio.current_time())
        self.stats["kept"] += 1
        self._evict()

    def _evict(self) -> None:
        """Least recently used copies out until the rest fit in the bound."""
        total = sum(c.version[2] for c in self._copies.values())
        for ino, copy in sorted(self._copies.items(), key=lambda kv: kv[1].used):
            if total <= self.limit:
                break
            total -= copy.version[2]
            del self._copies[ino]
            self._discard(copy)
