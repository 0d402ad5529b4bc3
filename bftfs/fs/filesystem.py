"""The inode-level file system on Q/U metadata and PASIS blocks (docs/fs-api.md).

Every namespace operation is one Q/U query or one single- or multi-object update, as in the
seed's Q/U-NFSv3 (Table 4.3, L3112-3156): ``getattr``/``readdir``/``readlink`` query one
object, ``lookup`` queries the directory (and the entry's attribute object concurrently when
this client already knows which it is), ``create``/``mkdir``/``symlink``/``mknod``/``link``/
``unlink``/``rmdir`` update the directory and one attribute or directory object together,
and ``rename`` updates up to two directories, the moved and the replaced object (plus the
ancestors that prove a directory does not move under itself, see
:func:`bftfs.fs.objects._not_under`) atomically.  The servers validate every update; the
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
  ``release``, before a truncation, and when the dirty data passes a bound (8 MiB).  A flush
  writes every block first (PASIS, complete at ``N - t`` nodes) and only then sends the
  size and mtime (Q/U), so a crash in between leaves the old size over the old data.

Concurrency: pyfuse3 runs handlers as concurrent trio tasks; code between ``await`` points is
atomic.  Flushes and truncations of one file are serialised by its lock; the Q/U client
serialises its own operations per object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import stat as st
import time
import types
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from bftfs.fs import objects as obj
from bftfs.fs.attrs import Attr, attr_from_stat
from bftfs.fs.errors import (
    BadHandle,
    CrossDevice,
    Exists,
    FsError,
    Invalid,
    IsDir,
    NoAttr,
    NotDir,
    NotFound,
    StaleView,
    TooBig,
    Unavailable,
    from_refusal,
)
from bftfs.fs.files import (
    DEFAULT_DIRTY_LIMIT,
    DEFAULT_READAHEAD,
    INITIAL_RESERVE,
    OpenFile,
    reservation,
    round_up,
)
from bftfs.fs.objects import RENAME_EXCHANGE, ROOT
from bftfs.qu.client import Unavailable as QUUnavailable
from bftfs.qu.core import backoff_delay
from bftfs.qu.objects import Refused
from bftfs.qu.timestamp import MAX_OBJECTS
from bftfs.rw.client import ReadAborted, ReadFailed
from bftfs.rw.messages import block_id
from bftfs.transport import QuorumUnavailable, TransportError

log = logging.getLogger(__name__)

RENAME_NOREPLACE = obj.RENAME_NOREPLACE
XATTR_CREATE = obj.XATTR_CREATE
XATTR_REPLACE = obj.XATTR_REPLACE

#: Attempts of an update whose cached view keeps turning out stale (concurrent changes).
MAX_ATTEMPTS = 8
#: Attempts of a flush that keeps finding the file changed by other clients (each failed
#: attempt means another client's flush succeeded, so the file system makes progress).
FLUSH_ATTEMPTS = 64
#: Seconds after a stale name was refused (ESTALE) during which a lookup counts as the
#: kernel's walk again, and the object it found may be used once by that name even if it
#: is removed meanwhile (``FileSystem._check_reached``).
REVALIDATION_WINDOW = 0.1
#: A write lease (``fs.lock``): how long other clients wait for a writer that crashed
#: while writing blocks.  A flush takes well under a second; the lease only matters when
#: its holder died.
LEASE_NS = 30 * 10**9
#: A lease taken at create is used for a flush only with this much of it left.
LEASE_MARGIN_NS = 10 * 10**9
#: Backoff between attempts of a contended flush (``qu.core.backoff_delay``): first and
#: largest delay, seconds.
BACKOFF_FIRST = 0.002
BACKOFF_MAX = 0.5
#: Attribute queries (of up to 8 objects each) in flight at once for one readdir.
READDIR_CONCURRENCY = 16
#: Cached directory entries in all (the cache is cleared when it grows past this).
NAME_CACHE_LIMIT = 200_000

T = TypeVar("T")

_PROTOCOL_ERRORS = (QUUnavailable, QuorumUnavailable, ReadFailed, ReadAborted, TransportError)


class _Stale(Exception):
    """The servers refused because this client's view is out of date: re-read, retry."""


class _Locked(Exception):
    """Another client holds the file's write lease: wait, re-read and retry."""


class _Taken(Exception):
    """A freshly drawn object id is taken: draw another."""


def _translate(e: BaseException) -> BaseException:
    """A protocol or refusal exception as the file-system error it means."""
    if isinstance(e, BaseExceptionGroup):
        inner = [_translate(x) for x in e.exceptions]
        fs_errors = [x for x in inner if isinstance(x, FsError)]
        if len(fs_errors) == len(inner):
            return fs_errors[0]
        return e
    if isinstance(e, Refused):
        if e.code == "stale":
            return _Stale(e.message)
        if e.code == "locked":
            return _Locked(e.message)
        if e.code == "oid-exists":
            return _Taken()
        return from_refusal(e.code, e.message)
    if isinstance(e, _PROTOCOL_ERRORS):
        return Unavailable(f"{type(e).__name__}: {e}")
    return e


def _check_name(name: bytes) -> None:
    try:
        obj.check_name(name)
    except Refused as e:
        raise from_refusal(e.code, e.message) from None


class _ClassOrInstance:
    """A method that is one function on the class and another on its instances."""

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_instance.__doc__

    def __get__(self, instance: Any, owner: type) -> Callable[..., Any]:
        if instance is None:
            return types.MethodType(self.on_class, owner)
        return types.MethodType(self.on_instance, instance)


def _content_version(s: dict[str, Any]) -> tuple[int, int]:
    """``(data id, version counter)`` of a file's stat: one content (every update of the
    file raises the counter)."""
    return (s.get("d", 0), s["v"])


def _may_open(s: dict[str, Any], uid: int, gid: int, flags: int) -> bool:
    """Whether the mode bits of ``s`` let ``uid``/``gid`` open it with ``flags`` (the
    owner's, group's or others' bits, as the kernel's check; root may always; without
    the caller's supplementary groups, so a group-only grant to one of those says no)."""
    if uid == 0:
        return True
    acc = flags & os.O_ACCMODE
    need = (4 if acc != os.O_WRONLY else 0) | (2 if acc != os.O_RDONLY or flags & os.O_TRUNC else 0)
    shift = 6 if s["uid"] == uid else 3 if s["gid"] == gid else 0
    return (s["mode"] >> shift) & need == need


class FileSystem:
    """The file-system model of one client (one mount); see the module docstring."""

    def __init__(
        self,
        qu: Any,
        rw: Any,
        config: Any,
        *,
        uid: int = 0,
        gid: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        attr_ttl: float = 1.0,
        dirty_limit: int = DEFAULT_DIRTY_LIMIT,
        readahead: int = DEFAULT_READAHEAD,
    ) -> None:
        self.qu = qu
        self.rw = rw
        self.config = config
        self.uid = uid
        self.gid = gid
        self.clock_ns = clock_ns
        self.rng = rng or random.SystemRandom()
        #: This client's write-lease token (``fs.lock``): random, so that two mounts of
        #: one client identity do not share leases.
        self.lease_token = self.rng.randrange(1, obj.MAX_OID)
        self.attr_ttl = attr_ttl
        self.dirty_limit = dirty_limit
        self.readahead = readahead
        self.bs: int = config.block_size
        #: Regular files up to this size keep their content in the attribute object.
        self.inline: int = min(getattr(config, "inline_limit", 0), self.bs)
        #: Directory id -> {name: (object id, type code)} (partial; see module docstring).
        self._names: dict[int, dict[bytes, tuple[int, int]]] = {}
        #: Last ESTALE for a stale name (monotonic s), and objects a lookup found right
        #: after one, with until when (``_check_reached``).
        self._refused_stale_at = -1e9
        self._refused_names: set[tuple[int, bytes]] = set()
        self._revalidated: dict[int, float] = {}
        self._parents: dict[int, int] = {}
        #: Object id -> (stat produced by our own update, trio time it arrived).
        self._own: dict[int, tuple[dict[str, Any], float]] = {}
        self._files: dict[int, OpenFile] = {}
        self._handles: dict[int, tuple[OpenFile, int]] = {}
        self._next_fh = 1
        #: File id -> (data id, version counter) of the content the kernel may hold pages
        #: of; see :meth:`keep_cache`.
        self._kernel_content: dict[int, tuple[int, int]] = {}
        #: Handles whose open found the kernel's pages current.
        self._cache_current: set[int] = set()
        #: Q/U operations sent and seconds spent in them, by method (where a workload's
        #: rounds go; logged at unmount).
        self.methods: Counter[str] = Counter()
        self.method_seconds: defaultdict[str, float] = defaultdict(float)

    async def _open_fs(
        cls: Any,  # FileSystem: bound on the class by _ClassOrInstance
        qu: Any,
        rw: Any,
        config: Any,
        *,
        uid: int = 0,
        gid: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        **options: Any,
    ) -> FileSystem:
        """A file system on these clients; creates the root directory if the cluster has
        none (``fs.mkroot`` is refused once it exists, so racing clients are harmless)."""
        fs = cls(qu, rw, config, uid=uid, gid=gid, clock_ns=clock_ns, **options)
        try:
            await fs._query(ROOT, "fs.stat")
        except NotFound:
            arg = {"mode": 0o755, "uid": uid, "gid": gid, "now": clock_ns()}
            with contextlib.suppress(Exists):  # another client made it first
                await fs._update([ROOT], "fs.mkroot", arg)
        return fs

    # Protocol calls ------------------------------------------------------------------------

    async def _query(self, oid: int | list[int], method: str, arg: Any = None) -> Any:
        self.methods[method] += 1
        start = time.perf_counter()
        try:
            return await self.qu.query(oid, method, arg)
        except (Refused, *_PROTOCOL_ERRORS) as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start

    async def _update(self, objects: Iterable[int], method: str, arg: Any) -> Any:
        self.methods[method] += 1
        start = time.perf_counter()
        try:
            return await self.qu.update(list(objects), method, arg)
        except (Refused, *_PROTOCOL_ERRORS) as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start

    def method_statistics(self) -> str:
        """Q/U operations per method: count, total and mean milliseconds, busiest first."""
        lines = ["Q/U method        calls    total ms   mean ms"]
        for name, secs in sorted(self.method_seconds.items(), key=lambda kv: -kv[1]):
            n = self.methods[name]
            lines.append(f"{name:<16} {n:>6} {secs * 1e3:>11.1f} {secs * 1e3 / n:>9.2f}")
        return "\n".join(lines)

    async def _blocks(self, coro: Awaitable[T]) -> T:
        """Run a PASIS call, translating its failures (they come grouped from nurseries)."""
        try:
            return await coro
        except _PROTOCOL_ERRORS as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        except BaseExceptionGroup as e:
            t = _translate(e)
            if t is e:
                raise
            raise t from None

    def _new_oid(self, near: int | None = None) -> int:
        """A random 63-bit id (object ids, data ids); with ``near``, one in the same residue
        class mod ``n`` as ``near``.

        Q/U sends an operation to the preferred quorum of ``object id mod n``, a multi-object
        one to that of its highest id (seed L2839-2841), and a server outside the quorum of an
        object's last update must object-sync before it can take the next.  A new object
        congruent to its parent directory shares the directory's quorum, so create, unlink,
        lookup and the file's own updates all meet the same servers and need no sync (an
        Andrew copy phase did 1700 syncs with random ids).  The price: one directory tree
        loads the same ``q`` of the ``n`` servers; the others serve when those fail.
        """
        x = self.rng.randrange(2, obj.MAX_OID)
        if near is None:
            return x
        n = self.config.n
        x += (near - x) % n
        return x if x <= obj.MAX_OID else x - n

    def _now(self) -> int:
        return self.clock_ns()

    # Caches ------------------------------------------------------------------------------

    def _own_stat(self, oid: int, s: dict[str, Any]) -> None:
        self._own[oid] = (s, trio.current_time())
        if s["k"] == "d":
            self._parents[oid] = s["p"]
        f = self._files.get(oid)
        if f is not None and s["k"] == "f":
            f.reset(s, own=True)

    def _learn(self, parent: int, name: bytes, oid: int, code: int) -> None:
        names = self._names.get(parent)
        if names is None:
            if sum(len(v) for v in self._names.values()) > NAME_CACHE_LIMIT:
                self._names.clear()
            names = self._names[parent] = {}
        names[name] = (oid, code)

    def _forget(self, parent: int, name: bytes | None = None) -> None:
        if name is None:
            self._names.pop(parent, None)
        else:
            self._names.get(parent, {}).pop(name, None)

    def _attr(self, oid: int, s: dict[str, Any]) -> Attr:
        f = self._files.get(oid)
        if f is not None and s["k"] == "f" and (f.buffered or f.opens):
            s = dict(f.st, size=f.size)
            if f.dirty and s.get("al") is not None:  # buffered data will be stored too
                s["al"] += sum(len(b) for b in f.dirty.values())
                s["inl"] = f.size <= self.inline
            if f.mtime is not None:
                s["mt"] = f.mtime
            for key, value in f.attrs.items():
                if key == "mode":
                    s["mode"] = (s["mode"] & ~0o7777) | (value & 0o7777)
                else:
                    s["at" if key == "atime" else key] = value
        return attr_from_stat(oid, s, self.bs)

    def _observed(self, oid: int, s: dict[str, Any]) -> None:
        """The servers answered ``s`` for ``oid``: attributes our own update produced
        earlier are no longer the freshest, so they stop answering ``getattr`` and
        ``lookup`` (a lookup of another name for the object, after another client changed
        it, answered our older size, and the kernel cut its pages to it)."""
        own = self._own.get(oid)
        if own is not None and s["v"] > own[0]["v"]:
            del self._own[oid]

    def _fresh(self, oid: int) -> dict[str, Any] | None:
        """Attributes known fresh without a query: an open file's (close-to-open) or those
        our own update produced within ``attr_ttl``; else None."""
        f = self._files.get(oid)
        if f is not None and f.opens:
            return f.st
        own = self._own.get(oid)
        if own is not None and trio.current_time() - own[1] < self.attr_ttl:
            return own[0]
        return None

    async def _stat(self, oid: int) -> dict[str, Any]:
        """Fresh attributes of ``oid`` (a query), unless our own update made them lately."""
        own = self._own.get(oid)
        if own is not None and trio.current_time() - own[1] < self.attr_ttl:
            return own[0]
        s = await self._query(oid, "fs.stat")
        self._observed(oid, s)
        if s["k"] == "d":
            self._parents[oid] = s["p"]
        return s

    async def _entry(self, parent: int, name: bytes, fresh: bool = False) -> tuple[int, int]:
        """(object id, type code) of ``name`` in ``parent``: the cache, else a query."""
        got = None if fresh else self._names.get(parent, {}).get(name)
        if got is not None:
            return got
        oid, code = await self._query(parent, "fs.lookup", name)
        self._learn(parent, name, oid, code)
        return oid, code

    # Namespace: queries --------------------------------------------------------------------

    async def getattr(self, ino: int, *, reached_by_name: bool = False) -> Attr:
        """Attributes of ``ino`` (buffered size/mtime for a file with dirty data).

        ``reached_by_name``: the caller found ``ino`` through a name it cached (the kernel's
        path walk); if no name reaches it any more, the name was stale (:meth:`_check_reached`).
        """
        f = self._files.get(ino)
        if f is not None and f.opens:
            return self._attr(ino, f.st)
        s = await self._stat(ino)
        if reached_by_name:  # (not open here: the kernel asks the same for an fstat)
            self._check_reached(ino, s)
        return self._attr(ino, s)

    def _check_reached(self, ino: int, s: dict[str, Any]) -> None:
        """Refuse an object that no name reaches (link count 0: unlinked, or a removed
        directory) when the caller came to it by a name: that name was cached and is stale
        (another client removed the object or replaced it).

        One exception: the kernel's walk again after such a refusal (fresh lookups,
        LOOKUP_REVAL) found this object by its name, and another client removed it in the
        moment between that lookup and this call.  The call then goes on, ordered before
        the removal (as a local file system orders an open that raced an unlink): answering
        ESTALE a second time would reach the application, since the kernel retries once
        (two clients creating and removing one journal name hit that about once in 50).

        Raises:
            StaleView: the kernel then walks the path again with fresh lookups and finds
                what the name is now (the replacing file of an atomic save, or nothing).
        """
        # The exception holds for the first use after the lookup only: a later call that
        # reaches the object by the then cached name is refused like any stale name.
        armed = self._revalidated.pop(ino, 0.0) if self._revalidated else 0.0
        if s["nl"] != 0:
            return
        now = time.monotonic()
        if armed > now:
            return
        self._refused_stale_at = now
        self._refused_names = {
            (parent, name)
            for parent, names in self._names.items()
            for name, (oid, _) in names.items()
            if oid == ino
        }
        raise StaleView(f"object {ino} has no name any more")

    async def lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of entry ``name`` of directory ``parent`` (``.``, ``..`` too);
        see :meth:`_lookup`.  A lookup of the refused name right after a stale name was
        refused is the kernel's walk again: the object it finds may be used once by that
        name even if it is removed meanwhile (:meth:`_check_reached`)."""
        a = await self._lookup(parent, name)
        now = time.monotonic()
        if (
            now - self._refused_stale_at < REVALIDATION_WINDOW
            and (parent, name) in self._refused_names
        ):
            # Once per refusal: a later lookup of the name (another call's, the consistency
            # checker found one renaming over it) must not make a removed file usable.
            self._refused_names.discard((parent, name))
            self._revalidated[a.ino] = now + REVALIDATION_WINDOW
            if len(self._revalidated) > 64:  # expired ones
                self._revalidated = {k: v for k, v in self._revalidated.items() if v > now}
        return a

    async def _lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of entry ``name`` of directory ``parent`` (``.``, ``..`` too).

        One round when the entry's object is cached: a two-object query of the directory and
        the object it named (``fs.lookupstat``), or only the directory when that object's
        attributes are fresh here; else the directory, then the object.
        """
        if name == b".":
            return await self.getattr(parent)
        if name == b"..":
            p = await self._query(parent, "fs.stat")
            if p["k"] != "d":
                raise NotDir()
            return await self.getattr(p["p"])
        _check_name(name)
        guess = self._names.get(parent, {}).get(name)
        if guess is None or self._fresh(guess[0]) is not None:
            try:
                oid, code = await self._query(parent, "fs.lookup", name)
            except NotFound:
                self._forget(parent, name)
                raise
            self._learn(parent, name, oid, code)
            return await self.getattr(oid)
        arg = {"p": parent, "o": guess[0], "name": name}
        try:
            got = await self._query([parent, guess[0]], "fs.lookupstat", arg)
        except NotFound:
            self._forget(parent, name)
            raise
        oid, code = got["e"]
        self._learn(parent, name, oid, code)
        s = got["s"]
        if s is None:  # the entry names another object now
            return await self.getattr(oid)
        self._observed(oid, s)
        if s["k"] == "d":
            self._parents[oid] = s["p"]
        return self._attr(oid, s)

    async def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        """Every entry with its attributes, sorted by name (no ``.``/``..``): one directory
        query, then the entries' attributes, up to 8 objects per query (``fs.statmany``).

        The objects of one query share a preferred quorum (object id mod ``n``), which is the
        case for every entry created in this directory (see :meth:`_new_oid`); entries whose
        attributes are fresh here cost nothing.  ``ls -l`` of 500 names: 63 rounds, not 500.
        """
        d = await self._query(ino, "fs.readdir")
        ents = obj.entries(d)
        self._parents[ino] = d["p"]
        self._names[ino] = {name: (oid, code) for name, (oid, code) in ents.items()}
        stats: dict[int, dict[str, Any] | None] = {}
        groups: dict[int, list[int]] = {}
        for oid, _ in ents.values():
            if oid in stats or oid in groups.get(oid % self.config.n, ()):
                continue
            fresh = self._fresh(oid)
            if fresh is not None:
                stats[oid] = fresh
            else:
                groups.setdefault(oid % self.config.n, []).append(oid)
        limit = trio.Semaphore(READDIR_CONCURRENCY)

        async def some(oids: list[int]) -> None:
            async with limit:
                got = await self._query(sorted(oids), "fs.statmany")
            for oid in oids:
                s = got.get(str(oid))
                stats[oid] = s
                if s is not None:
                    self._observed(oid, s)
                if s is not None and s["k"] == "d":
                    self._parents[oid] = s["p"]

        async with trio.open_nursery() as n:
            for oids in groups.values():
                for i in range(0, len(oids), MAX_OBJECTS):
                    n.start_soon(some, oids[i : i + MAX_OBJECTS])
        # An entry whose object is gone raced with a removal: it is left out.
        return [
            (name, self._attr(oid, stats[oid]))  # type: ignore[arg-type]
            for name, (oid, _) in ents.items()
            if stats.get(oid) is not None
        ]

    async def readlink(self, ino: int) -> bytes:
        return await self._query(ino, "fs.readlink")

    async def statfs(self) -> dict[str, int]:
        """Nominal figures: nodes report no free space yet, so the capacity is the LMDB map
        size of one node times the erasure-coding gain ``m``, all of it shown free."""
        bs = self.bs
        total = self.config.map_size * self.config.m // bs
        return {
            "f_bsize": bs,
            "f_frsize": bs,
            "f_blocks": total,
            "f_bfree": total,
            "f_bavail": total,
            "f_files": 1 << 40,
            "f_ffree": 1 << 40,
            "f_favail": 1 << 40,
            "f_namemax": obj.NAME_MAX,
        }

    # Namespace: creating -------------------------------------------------------------------

    async def _make(self, parent: int, name: bytes, method: str, arg: dict[str, Any]) -> Attr:
        """create/mkdir/mknod/symlink: a two-object update with a fresh random object id."""
        _check_name(name)
        for _ in range(MAX_ATTEMPTS):
            oid = self._new_oid(near=parent)
            a = dict(arg, p=parent, o=oid, name=name, now=self._now())
            try:
                child, pst = await self._update([parent, oid], method, a)
            except _Taken:
                continue
            except _Stale as e:  # only from a method that never says so: a bug
                raise FsError(str(e)) from None
            self._own_stat(oid, child)
            self._own_stat(parent, pst)
            self._learn(parent, name, oid, st.S_IFMT(child["mode"]) >> 12)
            return self._attr(oid, child)
        raise FsError("could not draw a free object id")

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        return await self._make(parent, name, "fs.mkdir", {"mode": mode, "uid": uid, "gid": gid})

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
        if st.S_IFMT(mode) == 0:
            mode |= st.S_IFREG
        if st.S_IFMT(mode) == st.S_IFDIR:
            return await self.mkdir(parent, name, mode, uid, gid)
        arg: dict[str, Any] = {"mode": mode, "uid": uid, "gid": gid, "rdev": rdev}
        if st.S_ISREG(mode):
            arg.update(d=self._new_oid(), alloc=self._initial_reserve())
            if self.inline:
                arg["i"] = b""
            if lease:
                arg.update(tok=self.lease_token, lease=LEASE_NS)
        return await self._make(parent, name, "fs.create", arg)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        arg = {"mode": st.S_IFLNK | 0o777, "uid": uid, "gid": gid, "t": target}
        return await self._make(parent, name, "fs.create", arg)

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _check_name(new_name)
        f, pst = await self._update(
            [ino, new_parent],
            "fs.link",
            {"p": new_parent, "o": ino, "name": new_name, "now": self._now()},
        )
        self._own_stat(ino, f)
        self._own_stat(new_parent, pst)
        self._learn(new_parent, new_name, ino, st.S_IFMT(f["mode"]) >> 12)
        return self._attr(ino, f)

    def _initial_reserve(self) -> int:
        return round_up(INITIAL_RESERVE, self.bs)

    # Namespace: removing and renaming ------------------------------------------------------

    async def _remove(self, parent: int, name: bytes, method: str) -> None:
        _check_name(name)
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            oid, code = await self._entry(parent, name, fresh)
            if method == "fs.unlink" and code == obj.DIR_TYPE:
                raise IsDir()
            if method == "fs.rmdir" and code != obj.DIR_TYPE:
                raise NotDir()
            try:
                child, pst = await self._update(
                    [parent, oid], method, {"p": parent, "o": oid, "name": name, "now": self._now()}
                )
            except (_Stale, NotFound) as e:
                self._forget(parent)
                if isinstance(e, NotFound) and fresh:
                    raise
                fresh = True  # our cached entry may have been wrong: ask the servers
                continue
            self._forget(parent, name)
            self._own_stat(oid, child)
            self._own_stat(parent, pst)
            if child["k"] == "d":
                self._names.pop(oid, None)
            return
        raise FsError(f"{method}: directory kept changing")

    async def unlink(self, parent: int, name: bytes) -> None:
        await self._remove(parent, name, "fs.unlink")

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self._remove(parent, name, "fs.rmdir")

    async def _parent_of(self, d: int, fresh: bool) -> int:
        if not fresh and d in self._parents:
            return self._parents[d]
        s = await self._query(d, "fs.stat")
        if s["k"] != "d":
            raise NotDir()
        self._parents[d] = s["p"]
        return int(s["p"])

    async def _chain(self, start: int, moving: int, stop: int, fresh: bool) -> list[int]:
        """The directories from ``start`` up to (not including) ``stop`` or the root: the
        objects the servers walk to prove ``moving`` is not an ancestor of ``start``."""
        out: list[int] = []
        cur = start
        while cur not in (stop, ROOT):
            if cur == moving:
                raise Invalid("a directory cannot move under itself")
            out.append(cur)
            if len(out) > MAX_OBJECTS:
                break
            cur = await self._parent_of(cur, fresh)
        return out

    async def rename(
        self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        """rename(2): one atomic multi-object update (replacing an existing target).

        Objects: both directories, the moved object, the replaced one, and - when a directory
        changes parent - the ancestors of its new parent up to its old parent or the root.
        When those are more than Q/U's 8 objects per update, EXDEV (``mv`` then copies).
        """
        _check_name(name)
        _check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise Invalid("rename flags")
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            o, ocode = await self._entry(parent, name, fresh)
            if o in (parent, new_parent):
                raise Invalid("a directory cannot move under itself")
            try:
                t, tcode = await self._entry(new_parent, new_name, fresh)
            except NotFound:
                t, tcode = None, 0
            objs = {parent, new_parent, o}
            if t is not None:
                objs.add(t)
            if parent != new_parent:
                if ocode == obj.DIR_TYPE:
                    objs.update(await self._chain(new_parent, o, parent, fresh))
                if t is not None and tcode == obj.DIR_TYPE and flags & RENAME_EXCHANGE:
                    objs.update(await self._chain(parent, t, new_parent, fresh))
            if len(objs) > MAX_OBJECTS:
                raise CrossDevice("rename spans more objects than one Q/U update may")
            arg = {
                "sp": parent,
                "sn": name,
                "dp": new_parent,
                "dn": new_name,
                "o": o,
                "t": t,
                "flags": flags,
                "now": self._now(),
            }
            try:
                stats = await self._update(sorted(objs), "fs.rename", arg)
            except (_Stale, NotFound) as e:
                self._forget(parent)
                self._forget(new_parent)
                if isinstance(e, NotFound) and fresh:
                    raise
                fresh = True
                continue
            for key, s in stats.items():
                self._own_stat(int(key), s)
            if stats:
                self._forget(parent, name)
                self._forget(new_parent, new_name)
                if flags & RENAME_EXCHANGE and t is not None:
                    self._learn(parent, name, t, tcode)
                self._learn(new_parent, new_name, o, ocode)
            return
        raise FsError("rename: directories kept changing")

    # Attributes ----------------------------------------------------------------------------

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
        """chmod/chown/utimens in one update; a size change truncates (see :meth:`_truncate`).

        ``reached_by_name``: as for :meth:`getattr` (``truncate``, ``chmod`` by path): a
        removed object is refused (ESTALE) unless it is open here, so the kernel walks the
        path again and changes the file the name leads to now.  Without this a truncation
        through a name another client had renamed a file over went to the removed file and
        was lost (the consistency checker, seed 12).

        Write-back of attributes: while a regular file has buffered state here (dirty data,
        a pending mtime) or the change comes through an open handle ``fh``, chmod/chown/
        utimens join that state and the next flush (close, fsync) sends them with the data
        in its one update - other clients see them when they see the data (close-to-open).
        This is what ``cp -a`` (futimens, fchmod after writing) and the kernel's writeback
        cache (an mtime through the handle before every flush) do per file; each was an
        update of its own.  An mtime alone that the servers already hold (fresh attributes)
        is a no-op: the kernel repeats it when it writes the inode back.

        Times must be within ``[objects.MIN_TIME, objects.MAX_TIME]`` (ext4's range, 1901 to
        2446), else Invalid - checked here, before a held-back time could fail a flush.
        """
        for t in (atime_ns, mtime_ns):
            if t is not None and not obj.MIN_TIME <= t <= obj.MAX_TIME:
                raise Invalid("time outside 1901-12-13 .. 2446-05-10")
        f = self._files.get(ino)
        by_name = reached_by_name and fh is None and not (f is not None and f.opens)
        if size is not None:
            await self._truncate(ino, size, mtime_ns, reached_by_name=by_name)
        if mode is None and uid is None and gid is None and atime_ns is None and mtime_ns is None:
            return await self.getattr(ino)
        handle = self._handles.get(fh) if fh is not None else None
        through_handle = handle is not None and handle[0] is f
        if size is None and f is not None and (f.buffered or through_handle):
            changes = {"mode": mode, "uid": uid, "gid": gid, "atime": atime_ns}
            f.attrs.update({k: v for k, v in changes.items() if v is not None})
            if mtime_ns is not None:
                f.mtime = mtime_ns
            return self._attr(ino, f.st)
        if mode is None and uid is None and gid is None and atime_ns is None and size is None:
            fresh = self._fresh(ino)
            pending = self._files[ino].mtime if ino in self._files else None
            if fresh is not None and fresh["mt"] == mtime_ns and pending in (None, mtime_ns):
                return self._attr(ino, fresh)
        arg = {
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "atime": atime_ns,
            "mtime": mtime_ns,
            "now": self._now(),
        }
        s = await self._update([ino], "fs.setattr", arg)
        self._own_stat(ino, s)
        if by_name:  # changed a removed object (harmless): change the named one instead
            self._check_reached(ino, s)
        f = self._files.get(ino)
        if f is not None and mtime_ns is not None:
            f.mtime = None  # an explicit mtime wins over buffered writes' times
        return self._attr(ino, s)

    async def _truncate(
        self, ino: int, size: int, mtime_ns: int | None, *, reached_by_name: bool = False
    ) -> dict[str, Any]:
        """Truncate to ``size``: flush buffered writes, then (to zero) switch to a fresh data
        id, (down) lower the size, (up) clear possible leftovers in ``[size, alloc)`` and then
        raise the size.  The size update comes last in every case.  Returns the file's
        stat after it (without inline content, which after a truncation to zero is empty)."""
        if size > obj.MAX_SIZE:
            raise TooBig("file size limit")
        f = self._files.get(ino)
        if f is not None:
            await self._flush(f)
        lock = f.lock if f is not None else trio.Lock()
        async with lock:
            for attempt in range(FLUSH_ATTEMPTS):
                s = await self._query(ino, "fs.open")
                if s["k"] == "d":
                    raise IsDir()
                if reached_by_name:
                    self._check_reached(ino, s)
                if not st.S_ISREG(s["mode"]):
                    raise Invalid("not a regular file")
                arg: dict[str, Any] = {"size": size, "mtime": mtime_ns, "now": self._now()}
                arg["tok"] = self.lease_token
                if size == 0:
                    arg.update(d=self._new_oid(), alloc=self._initial_reserve())
                    if self.inline:
                        arg["i"] = b""
                else:
                    arg["d"] = s["d"]
                    if s["inl"] and size <= self.inline:
                        arg["i"] = s["i"][:size].ljust(size, b"\0")
                    elif s["inl"] or size > s["size"]:
                        # Leaving inline (block 0 gets the content) or growing: blocks
                        # are written, under the write lease like a flush's.
                        try:
                            await self._locked_clear_gap(ino, s, size)
                        except (_Stale, _Locked):
                            await self._back_off(attempt)
                            continue
                        if s["inl"]:
                            arg["blocks"] = True
                try:
                    s = await self._update([ino], "fs.setattr", arg)
                except (_Stale, _Locked):
                    await self._back_off(attempt)
                    continue
                if f is not None:
                    f.truncate_cache(size)
                self._own_stat(ino, s)
                return s
        raise FsError("truncate: file kept changing")

    async def _locked_clear_gap(self, ino: int, s: dict[str, Any], size: int) -> None:
        """Take the write lease on the version ``s`` and clear the gap up to ``size``
        (the size update that follows ends the lease; if that never comes, it expires)."""
        arg = self._lease_arg(s["d"], s["v"])
        arg["lease"] = LEASE_NS
        self._own_stat(ino, await self._update([ino], "fs.lock", arg))
        await self._clear_gap(s, s["size"], size)

    async def _clear_gap(self, s: dict[str, Any], valid: int, new_size: int) -> None:
        """Write zeros over ``[valid, min(new_size, alloc))`` (see files.OpenFile.gap_blocks);
        for an inline file (``s`` from ``fs.open``) block 0 gets its content first."""
        tmp = OpenFile.from_stat(0, s, self.bs)
        tmp.valid = valid
        blocks: dict[int, bytes] = {}
        if s["inl"]:
            blocks[0] = s["i"]
            tmp.dirty[0] = bytearray(s["i"])
        partial, empty = tmp.gap_blocks(new_size)
        blocks.update((k, b"") for k in empty)
        if partial:
            got = await self._blocks(self.rw.read_blocks([block_id(s["d"], k) for k in partial]))
            for k in partial:
                blocks[k] = tmp.remember(k, got[block_id(s["d"], k)])
        if blocks:
            await self._blocks(
                self.rw.write_blocks({block_id(s["d"], k): v for k, v in blocks.items()})
            )

    # Extended attributes -------------------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """One query, unless fresh attributes say the object has no extended attributes (the
        kernel asks for ``security.capability`` before the first write to every file)."""
        fresh = self._fresh(ino)
        if fresh is not None and fresh.get("nx") == 0:
            raise NoAttr()
        return await self._query(ino, "fs.getxattr", name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return list(await self._query(ino, "fs.listxattr"))

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        arg = {"name": name, "value": bytes(value), "flags": flags, "now": self._now()}
        await self._update([ino], "fs.setxattr", arg)
        self._own.pop(ino, None)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self._update([ino], "fs.removexattr", {"name": name, "now": self._now()})
        self._own.pop(ino, None)

    # Files ---------------------------------------------------------------------------------

    def _handle(self, fh: int) -> tuple[OpenFile, int]:
        try:
            return self._handles[fh]
        except KeyError:
            raise BadHandle(f"file handle {fh} is not open") from None

    def _new_handle(self, f: OpenFile, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (f, flags)
        f.opens += 1
        return fh

    def keep_cache(self, fh: int) -> bool:
        """Whether the kernel may keep its cached pages of this handle's file (FUSE
        ``keep_cache``), decided at open.

        Close-to-open as NFS does it: every open asks the servers, and the cached pages stay
        only if the file is the very version they were filled from.  A file's version
        counter ``v`` goes up with every update of it, so ``(d, v)`` names one content.
        The record moves only at an open (the kernel then drops its pages, or they are of
        that version) and at our own flushes, which the servers take only on the version
        the client wrote from (``v`` in ``fs.reserve``/``fs.write``); any other change,
        ours or another client's, leaves it behind and the next open drops the pages.
        """
        return fh in self._cache_current

    def _kernel_saw(self, ino: int, s: dict[str, Any]) -> bool:
        """Record that the kernel's pages of ``ino`` are of version ``s`` (an open's answer);
        True if they already were."""
        now = _content_version(s)
        if len(self._kernel_content) > NAME_CACHE_LIMIT:
            self._kernel_content.clear()  # forgetting only costs re-reads
        before = self._kernel_content.get(ino)
        self._kernel_content[ino] = now
        return before == now

    async def _update_data(self, f: OpenFile, method: str, arg: dict[str, Any]) -> None:
        """A flush's update of ``f`` (``fs.reserve``/``fs.write``), which the servers take
        only on the version ``arg`` names (``d``, ``v``).  The kernel's pages, which hold
        what was written, then follow to the new version if they were of that one."""
        s = await self._update([f.ino], method, arg)
        if self._kernel_content.get(f.ino) == (arg["d"], arg["v"]):
            self._kernel_content[f.ino] = _content_version(s)
        if f.base == (arg["d"], arg["v"]):  # taken on our base: the new state is ours
            f.base = _content_version(s)
        self._own_stat(f.ino, s)

    async def create(
        self, parent: int, name: bytes, mode: int, uid: int, gid: int, flags: int
    ) -> tuple[int, Attr]:
        """Create a regular file and open it: one two-object update, no further round trip.

        Raises:
            Exists: the name exists and ``flags`` has ``O_EXCL``.
            StaleView: the name exists and ``flags`` has no ``O_EXCL``: the caller decided
                to create on a view that is out of date (the kernel, on a cached negative
                entry or a lookup another client's create overtook).  ``open(O_CREAT)``
                must then open the existing file - after the kernel's own checks of it
                (permissions, symbolic links, O_TRUNC) - so the kernel is told to look
                again rather than answered EEXIST.
        """
        for _ in range(MAX_ATTEMPTS):
            try:
                started = self._now()
                writable = flags & os.O_ACCMODE != os.O_RDONLY
                a = await self.mknod(
                    parent, name, st.S_IFREG | (mode & 0o7777), 0, uid, gid, lease=writable
                )
                break
            except Exists:
                if flags & os.O_EXCL:
                    raise
            try:
                opened = await self._open_existing(parent, name, uid, gid, flags)
            except NotFound:  # removed again meanwhile: create it after all
                continue
            if opened is None:
                raise StaleView(f"{name!r} exists: created since this client looked")
            return opened
        else:
            raise StaleView(f"{name!r} keeps being created and removed")
        s = self._own[a.ino][0]
        self._kernel_saw(a.ino, s)  # a new inode: the kernel holds no pages of it
        f = self._files[a.ino] = OpenFile.from_stat(a.ino, s, self.bs)
        if writable:
            f.lease_until = started + LEASE_NS
        return self._new_handle(f, flags), a

    async def _open_existing(
        self, parent: int, name: bytes, uid: int, gid: int, flags: int
    ) -> tuple[int, Attr] | None:
        """``open(O_CREAT)`` without ``O_EXCL`` of a name another client created since the
        kernel looked: open that file, as an NFS server's unchecked CREATE does, when the
        kernel's own checks of an existing file could not refuse it - a regular file the
        caller may open so by its mode bits (the kernel skips them for a file it thinks it
        created; O_TRUNC is then ours too).  Otherwise None: the caller answers ESTALE and
        the kernel looks again and checks (two clients creating and removing one name kept
        making that second look fail too, and ESTALE reached applications).

        Raises:
            NotFound: the name is gone again.
        """
        oid, code = await self._entry(parent, name, fresh=True)
        if code != st.S_IFREG >> 12:
            return None
        s = await self._query(oid, "fs.stat")
        if s["nl"] == 0:
            raise NotFound(f"{name!r} removed again")
        if not _may_open(s, uid, gid, flags):
            return None
        try:
            fh = await self._open_file(oid, flags, reached_by_name=True)
        except StaleView:
            raise NotFound(f"{name!r} removed again") from None
        f, _ = self._handles[fh]
        return fh, self._attr(oid, f.st)

    async def _open_file(self, ino: int, flags: int, *, reached_by_name: bool = False) -> int:
        """Open ``ino``: re-read its attributes (close-to-open consistency); O_TRUNC
        truncates (and its update's answer is the fresh attributes, so no further round),
        O_APPEND makes every write of this handle go to the end.  ``reached_by_name``: as
        for :meth:`getattr`."""
        f = self._files.get(ino)
        if f is not None and f.buffered:
            await self._flush(f)
        if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
            s = await self._truncate(ino, 0, None, reached_by_name=reached_by_name)
        else:
            s = await self._query(ino, "fs.open")
            self._observed(ino, s)
            if s["k"] == "d":
                raise IsDir()
            if reached_by_name:
                self._check_reached(ino, s)
        f = self._files.get(ino)
        if f is None:
            f = self._files[ino] = OpenFile.from_stat(ino, s, self.bs)
        else:
            f.reset(s)
        fh = self._new_handle(f, flags)
        if self._kernel_saw(ino, s):
            self._cache_current.add(fh)
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short only at end of file; holes are zeros)."""
        f, _ = self._handle(fh)
        if offset < 0 or size < 0:
            raise Invalid("negative offset or size")
        need = f.blocks_to_fetch(offset, size, self.readahead)
        if need:
            await self._fetch(f, need)
        return f.assemble(offset, size)

    async def _fetch(self, f: OpenFile, indices: list[int]) -> None:
        if f.st.get("inl"):  # the content comes with the attributes
            await self._adopt(f, await self._query(f.ino, "fs.open"))
            indices = [k for k in indices if f.missing(k)]
            if not indices:
                return
        await self._fetch_blocks(f, indices)

    async def _fetch_blocks(self, f: OpenFile, indices: list[int]) -> None:
        """Read blocks of ``f``'s current data id into its clean cache (an inline file's
        content is block 0 of its stat already)."""
        if f.st.get("inl"):
            return
        d = f.data_id
        got = await self._blocks(self.rw.read_blocks([block_id(d, k) for k in indices]))
        if f.data_id != d:  # truncated to zero while we waited: the blocks are not its
            return
        for k in indices:
            if k not in f.dirty:
                f.remember(k, got[block_id(d, k)])

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Buffer ``data`` at ``offset`` (at the end for O_APPEND handles); flushes when the
        file's dirty data passes ``dirty_limit``."""
        f, flags = self._handle(fh)
        if flags & os.O_APPEND:
            offset = f.size
        if offset < 0:
            raise Invalid("negative offset")
        if not data:
            return 0
        if offset + len(data) > obj.MAX_SIZE:
            raise TooBig("file size limit")
        need = f.blocks_to_read_for_write(offset, len(data))
        if need:
            await self._fetch(f, need)
            if flags & os.O_APPEND and offset != f.size:  # the file grew meanwhile
                offset = f.size
            need = f.blocks_to_read_for_write(offset, len(data))
            if need:
                await self._fetch(f, need)
        f.apply_write(offset, data, self._now())
        f.record(offset, data, bool(flags & os.O_APPEND))
        if f.dirty_bytes > self.dirty_limit:
            await self._flush(f)
        return len(data)

    async def flush(self, fh: int) -> None:
        """Make this file's buffered writes durable: blocks, then size and mtime."""
        f, _ = self._handle(fh)
        await self._flush(f)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        """Close a handle (flushing); the file's clean blocks stay cached for a re-open,
        which keeps them only if the file did not change meanwhile."""
        f, _ = self._handle(fh)
        try:
            await self._flush(f)
            if f.lease_until is not None and f.opens == 1:  # created, never written
                f.lease_until = None
                await self._unlock(f)
        finally:
            del self._handles[fh]
            self._cache_current.discard(fh)
            f.opens -= 1
            if f.opens == 0 and not f.dirty:
                self._files.pop(f.ino, None)

    async def _adopt(self, f: OpenFile, s: dict[str, Any]) -> None:
        """Take ``s`` (fresh from the servers) as ``f``'s state.  If another client changed
        the file under this client's buffered writes, they are re-applied on its new
        content (:meth:`OpenFile.rebase`): each write's bytes at its offset, each append at
        the new end of file, so nothing either client wrote is lost."""
        if not (f.log and f.changed_by_others(s)):
            f.reset(s)
            return
        mtime = f.mtime
        for offset, data, appended in f.rebase(s):
            if appended:
                offset = f.size
            need = f.blocks_to_read_for_write(offset, len(data))
            if need:
                await self._fetch_blocks(f, need)
            f.apply_write(offset, data, 0)
        f.mtime = mtime

    async def _flush(self, f: OpenFile) -> None:
        """Send ``f``'s buffered writes; when another client changed the file meanwhile
        (``stale``) or is writing its blocks (``locked``), re-read, re-apply and retry
        after a growing random delay."""
        async with f.lock:
            for attempt in range(FLUSH_ATTEMPTS):
                if not f.buffered:
                    return
                try:
                    await self._flush_once(f)
                    return
                except (_Stale, _Locked):
                    self.methods["flush-retries"] += 1
                    await self._back_off(attempt)
                    await self._adopt(f, await self._query(f.ino, "fs.open"))
            raise Unavailable("flush: the file kept changing under other clients' writes")

    async def _back_off(self, attempt: int) -> None:
        """Wait before retrying an update another client's change or lease refused."""
        await trio.sleep(backoff_delay(attempt, self.rng, BACKOFF_FIRST, BACKOFF_MAX))

    def _lease_arg(self, d: int, v: int) -> dict[str, Any]:
        """What a data update carries: the content ``(d, v)`` it was computed on, which the
        servers require, and this client's lease token and clock."""
        return {"d": d, "v": v, "tok": self.lease_token, "now": self._now()}

    async def _flush_once(self, f: OpenFile) -> None:
        if f.size <= self.inline:
            await self._flush_inline(f)
            return
        logged = len(f.log)
        if f.st.get("inl") and 0 not in f.dirty:  # leaving inline: block 0 gets the content
            if f.missing(0):
                await self._fetch(f, [0])
            if f.st.get("inl") and 0 not in f.dirty:
                f.dirty[0] = bytearray(f.clean.get(0, b""))
                f.gen[0] = f.gen.get(0, 0) + 1
        bs = self.bs
        d = f.data_id
        snapshot = {k: (bytes(buf), f.gen[k]) for k, buf in f.dirty.items()}
        new_size, mtime = f.size, f.mtime if f.mtime is not None else self._now()
        blocks = {k: v for k, (v, _) in snapshot.items()}
        partial, empty = f.gap_blocks(new_size)
        if partial:
            await self._fetch(f, [k for k in partial if k not in f.clean])
            for k in partial:
                blocks[k] = f.clean.get(k, b"")
        for k in empty:
            blocks[k] = b""
        need = max(new_size, (max(blocks) + 1) * bs if blocks else 0)
        # The write lease, on the version the blocks were computed from (``v``; the servers
        # refuse ``stale`` if anyone changed the file since, ``locked`` while another
        # client writes its blocks), with a larger reservation when the blocks need one.
        held = f.lease_until is not None and self._now() + LEASE_MARGIN_NS < f.lease_until
        f.lease_until = None  # used once: a failed attempt takes the lease again
        if need > f.st["alloc"] or not held:
            arg = self._lease_arg(*f.base)
            arg["lease"] = LEASE_NS
            if need > f.st["alloc"]:
                arg["alloc"] = reservation(need, f.st["alloc"], bs)
            await self._update_data(f, "fs.lock", arg)
        try:
            if blocks:
                await self._blocks(
                    self.rw.write_blocks({block_id(d, k): v for k, v in blocks.items()})
                )
            arg = self._lease_arg(*f.base)
            arg.update(end=new_size, mtime=mtime)
            if f.st.get("inl"):
                arg["blocks"] = True
            # What this flush stored (not the cleared gap): the servers count it for
            # st_blocks.
            written = [[k * bs, k * bs + len(v)] for k, v in blocks.items() if v]
            arg["w"] = obj.merge_extents(written)
            attrs = arg["attrs"] = dict(f.attrs)
            await self._update_data(f, "fs.write", arg)
        except Exception:
            await self._unlock(f)
            raise
        self._flushed(f, snapshot, mtime, attrs)
        f.sent(logged)

    async def _unlock(self, f: OpenFile) -> None:
        """Give the write lease up after a failed flush, so other clients need not wait
        for it to expire (best effort: if this fails too, it expires)."""
        with contextlib.suppress(Exception):
            s = await self._update([f.ino], "fs.unlock", {"tok": self.lease_token})
            self._own_stat(f.ino, s)

    async def _flush_inline(self, f: OpenFile) -> None:
        """A small file's whole content in one ``fs.write`` update (no PASIS round), taken
        only on the version it was computed from."""
        logged = len(f.log)
        f.lease_until = None  # the write ends a lease taken at create
        if f.missing(0):
            await self._fetch(f, [0])
        content = f.assemble(0, f.size).ljust(f.size, b"\0")
        snapshot = {k: (bytes(buf), f.gen[k]) for k, buf in f.dirty.items()}
        mtime = f.mtime if f.mtime is not None else self._now()
        arg = self._lease_arg(*f.base)
        arg.update(end=len(content), mtime=mtime, i=content)
        attrs = arg["attrs"] = dict(f.attrs)
        await self._update_data(f, "fs.write", arg)
        self._flushed(f, snapshot, mtime, attrs)
        f.sent(logged)
        if 0 not in f.dirty:
            f.remember(0, content)

    def _flushed(
        self,
        f: OpenFile,
        snapshot: dict[int, tuple[bytes, int]],
        mtime: int,
        attrs: dict[str, int],
    ) -> None:
        """After a flush update: blocks and attributes sent, unchanged since, are clean."""
        for key, value in attrs.items():
            if f.attrs.get(key) == value:
                del f.attrs[key]
        for k, (data, g) in snapshot.items():
            if f.gen.get(k) == g and f.dirty.get(k) is not None:
                del f.dirty[k]
                f.remember(k, data)
        if not f.dirty:
            f.size = f.st["size"]
            if f.mtime == mtime:
                f.mtime = None

    #: ``await FileSystem.open(qu, rw, config, ...)`` builds a file system,
    #: ``await fs.open(ino, flags)`` opens a file: the contract names both ``open``.
    open = _ClassOrInstance(_open_fs, _open_file)

    # Introspection -------------------------------------------------------------------------

    def open_files(self) -> Mapping[int, OpenFile]:
        """The files this client holds state for (tests and statistics)."""
        return dict(self._files)
