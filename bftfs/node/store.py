"""The node's LMDB store: named databases, read transactions, group-committed writes.

One LMDB environment per node (``<data_dir>/lmdb``).  Protocol steps run against the
:class:`~bftfs.kv.KV` view of a transaction:

* :meth:`Store.read` runs a step in a read-only transaction on the caller's thread (MVCC:
  it never waits for writers, and sees only committed data).
* :meth:`Store.write_now` runs a step in a write transaction of its own at once (non-durable
  stores only: without a sync to share, batching saves less than the task switches cost).
* :meth:`Store.write` queues a step (:meth:`Store.write_each` several, as one); a committer
  task runs every queued step in *one* write transaction and commits it with one sync
  (group commit).  A node's own background work
  (Q/U catch-up, pruning, forgetting, scrub) queues its steps as
  ``background``: a batch takes every client step and at most :data:`BACKGROUND_SHARE`
  background ones (:data:`BACKGROUND_BATCH` when no client step waits), so a client's
  write waits for one small batch, never for a backlog of background steps queued before
  it (issue 31: right after a restart, a node's catch-up and sweeps made client requests
  wait until the client gave up), and background work still advances under client load.
  A durable commit runs in a worker thread: the writes that arrive during its sync form the
  next batch, and the event loop keeps serving reads. (It ran on the event loop's thread for
  a while, which saved the hand-off, 0.29 -> 0.12 ms CPU per commit on an idle disk; but a
  sync on a disk shared by six nodes takes milliseconds, and during a 200 MiB cold read -
  lazy verification committing behind it - the nodes spent 40% of their time blocked in
  commits with every read waiting: issue 19, docs/performance.md.) A store that is not
  durable commits on the event loop's thread (no sync to wait for).
  A step that raises is isolated:
  the batch is rolled back and every step is re-run in a transaction of its own, so only the
  failing step's changes are lost and its exception reaches its caller.  Steps must
  therefore be deterministic functions of the KV (protocol replica steps are).

Durability (config ``durable``): when true, a write returns only after its transaction is
synced to disk; when false, commits are not synced (a process crash, SIGKILL included, still
loses nothing, because committed pages are in the OS page cache; a power failure may lose
the last acknowledged writes).

This is the only module that imports lmdb.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import lmdb
import trio

from bftfs.node import storeformat

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Background steps a batch takes along with client steps (so they advance under load),
#: and how many it takes when no client step waits.
BACKGROUND_SHARE = 4
BACKGROUND_BATCH = 32


class StoreError(Exception):
    """The store cannot take the write (map full, disk full, I/O error)."""


class StoreFull(StoreError):
    """The write needs more space than the map (or the disk under it) has left: the node
    answers ``full`` and the client reports ENOSPC (node/service.py, fs/errors.py)."""


def _store_error(e: lmdb.Error, *, disk_short: bool = False) -> StoreError:
    """The store error for ``e``.  A commit that could not write its pages for want of
    space is :class:`StoreFull`: a full map, ENOSPC, or - ``disk_short``, the disk under
    the store within its reserve of full (:meth:`Store._error`) - the EIO LMDB reports for a short
    write ("short write, filesystem full?", which is how tmpfs and others answer when the
    last pages do not fit)."""
    if isinstance(e, lmdb.MapFullError | lmdb.DiskError) or "No space" in str(e):
        return StoreFull(f"store full: {e}")
    if disk_short and "Input/output error" in str(e):
        return StoreFull(f"store full (the disk is): {e}")
    return StoreError(f"store write failed: {e}")


#: The room the store keeps for metadata when its space runs short, as a share of its
#: capacity (:meth:`Store.fill`): the default ``1 - data_fraction``.  New non-empty block
#: versions are refused within it (``node/rw_server.py``); within :data:`FLOOR_SHARE` of
#: it, Q/U updates that grow what the store holds are refused too
#: (``node/qu_server.py``), so the last room goes to removals, which must go on to give
#: space back (issue 60: on a full disk ``rm`` got ENOSPC and ``ls`` EIO).
FLOOR_SHARE = 0.25
#: A store this far (bytes) above the floor answers :meth:`Store.short_for_growth` without
#: measuring again for :data:`FAR_SECONDS`: no node writes this much in that time.
FAR_BYTES = 256 * 1024 * 1024
FAR_SECONDS = 0.25


class Fill(NamedTuple):
    """How full a store is: ``used`` of ``capacity`` bytes, whichever of its map and its
    disk is the fuller (:meth:`Store.fill`)."""

    used: int
    capacity: int

    @property
    def fraction(self) -> float:
        return self.used / self.capacity if self.capacity > 0 else 1.0


class _LmdbKV:
    """The :class:`KV` protocol over one LMDB transaction."""

    __slots__ = ("_txn", "_store", "_write", "_dbs")

    def __init__(
        self, txn: lmdb.Transaction, store: Store, write: bool, dbs: dict[str, Any]
    ) -> None:
        self._txn = txn
        self._store = store
        self._write = write
        #: The databases published before the transaction began (``Store._dbs`` is
        #: replaced, never changed, by a commit).  A handle published later belongs to a
        #: database this transaction's snapshot does not have: LMDB refuses it there
        #: (``InvalidParameterError: mdb_cursor_open``, issue 60: a new node's first
        #: commits creating databases in the committer's worker thread while a read ran).
        self._dbs = dbs

    def _db(self, name: str) -> Any:
        store = self._store
        db = self._dbs.get(name)
        if db is None and self._write:
            # A database created in a write transaction exists for other transactions only
            # once it commits (LMDB refuses its handle there: EINVAL), so it is published to
            # the readers' table by the commit, not here.
            db = store._new_dbs.get(name)
            if db is None:
                db = store._env.open_db(name.encode(), txn=self._txn, create=True)
                store._new_dbs[name] = db
        return db

    def get(self, db: str, key: bytes) -> bytes | None:
        h = self._db(db)
        # (bytes: transactions here are opened without ``buffers``)
        return None if h is None else cast(bytes | None, self._txn.get(key, db=h))

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._db(db))

    def delete(self, db: str, key: bytes) -> bool:
        h = self._db(db)
        return False if h is None else self._txn.delete(key, db=h)

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        cur = self._below(db, key)
        return None if cur is None else (cast(bytes, cur.key()), cast(bytes, cur.value()))

    def scan(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        for cur in self._walk(db, start, stop, reverse):
            yield cast(bytes, cur.key()), cast(bytes, cur.value())

    # Keys alone (bftfs/kv.py): a cursor positioned on an entry copies its value only when
    # asked for it (``value()``), so these read no fragment.

    def has(self, db: str, key: bytes) -> bool:
        h = self._db(db)
        return h is not None and bool(self._txn.cursor(db=h).set_key(key))

    def lower_key(self, db: str, key: bytes) -> bytes | None:
        cur = self._below(db, key)
        return None if cur is None else cast(bytes, cur.key())

    def scan_keys(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[bytes]:
        for cur in self._walk(db, start, stop, reverse):
            yield cast(bytes, cur.key())

    def _below(self, db: str, key: bytes) -> Any:
        """A cursor on the entry with the greatest key strictly less than ``key``, or None."""
        h = self._db(db)
        if h is None:
            return None
        cur = self._txn.cursor(db=h)
        return cur if (cur.prev() if cur.set_range(key) else cur.last()) else None

    def _walk(self, db: str, start: bytes, stop: bytes, reverse: bool) -> Iterator[Any]:
        """The cursor on each entry with ``start <= key < stop`` in turn, in key order
        (descending if ``reverse``); the caller takes what it needs of it before the next."""
        h = self._db(db)
        if h is None:
            return
        cur = self._txn.cursor(db=h)
        if not reverse:
            found, step = cur.set_range(start), cur.next
        else:
            found, step = (cur.prev() if cur.set_range(stop) else cur.last()), cur.prev
        while found:
            k = cast(bytes, cur.key())
            if (k < start) if reverse else (k >= stop):
                return
            yield cur
            found = step()


class _Job:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class Store:
    """A node's LMDB environment. Open with :meth:`open`; run :meth:`committer` in a task."""

    def __init__(
        self, path: Path, *, map_size: int, durable: bool, reserve_fraction: float = 0.1
    ) -> None:
        """``reserve_fraction``: the share of its capacity kept for metadata when space runs
        short (``1 - data_fraction``: :meth:`short_for_data`)."""
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.durable = durable
        self.map_size = map_size
        self.reserve_fraction = reserve_fraction
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=128,
            sync=durable,
            metasync=durable,
            readahead=True,  # cold reads of fragments: one read-around, not a fault per page
            max_readers=512,
        )
        self._dbs: dict[str, Any] = {}
        self._used = 0
        self._used_at = -1e9
        #: Until when :meth:`short_for_growth` may answer no unmeasured (far from the floor).
        self._far_until = -1e9
        #: Databases created by the open write transaction (see ``_LmdbKV._db``).
        self._new_dbs: dict[str, Any] = {}
        self._queue: list[_Job] = []
        #: Background steps waiting (``write(background=True)``), oldest first.
        self._background: deque[_Job] = deque()
        self._wakeup = trio.Event()
        self._lock = threading.Lock()
        self.commits = 0
        self.batched_writes = 0
        #: The store's format (checked, migrated and stamped before anything reads it).
        try:
            self.format = storeformat.settle(self._env, path)
        except storeformat.StoreFormatError:
            self._env.close()
            raise
        # Open every named database that already exists (their names are the keys of the
        # main database), so reads after a restart find them without a write transaction.
        with self._env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        for name in names:
            try:
                self._dbs[name.decode()] = self._env.open_db(name, create=False)
            except (lmdb.Error, UnicodeDecodeError):
                log.warning("ignoring unexpected key %r in the main database", name)

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(kv)`` in a read-only transaction and return its result."""
        dbs = self._dbs  # taken before the transaction begins (see ``_LmdbKV._dbs``)
        with self._env.begin(buffers=False) as txn:
            return fn(_LmdbKV(txn, self, False, dbs))

    async def write(self, fn: Callable[[Any], T], *, background: bool = False) -> T:
        """Run ``fn(kv)`` in the next group-committed write transaction; durable on return.
        ``background``: the node's own work, which client steps go ahead of (module
        docstring).

        Raises:
            StoreError: the transaction could not be committed (e.g. the map or disk is full).
            Exception: whatever ``fn`` raised (its changes are rolled back).
        """
        job = _Job(fn)
        if background:
            self._background.append(job)
        else:
            self._queue.append(job)
        self._wakeup.set()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    async def write_each(
        self, fns: Sequence[Callable[[Any], T]], *, background: bool = False
    ) -> list[T | Exception]:
        """Run every step of ``fns`` in one transaction (one step of the group commit: a
        commit shared, where a step apiece awaited one after another cost a commit
        apiece); if that fails, each alone.  Each step's result, or the exception it or
        its commit raised, in its place."""
        try:
            return list(await self.write(lambda kv: [fn(kv) for fn in fns], background=background))
        except Exception:
            out: list[T | Exception] = []
            for fn in fns:  # one failed: the others still go
                try:
                    out.append(await self.write(fn, background=background))
                except Exception as e:
                    out.append(e)
            return out

    def write_now(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(kv)`` in a write transaction of its own, committed before returning, on
        the caller's thread; only for a store that is not durable.

        A non-durable commit is a few page writes with no sync, cheaper than the two task
        switches and the committer wake-up of :meth:`write`; group commit only pays when
        each commit waits for the disk.  Never called while a batch is open: the committer
        runs a non-durable store's batch to completion without yielding.

        Raises:
            StoreError: the store is durable, or the transaction could not be committed.
            Exception: whatever ``fn`` raised (its changes are rolled back).
        """
        if self.durable:
            raise StoreError("write_now would skip the sync of a durable store")
        with self._lock:
            self._new_dbs = {}
            txn = self._env.begin(write=True)
            try:
                result = fn(_LmdbKV(txn, self, True, self._dbs))
                txn.commit()
                self._published()
            except lmdb.Error as e:
                self._abort(txn)
                raise self._error(e) from e
            except BaseException:
                self._abort(txn)
                raise
            self.commits += 1
            self.batched_writes += 1
            return result

    async def committer(self) -> None:
        """Commit queued writes forever (run as a background task of the node)."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            batch = self._next_batch()
            if not batch:
                continue
            if self.durable:
                # The sync in a worker thread (module docstring): the event loop serves
                # reads and takes the next batch's writes meanwhile.
                await trio.to_thread.run_sync(self._run_batch, batch)
            else:
                self._run_batch(batch)
            for job in batch:
                job.done.set()

    def _next_batch(self) -> list[_Job]:
        """Every client step queued, and a few background steps (module docstring); the
        committer is woken again while background steps are left."""
        batch, self._queue = self._queue, []
        background = self._background
        for _ in range(min(len(background), BACKGROUND_SHARE if batch else BACKGROUND_BATCH)):
            batch.append(background.popleft())
        if background:
            self._wakeup.set()
        return batch

    @property
    def queued(self) -> tuple[int, int]:
        """Client and background steps waiting for a batch."""
        return len(self._queue), len(self._background)

    def _run_batch(self, batch: list[_Job]) -> None:
        with self._lock:
            try:
                self._commit(batch, isolate=False)
            except _StepFailed:
                for job in batch:  # re-run each step alone so one failure hurts only itself
                    with contextlib.suppress(_StepFailed):
                        self._commit([job], isolate=True)

    def _commit(self, batch: list[_Job], *, isolate: bool) -> None:
        self._new_dbs = {}
        txn = self._env.begin(write=True)
        try:
            kv = _LmdbKV(txn, self, True, self._dbs)
            for job in batch:
                try:
                    job.result = job.fn(kv)
                except Exception as e:
                    if not isolate:
                        raise _StepFailed from e
                    job.error = self._error(e) if isinstance(e, lmdb.Error) else e
                    raise _StepFailed from e
            txn.commit()
            self._published()
            self.commits += 1
            self.batched_writes += len(batch)
        except _StepFailed:
            self._abort(txn)
            raise
        except lmdb.Error as e:
            self._abort(txn)
            err = self._error(e)
            for job in batch:
                job.error = err
        except BaseException:
            self._abort(txn)
            raise

    def _error(self, e: lmdb.Error) -> StoreError:
        """The store error for a failed step or commit (:func:`_store_error`).  A commit
        that fails aborts its transaction: the environment stays as the last commit left
        it, reads go on and the next commit may succeed (after a removal, say)."""
        # The disk within the reserve of full: the short write that ended the commit was
        # for want of space (a batch of writes each checked against the room left may not
        # fit together, and the pages free inside the file, which the room counts, are
        # not all usable: a big value needs a contiguous run, and the pages the last
        # commit freed are reused only after the next).
        try:
            st = os.statvfs(self.path)
            avail, disk = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
            short = avail < self.reserve_fraction * min(self.map_size, disk)
        except OSError:
            short = True
        return _store_error(e, disk_short=short)

    def _abort(self, txn: lmdb.Transaction) -> None:
        txn.abort()
        self._new_dbs = {}  # handles created in an aborted transaction are invalid

    def _published(self) -> None:
        """After a commit: the databases it created are open to every transaction."""
        if self._new_dbs:
            # A new table, not an update: open transactions keep the one they began with.
            self._dbs = {**self._dbs, **self._new_dbs}
            self._new_dbs = {}

    def size_bytes(self) -> int:
        """Bytes of the map in use (pages up to the last used one)."""
        info = self._env.info()
        return int((info["last_pgno"] + 1) * self._env.stat()["psize"])

    def used_bytes(self) -> int:
        """Bytes of the map that hold data now: the pages of every database's b-tree.

        Unlike :meth:`size_bytes` (the high-water mark, which never falls: LMDB reuses freed
        pages but does not give them back to the file system) this falls when versions are
        deleted; it is what the history pool's pressure is measured by.
        """
        dbs = self._dbs  # before the transaction begins (see ``_LmdbKV._dbs``)
        with self._env.begin() as txn:
            total = self._env.stat()
            pages = total["branch_pages"] + total["leaf_pages"] + total["overflow_pages"]
            for db in dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return int(pages * total["psize"])

    def used_recently(self, max_age: float = 0.25) -> int:
        """:meth:`used_bytes`, measured at most ``max_age`` seconds ago (a write's space
        check must not cost a scan of every database's statistics each time)."""
        now = time.monotonic()
        if now - self._used_at > max_age:
            self._used, self._used_at = self.used_bytes(), now
        return self._used

    def disk_room(self, *, fresh: bool = False) -> tuple[int, int]:
        """(bytes the store may still grow by on its disk, the disk's size): the pages
        free inside its file (LMDB reuses them) plus what the file system has available.
        Measured now but for :meth:`used_recently` (statvfs and the environment's info
        cost a system call each; ``fresh``: that too)."""
        st = os.statvfs(self.path)
        used = self.used_bytes() if fresh else self.used_recently()
        free_inside = max(0, self.size_bytes() - used)
        return free_inside + st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def fill(self, *, fresh: bool = False) -> Fill:
        """How full the store is, measured against its map and against its disk, the
        fuller of the two.  Against the map: the pages in use of ``map_size``.  Against
        the disk (which may fill first: six nodes' sparse maps on one small disk, or a disk
        shared with other files): of a capacity of the smaller of the map and the disk,
        all but the room left on the disk (:meth:`disk_room`) counts as used, so the
        ``data_fraction`` and ``pool_fraction`` rules keep the same share of room back
        whichever fills (issue 60).  ``fresh``: the pages in use measured now (else up to
        a quarter of a second ago, :meth:`used_recently`)."""
        used = self.used_bytes() if fresh else self.used_recently()
        by_map = Fill(used, self.map_size)
        room, disk = self.disk_room(fresh=fresh)
        capacity = min(self.map_size, disk)
        by_disk = Fill(max(0, capacity - room), capacity)
        return by_disk if by_disk.fraction > by_map.fraction else by_map

    def used_scaled(self, *, fresh: bool = False) -> int:
        """:meth:`fill` on the map's scale: bytes "in use" of ``map_size``, what the rules
        stated in shares of the map (``data_fraction``: new block versions refused;
        ``pool_fraction``: pressure; ``df``) compare, so that they hold for a disk that
        fills first too."""
        fill = self.fill(fresh=fresh)
        return max(fill.used, int(fill.fraction * self.map_size))

    def short_for_growth(self, *, fresh: bool = False) -> bool:
        """Whether Q/U updates that grow what the store holds are refused too: within
        :data:`FLOOR_SHARE` of the reserve, which is kept for removals.  (A removal's
        commit needs pages too - LMDB copies what it changes - and the pages it frees
        are reused only two commits later: a disk filled to its last byte takes no
        commit at all, so the floor is kept, not merely hoped for.)"""
        now = time.monotonic()
        if not fresh and now < self._far_until:
            return False  # (every client update asks: statvfs was 4 % of a busy node's CPU)
        fill = self.fill(fresh=fresh)
        floor = (1.0 - FLOOR_SHARE * self.reserve_fraction) * fill.capacity
        if floor - fill.used >= FAR_BYTES:
            self._far_until = now + FAR_SECONDS
        return fill.used >= floor

    def close(self) -> None:
        self._env.close()


class _StepFailed(Exception):
    """A step raised inside a batch; the batch is rolled back and re-run step by step."""
