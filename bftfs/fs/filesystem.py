"""The inode-level file system on Q/U metadata and PASIS blocks (docs/fs-api.md).

Every namespace operation is one Q/U query or one single- or multi-object update, as in the
seed's Q/U-NFSv3 (Table 4.3, L3112-3156): ``getattr``/``readdir``/``readlink`` query one
object, ``lookup`` queries the directory (and the entry's attribute object concurrently when
this client already knows which it is), ``create``/``mkdir``/``symlink``/``mknod``/``link``/
``unlink``/``rmdir`` update the directory and one attribute or directory object together,
and ``rename`` updates up to two directories, the moved and the replaced object (plus the
ancestors that prove a directory does not move under itself, see
:func:`bftfs.fsobjects.rename._not_under`) atomically.  The servers validate every update; the
checks here only answer early.

What the client caches, and why it is safe:

- **Directory entries and parents** (``_names``, ``_parents``) are used only to *name the
  objects* of an update (unlink, rmdir, rename need the child's object id) or to start a
  speculative attribute query.  The servers re-check each entry inside the update and refuse
  with ``stale`` when the cache was wrong; the client then re-reads and retries.  So a stale
  cache costs a round trip, never correctness.
- **Attributes this client's own updates produced** are answered by ``getattr`` for
  ``attr_ttl`` seconds (default 1 s, the FUSE layer's kernel attribute timeout): the same
  window the kernel caches them in.  Queries always go to the servers.
- **Open files** (:class:`bftfs.fs.files.OpenFile`): close-to-open consistency as in NFS.
  ``open`` re-reads the attribute object; cached blocks survive only when its version
  counter is unchanged.  Writes are buffered per file and flushed on ``flush``, ``fsync``,
  ``release``, before a truncation, and when the dirty data passes a bound (8 MiB): in the
  background for a sequential writer (write-behind, bounded by ``behind_limit``, raised
  up to ``behind_max`` from the measured rate and round trip, fs/files/pace.py; its errors
  reach the next write, flush or fsync), and sequential readers have a window of blocks
  fetched in the background, raised up to ``readahead_ceiling`` from the links' measured
  bandwidth-delay product (fs/files/window.py; docs/fs.md, "Big files").  A flush writes
  every block first (PASIS, complete at ``N - t`` nodes) and only then sends the size and
  mtime (Q/U), so a crash in between leaves the old size over the old data.

Concurrency: pyfuse3 runs handlers as concurrent trio tasks; code between ``await`` points is
atomic.  Flushes and truncations of one file are serialised by its lock; the Q/U client
serialises its own operations per object.

The code is in parts, each a plain class that owns its state and is given, in its
constructor, the parts it calls; :class:`FileSystem` builds them bottom-up and hands each
public call to one of them.  From the bottom:

- :class:`~bftfs.fs.clients.calls.Meta` (``meta.py``): Q/U and PASIS calls, error translation,
  statistics, backoff, placement, ``statfs``;
- :class:`~bftfs.fs.caches.MetadataCache` (``caches.py``): the attribute, name and parent
  caches, the open files, and the reads through them;
- :class:`~bftfs.fs.files.reclaim.Reclaimer` (``files/``): giving back a dead content's blocks;
- :class:`~bftfs.fs.files.flush.FlushEngine` (``files/``): fetching blocks, read-ahead,
  the flush engine (leases, re-applying buffered writes, inline files);
- :class:`~bftfs.fs.names.Names` (``names/``): lookup, getattr, readdir, create,
  link, unlink, rename, ...;
- :class:`~bftfs.fs.files.table.HandleTable` (``files/table.py``): handle -> open file;
- :class:`~bftfs.fs.writeback.Outbox` (``writeback/``, its map in the package docstring):
  what the mount answered and sends later - creates sent with their first flush
  (``write_behind``) and, with directory write-back, closes, removals, mkdirs and renames
  held back under an exclusive lease, and held files; built whole in one call;
- :class:`~bftfs.fs.callorder.CallOrder` (``callorder.py``): what a call must send first
  (held files, removals, creates); this facade plugs it into ``Meta``'s one hook, a
  ``CallGate`` that ``meta.py`` declares;
- :class:`~bftfs.fs.background.Background` (``background.py``): the long-lived tasks;
- :class:`~bftfs.fs.attributes.Attributes` (``files/``): setattr, truncation, xattrs;
- :class:`~bftfs.fs.handles.Handles` (``files/``): create/open, read, write, flush,
  release; it asks the pending creates at create, read, flush and release;
- this module: the facade, the one object the FUSE layer and tests hold
  (:class:`~bftfs.fs.api.FileSystemAPI`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from bftfs import fsobjects as obj
from bftfs.fs.api import FileSystemAPI
from bftfs.fs.attributes import Attributes
from bftfs.fs.background import Background
from bftfs.fs.caches import MetadataCache
from bftfs.fs.callorder import CallOrder
from bftfs.fs.clients import (
    SEALED_NAME_MAX,
    BlockClient,
    Meta,
    MetadataClient,
    MountTagged,
    Seal,
    wrap_clients,
)
from bftfs.fs.errors import Exists, NotFound
from bftfs.fs.files import (
    DEFAULT_BEHIND_LIMIT,
    DEFAULT_DIRTY_LIMIT,
    DEFAULT_READAHEAD,
    DEFAULT_READAHEAD_MAX,
    Attr,
    OpenFile,
)
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.files.pace import DEFAULT_BEHIND_MAX
from bftfs.fs.files.reclaim import Reclaimer
from bftfs.fs.files.table import HandleTable
from bftfs.fs.files.window import DEFAULT_READAHEAD_CEILING
from bftfs.fs.handles import Handles
from bftfs.fs.leases import Leases, Spawn
from bftfs.fs.names import Names
from bftfs.fs.writeback import Outbox
from bftfs.fsobjects import RENAME_EXCHANGE, ROOT

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "FileSystem",
    "open_file_system",
]

log = logging.getLogger(__name__)

RENAME_NOREPLACE = obj.RENAME_NOREPLACE
XATTR_CREATE = obj.XATTR_CREATE
XATTR_REPLACE = obj.XATTR_REPLACE


def _behind_max(behind_limit: int, behind_max: int | None) -> int:
    """The most write-behind's measured sizing may buffer per file: ``behind_max`` when
    given, else :data:`DEFAULT_BEHIND_MAX`, or ``behind_limit`` itself when that is set
    below its default (a caller bounding a file's memory tightly keeps its bound)."""
    if behind_max is not None:
        return behind_max
    return DEFAULT_BEHIND_MAX if behind_limit >= DEFAULT_BEHIND_LIMIT else behind_limit


class FileSystem:
    """The file-system model of one client (one mount); see the module docstring."""

    def __init__(
        self,
        qu: MetadataClient,
        rw: BlockClient,
        config: Any,
        *,
        uid: int = 0,
        gid: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        attr_ttl: float = 1.0,
        dirty_limit: int = DEFAULT_DIRTY_LIMIT,
        readahead: int = DEFAULT_READAHEAD,
        readahead_max: int = DEFAULT_READAHEAD_MAX,
        readahead_ceiling: int = DEFAULT_READAHEAD_CEILING,
        behind_limit: int = DEFAULT_BEHIND_LIMIT,
        behind_max: int | None = None,
        write_behind: bool = False,
        lease_term: float = 0.0,
        commit: float = 0.0,
        hard: bool = False,
        publish: bool = True,
    ) -> None:
        self.config, self.uid, self.gid, self.clock_ns = config, uid, gid, clock_ns
        self.rng = rng or random.SystemRandom()
        self.bs: int = config.block_size
        inline = min(getattr(config, "inline_limit", 0), self.bs)
        self.background = Background()  # the long-lived tasks (read-ahead, write-behind...)
        # The parts, bottom-up: each is given the parts it calls.
        self.meta = Meta(qu, rw, config, rng=self.rng, clock_ns=clock_ns)
        self.cache = MetadataCache(self.meta, attr_ttl=attr_ttl, inline=inline)
        self.meta.leases = _leases(self.meta, self.cache, lease_term, self.background.spawn)
        self.meta.publish_reads = publish and self.meta.layout is None  # (issue 64)
        self.reclaimer = Reclaimer(self.meta, self.cache)
        self.engine = FlushEngine(
            self.meta,
            self.cache,
            readahead=readahead,
            readahead_max=max(readahead_max, readahead) if readahead else 0,
            big_bs=int(getattr(config, "big_blocks", 0)),
            spawn=self.background.spawn,
        )
        self.engine.pace.ceiling = _behind_max(behind_limit, behind_max)
        self.engine.fetcher.readahead_ceiling = readahead_ceiling
        self.table = HandleTable()
        # What the mount holds back from the servers (fs/writeback/), built whole.
        box = self.outbox = Outbox(
            self.meta,
            self.cache,
            self.table,
            self.engine,
            self.reclaimer,
            open_existing=lambda *a: self.handles.open_existing(*a),
            flush_file=lambda f: self.handles._flush_file(f),
            spawn=self.background.spawn,
            write_behind=write_behind,
            commit=commit,
            hard=hard,
        )
        self.meta.gate = CallOrder(box.creates.creates, box.creates.sends, box.back)
        self.cache.local_stat = box.local_stat
        self.cache.pending_links = box.links_in
        self.names = Names(self.meta, self.cache, self.reclaimer, box)
        self.attributes = Attributes(
            self.meta, self.cache, self.table, self.names, self.engine, self.reclaimer, box.creates
        )
        self.handles = Handles(
            self.meta,
            self.cache,
            self.table,
            self.names,
            self.attributes,
            self.engine,
            self.reclaimer,
            box.creates,
            dirty_limit=dirty_limit,
            behind_limit=behind_limit,
            held=box.held,
            answers_eio=not hard,
        )

    async def open(
        self, ino: int, flags: int, *, reached_by_name: bool = False, looked_up: bool = False
    ) -> int:
        return await self.handles.open_file(
            ino, flags, reached_by_name=reached_by_name, looked_up=looked_up
        )

    # Names (bftfs.fs.names) ----------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> Attr:
        return await self.names.lookup(parent, name)

    async def getattr(
        self, ino: int, *, reached_by_name: bool = False, within: float | None = None
    ) -> Attr:
        return await self.names.getattr(ino, reached_by_name=reached_by_name, within=within)

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        return await self.names.readdir(ino)

    def listing_heads(self, ino: int) -> tuple[Attr, Attr] | None:
        return self.names.listing_heads(ino)

    def held_names(self, ino: int) -> list[tuple[bytes, int, int]] | None:
        return self.names.held_names(ino)

    def known_attr(self, ino: int) -> Attr | None:
        return self.names.known_attr(ino)

    async def readlink(self, ino: int) -> bytes:
        return await self.names.readlink(ino)

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return await self.names.mkdir(parent, name, mode, uid, gid)

    async def mknod(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        *,
        lease: bool = False,
    ) -> Attr:
        return await self.names.mknod(parent, name, mode, rdev, uid, gid, lease=lease)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        return await self.names.symlink(parent, name, target, uid, gid)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        return await self.names.link(ino, new_parent, new_name)

    async def unlink(self, parent: int, name: bytes) -> None:
        await self.names.unlink(parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.names.rmdir(parent, name)

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        await self.names.rename(parent, name, new_parent, new_name, flags)

    async def statfs(self) -> dict[str, int]:
        return {**await self.meta.statfs(), "f_namemax": self.names.name_max}

    # Attributes (bftfs.fs.attributes) ------------------------------------------------

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
        reached_by_name: bool = False,
    ) -> Attr:
        return await self.attributes.setattr(
            ino,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            atime_ns=atime_ns,
            mtime_ns=mtime_ns,
            fh=fh,
            reached_by_name=reached_by_name,
        )

    def known_xattrs(self, ino: int) -> frozenset[bytes] | None:
        return self.attributes.known_xattrs(ino)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.attributes.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.attributes.listxattr(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.attributes.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.attributes.removexattr(ino, name)

    # Handles (bftfs.fs.handles) ------------------------------------------------------

    async def create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        flags: int,
        *,
        known_missing: bool = True,
    ) -> tuple[int, Attr]:
        return await self.handles.create(
            parent, name, mode, uid, gid, flags, known_missing=known_missing
        )

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return await self.handles.read(fh, offset, size)

    async def read_reply(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self.handles.read_reply(fh, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        return await self.handles.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        await self.handles.flush(fh)

    async def fsync(self, fh: int) -> None:
        await self.handles.fsync(fh)

    async def revalidate(self, fh: int) -> None:
        await self.handles.revalidate(fh)

    async def write_back(self, parallel: int = 1) -> None:
        """Send everything directory write-back holds (``fsync`` of a directory: its new
        names are then on a quorum), and the writes held files' closes left
        (``Outbox.send_all``); ``parallel``: directories sent at once."""
        await self.outbox.send_all(parallel)

    async def sync_directory(self, ino: int) -> None:
        """``fsync`` of directory ``ino`` (``Outbox.sync_directory``): its held-back entries
        (creates, removals, mkdirs, renames in it) are on a quorum when it returns, and an
        error says they are not; then the rest this mount holds back goes too (``bftfs``
        commands fsync the mount point for it)."""
        await self.outbox.sync_directory(ino)

    async def release(self, fh: int) -> None:
        await self.handles.release(fh)

    def keep_cache(self, fh: int) -> bool:
        return self.handles.keep_cache(fh)

    def content_version(self, fh: int) -> tuple[int, int, int] | None:
        return self.handles.table.content_version(fh)

    # Attribute timeouts (bftfs.fs.caches; bftfs.fs.api) ------------------------------------

    def lease_remaining(self, ino: int, since: float) -> float:
        leases = self.meta.leases
        left = 0.0 if leases is None else leases.remaining(ino, since)
        cover = self.outbox.cover  # a held-back object: its directory's (writeback/covered.py)
        return left if left > 0 or cover is None else cover.left(ino)

    def on_lease_recall(self, forget: Callable[[list[int]], Awaitable[None]]) -> None:
        if self.meta.leases is not None:

            async def forget_all(inos: list[int]) -> None:
                # Own updates' attributes too: within ``attr_ttl`` they would answer the
                # kernel's fresh getattr with a mode older than the recaller's change.
                self.cache.forget_own(inos)
                cover = self.outbox.cover
                await forget(inos if cover is None else inos + cover.told_under(inos))

            self.meta.leases.before_release = forget_all

    @property
    def close_to_open(self) -> bool:
        """An open re-reads the file's attributes; ``getattr`` of the open file answers
        them from memory (bftfs.fs.api)."""
        return True

    # Clients, settings and statistics ------------------------------------------------------

    @property
    def qu(self) -> MetadataClient:
        """The Q/U client (:class:`~bftfs.fs.clients.calls.Meta` sends through it)."""
        return self.meta.qu

    @qu.setter
    def qu(self, client: MetadataClient) -> None:  # (a test's crashing client)
        self.meta.qu = client

    @property
    def rw(self) -> BlockClient:
        """The PASIS (R/W) client."""
        return self.meta.rw

    @rw.setter
    def rw(self, client: BlockClient) -> None:
        self.meta.rw = client

    @property
    def big_bs(self) -> int:
        """The block size of files written sequentially (0: every file has ``bs``)."""
        return self.engine.big_bs

    @big_bs.setter
    def big_bs(self, size: int) -> None:  # (a test's client of before per-file sizes)
        self.engine.big_bs = size

    @property
    def inline(self) -> int:
        """Regular files up to this size keep their content in the attribute object."""
        return self.cache.inline

    @property
    def write_behind(self) -> bool:
        return self.outbox.creates.write_behind

    @property
    def methods(self) -> Counter[str]:
        """Q/U operations sent, by method (:class:`~bftfs.fs.clients.calls.Meta`)."""
        return self.meta.methods

    @property
    def method_seconds(self) -> defaultdict[str, float]:
        """Seconds spent in Q/U operations, by method."""
        return self.meta.method_seconds

    def method_statistics(self) -> str:
        """Q/U operations per method: count, total and mean milliseconds, busiest first."""
        return self.meta.method_statistics()

    @property
    def streaming(self) -> Counter[str]:
        """Read-ahead and write-behind of big files (:class:`~bftfs.fs.files.flush.FlushEngine`)."""
        return self.engine.streaming

    @property
    def reclaimed_blocks(self) -> int:
        """Blocks given back (:class:`~bftfs.fs.files.reclaim.Reclaimer`)."""
        return self.reclaimer.reclaimed_blocks

    @property
    def reclaim_failed(self) -> int:
        """Blocks that could not be given back."""
        return self.reclaimer.reclaim_failed

    def open_files(self) -> Mapping[int, OpenFile]:
        """The files this client holds state for (tests and statistics)."""
        return dict(self.cache.files)


def _leases(meta: Meta, cache: MetadataCache, term: float, spawn: Spawn) -> Leases | None:
    """The mount's leases (``fs/leases/``: queries they keep good need no round), or None
    when ``term`` is 0; their background work goes to ``spawn``."""
    if term <= 0:
        return None
    config = meta.config
    leases = Leases(
        meta.lease_update,
        meta.query_now,
        term=term,
        b=config.b,
        n=config.n,
        spawn=spawn,
        client=None if getattr(config, "layout", None) else meta.qu.client_id,  # groups: none
        mount=meta.lease_token,
    )
    # What this mount answered about an object before its lease is not covered by it: the
    # attributes its own updates left are asked for again, but those of a file no other
    # client can have seen (``leases/unseen.py``), which only this mount can have changed.
    # Past its own lease's end (10 000 files made, their leases turned into the session's
    # too late), a grant made each such file cost an ``fs.stat`` at its next ``stat``.
    unseen = leases.unseen
    leases.on_grant = lambda oids: cache.forget_own(
        [o for o in oids if unseen.directory_of(o) is None]
    )
    return leases


def _implements_api(fs: FileSystem) -> FileSystemAPI:
    """(Never called: mypy checks here that the file system implements the interface.)"""
    return fs


@asynccontextmanager
async def open_file_system(
    qu: MetadataClient,
    rw: BlockClient,
    config: Any,
    *,
    uid: int = 0,
    gid: int = 0,
    clock_ns: Callable[[], int] = time.time_ns,
    **options: Any,
) -> AsyncIterator[FileSystem]:
    """A running file system on these clients, for the ``async with`` block; creates the
    root directory if the cluster has none (``fs.mkroot`` is refused once it exists, so
    racing clients are harmless).

    Its background work (read-ahead, write-behind, lease renewals, write-back sweeps)
    runs in a nursery this opens and cancels at the end of the block: the one owner and
    shutdown path of every long-lived task (``fs/background.py``).  What must reach the
    servers before that (write-back, lease releases) is the caller's to finish first, as
    :func:`bftfs.fs.session.open_session` does.

    Its requests name this mount (``fs/clients/mounttag.py``: leases are per mount).  In a
    sealed cluster its parts reach the clients through the encryption boundary
    (``fs/clients/seal.py``): ``seal`` (default: the cluster's, its volume key read from the
    cluster directory; None for an unencrypted cluster)."""
    seal = options.pop("seal") if "seal" in options else Seal.of(config)
    tagged = MountTagged(qu)
    qu, rw = wrap_clients(tagged, rw, seal)
    fs = FileSystem(qu, rw, config, uid=uid, gid=gid, clock_ns=clock_ns, **options)
    tagged.mount = fs.meta.lease_token
    if seal is not None:  # sealed names are longer: the plaintext ones shorter
        fs.names.name_max = fs.outbox.creates.name_max = SEALED_NAME_MAX
    async with trio.open_nursery() as nursery:
        fs.background.attach(nursery)
        try:
            try:
                fs.cache.observed(ROOT, await fs.meta.query(ROOT, "fs.stat"))
            except NotFound:
                arg = {"mode": 0o755, "uid": uid, "gid": gid, "now": clock_ns()}
                with contextlib.suppress(Exists):  # another client made it first
                    await fs.meta.update([ROOT], "fs.mkroot", arg)
            yield fs
        finally:
            fs.background.detach()
            nursery.cancel_scope.cancel()
