"""Directory write-back (issue 33): creates whose close does not wait for the servers.

A pending create (``fs/writeback/creates.py``) is sent at its file's first flush or close, so a
close waits a round.  While this mount holds an **exclusive lease** on the directory
(``fs/leases.py``), no other client can read the directory without recalling the lease
first (``fsobjects.leases.guarded``), and the recall's release sends every pending create
of the directory before it (the release is a gated update).  So the close of a new file
may return at once and leave the create pending, with its content (inline in the create
when small, else blocks the mount keeps and writes when the create is sent):
:class:`WriteBack` decides that (:meth:`WriteBack.defer`) and sends each deferred create
by its *due* time in the background (:meth:`WriteBack.run`).

- **Due**: ``commit`` seconds after the close (mount option ``commit=``, ext4's 5 s), or
  the lease's end less a margin if sooner, so nothing deferred outlives the lease that
  hides it.  ``fsync`` of the file, or of the directory, sends at once, as do the calls
  that must follow a create (a listing, a read of the file, a rename of the name:
  ``CallOrder.before_call``).  A directory's ``fsync`` answers 0 only once its held-back
  entries are on a quorum (:meth:`WriteBack.sync_directory`); answered EIO, they are
  dropped, never sent again (docs/fs.md, "What EIO means").  A send nothing was answered
  about (the background one, an unmount's) keeps what it could not send, for later.  A
  reopen of the file is answered by the mount, and an unlink of the name waits with the
  create (``fs/writeback/unlinks.py``).
- **Bounds**: at most :data:`MAX_DEFERRED` creates and removals, and :data:`MAX_BYTES`
  of content, wait at once, files of at most :data:`MAX_FILE` (more close as before), and
  a close defers only while the lease has more than twice the margin left.  At the first
  bound the oldest held-back ones go early: a removal waits for it, a close does not
  (``room.py``).
- **A crash** of the mount loses the deferred creates (at most ``commit`` seconds of
  closes, the promise of a local file system); the servers hold what they held before
  them.  A mount cut off past its lease sends them when it can; a name another client made
  meanwhile is handled as for any pending create (the existing file is opened and the
  writes re-applied, ``fs/writeback/creates_update.py``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bftfs.fs.errors import FsError, Unavailable
from bftfs.fs.writeback.alarm import Alarm
from bftfs.fs.writeback.entries import (
    ENTRY_KINDS,
    send_entries,
    with_their_batches,
)
from bftfs.fs.writeback.room import Room
from bftfs.qu.timestamp import NARROW_OBJECTS

if TYPE_CHECKING:
    from bftfs.fs.leases import Leases
    from bftfs.fs.writeback.creates_update import PendingCreate

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PendingUnlink:
    """A removal answered to the kernel but not sent yet (``fs/writeback/unlinks.py`` makes and
    sends it; kept here, where it waits until due)."""

    parent: int
    name: bytes
    oid: int
    #: The time of the unlink (ns, client clock): the directory's and the object's ctime.
    now: int
    #: Set while a task sends it; the calls that need it wait for it.
    sending: trio.Event | None = None
    done: trio.Event = field(default_factory=trio.Event)


class Senders(Protocol):
    """How each kind of held-back work goes to the servers, and is dropped for good (given
    to :class:`WriteBack` at construction: ``HeldBack`` in ``fs/writeback/outbox.py``)."""

    async def send_creates(self, ps: list[PendingCreate]) -> None:
        """Send pending creates of one directory, together when it can
        (``CreateSends.send_deferred``; a no-op for one made or failed meanwhile)."""

    async def send_creates_in(self, parent: int) -> list[PendingCreate]:
        """Send the directory's pending creates now; those not made afterwards."""

    def drop_create(self, p: PendingCreate, e: FsError) -> None:
        """Drop a pending create for good (``CreateSends.give_up``)."""

    async def send_unlinks(self, us: list[PendingUnlink]) -> None:
        """Send held-back removals (``PendingUnlinks.send``)."""

    async def send_touches(self, parents: list[int]) -> None:
        """Send directories' held-back attributes (``DirAttrs.send``)."""

    def drop_touch(self, parent: int, e: FsError) -> None:
        """Drop a directory's held-back attributes for good (``DirAttrs.drop``)."""

    def drop_unlink(self, u: PendingUnlink, e: FsError) -> None:
        """Drop a held-back removal for good (``PendingUnlinks.drop``)."""

    async def send_entry(self, kind: str, update: Any) -> None:
        """Send a held-back entry update of ``kind`` (:data:`ENTRY_KINDS`)."""

    async def send_entries(self, kind: str, updates: list[Any]) -> None:
        """Send held-back entry updates of ``kind``, of one directory, together when the
        kind can (:data:`BATCHED_KIND`: ``PendingMkdirs.send_many``)."""

    def drop_entry(self, kind: str, update: Any, e: FsError) -> None:
        """Drop a held-back entry update of ``kind`` for good."""


#: Most creates and removals deferred at once.  A recall waits for them all to be sent,
#: six per update: at most about 170 updates, a second or two.  256 was reached in every
#: PostMark run (a create or removal every 10-20 ms for ``commit`` seconds) and the rest
#: went alone: 2 328 rounds against 1 926 with this bound in one run of 300 files /
#: 1 000 transactions.
MAX_DEFERRED = 1024
#: Largest file whose close may be deferred: past the inline limit its blocks wait in the
#: mount with the create (a source file, an object file), and are written when it is sent.
MAX_FILE = 1024 * 1024
#: Most bytes of content the deferred closes hold at once (more close as before).
MAX_BYTES = 32 * 1024 * 1024
#: Seconds before the lease's end by which a deferred create is sent.
LEASE_MARGIN = 3.0


def batch_size(max_objects: int) -> int:
    """Creates (or removals) of one directory sent in one update, for a cluster whose
    operations name at most ``max_objects`` (``fs.createmany``: the directory and its
    files).  One less would fit; two less lets another client's two-object update (a
    create in the directory) that meets a batch in flight repair it together with its
    own objects in one request, without splitting: 6 in a cluster of 8, 30 of 32."""
    return max_objects - 2


class WriteBack:
    """A mount's deferred creates and removals and the task that sends them when due."""

    def __init__(
        self,
        leases: Leases,
        commit: float,
        senders: Senders,
        *,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
        answers_eio: bool,
        deferral: Callable[[PendingCreate, bool], None] | None = None,
        batch: int = batch_size(NARROW_OBJECTS),
    ) -> None:
        """``commit``: seconds a closed create may wait.  ``senders``: how each kind of
        held-back work goes and is dropped.  ``spawn``: starts the background task that
        sends what is due (``Background.spawn``).  ``answers_eio``: whether an error of
        :meth:`sync_directory` is answered to the program (EIO): the entries it could not
        send are then dropped (docs/fs.md, "What EIO means"); False on a ``hard`` mount,
        which tries the call again and must find them.  ``deferral``: told each create
        that starts (True) or stops (False) waiting here, so the table of creates keeps
        apart those that do not (``CreateTable.undeferred_in``: the gate reads those, not
        every create of the directory).  ``batch``: per update, :func:`batch_size`."""
        self.leases = leases
        self.batch = batch
        self.commit = commit
        self._senders = senders
        self._spawn = spawn
        self.answers_eio = answers_eio
        self._deferral = deferral
        #: Deferred creates by object id: (create, due in trio time).
        self._due: dict[int, tuple[PendingCreate, float]] = {}
        #: The same by directory, in the order deferred: what a send needing one of them
        #: takes along (:meth:`deferred_in`) without reading the others (issue 62).
        self._due_in: dict[int, dict[int, PendingCreate]] = {}
        #: Their files' sizes when deferred (:data:`MAX_BYTES`), and their sum.
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        #: Deferred removals by object id: (removal, due in trio time).
        self._unlinks: dict[int, tuple[PendingUnlink, float]] = {}
        #: Directories whose own attributes wait (``fs/writeback/dirattrs.py``): directory
        #: -> due in trio time.
        self._touches: dict[int, float] = {}
        #: Other deferred entry updates by (kind, key): (update, due in trio time), sent
        #: kind by kind in the order of :data:`ENTRY_KINDS`.
        self._entries: dict[tuple[str, int], tuple[Any, float]] = {}
        #: Deferred creates whose file was opened again (:meth:`reopened`): when they
        #: were due, which their next deferral keeps.
        self._reopened: dict[int, float] = {}
        self._alarm = Alarm()
        self._running = False
        self.stats = leases.stats
        #: Most creates and removals held back at once (:data:`MAX_DEFERRED`; a test
        #: lowers it to reach it with a few files).
        self.max_deferred = MAX_DEFERRED
        #: Closes and removals at the bound asking for held-back ones to go (``room.py``).
        self._create_room = Room()
        self._unlink_room = Room()
        #: Deferred creates taken out to be sent, not answered yet (:meth:`writing_back`).
        self._writing: set[int] = set()

    def defer(self, p: PendingCreate, size: int) -> bool:
        """Whether the close of ``p``'s file, of ``size`` bytes, may return without sending
        it (module docstring); asks for the directory's exclusive lease when it is not
        held (a later close may then defer)."""
        if p.oid in self._due:
            return True
        left = self.leases.exclusive_left(p.parent)
        self.leases.want_exclusive(p.parent)
        if (
            left <= 2 * LEASE_MARGIN
            or self.held() >= self.max_deferred
            or size > MAX_FILE
            or self._bytes + size > MAX_BYTES
        ):
            return False
        due = self._due_time(left)
        self._due[p.oid] = (p, min(due, self._reopened.pop(p.oid, due)))
        self._due_in.setdefault(p.parent, {})[p.oid] = p
        self._sizes[p.oid] = size
        self._bytes += size
        if self._deferral is not None:
            self._deferral(p, True)
        self.stats["deferred"] += 1
        self._started(self._due[p.oid][1])
        return True

    def defer_unlink(self, u: PendingUnlink, *, reachable: bool = True) -> bool:
        """Whether removal ``u`` may wait: the directory is leased here exclusively for
        more than twice the margin, and so is the removed object when another client may
        reach it (``reachable``: the servers hold it), and the bound leaves room.  The
        leases it waits on are asked for by the caller (``PendingUnlinks.defer``).

        The object's own lease: another client may reach the file again by a name its
        kernel caches, without reading the directory; only that lease makes its open
        recall something here, which sends the removal first (else it opened it)."""
        left = self.leases.exclusive_left(u.parent)
        self.leases.taker.removes_in(u.parent)
        if reachable:
            left = min(left, self.leases.exclusive_left(u.oid))
        if left <= 2 * LEASE_MARGIN or self.held() >= self.max_deferred:
            return False
        self._unlinks[u.oid] = (u, self._due_time(left))
        self.stats["unlinks_deferred"] += 1
        self._started(self._unlinks[u.oid][1])
        return True

    def held(self) -> int:
        """Creates, removals, times and entry updates held back (``Outbox.unsent``)."""
        return len(self._due) + len(self._unlinks) + len(self._touches) + len(self._entries)

    async def room_for_unlink(self) -> None:
        """A removal is about to be held back (``fs/names/namespace.py``): at the bound
        (:attr:`max_deferred`), wait until the task takes the removals held back out to
        send them, six per ``fs.unlinkmany``, rather than send this one alone (``rm -rf``
        outruns their due time: each went at once past the bound, issue 62)."""
        if self.held() < self.max_deferred or not self._unlinks:
            return
        self.stats["unlink_room_waits"] += 1
        self._started()
        await self._unlink_room.wait()

    def room_for_create(self, parent: int) -> None:
        """A close is about to hold its create back in ``parent`` (``PendingCreates.defers``):
        at the bound, the oldest held-back creates go early, an update's worth, and the
        close goes on as before (``room.py``: the next closes find room)."""
        at_bound = self.held() >= self.max_deferred and bool(self._due)
        if not at_bound or self.leases.exclusive_left(parent) <= 2 * LEASE_MARGIN:
            return  # (the lease looked at only at the bound: every close comes here)
        self.stats["create_room_asks"] += 1
        self._create_room.hurry()
        self._started()

    def defer_entry(self, kind: str, key: int, parent: int, update: Any) -> bool:
        """Whether entry update ``update`` of ``kind`` (a mkdir, a rename) in directory
        ``parent`` may wait: the directory is leased here exclusively for more than twice
        the margin, and the bound leaves room."""
        left = self.leases.exclusive_left(parent)
        self.leases.want_exclusive(parent)
        if kind not in ENTRY_KINDS or left <= 2 * LEASE_MARGIN or self.held() >= self.max_deferred:
            return False
        self._entries[kind, key] = (update, self._due_time(left))
        self._started(self._entries[kind, key][1])
        return True

    def entry_sent(self, kind: str, key: int) -> None:
        """The entry update ``(kind, key)`` was taken or failed for good."""
        self._entries.pop((kind, key), None)

    def defer_touch(self, parent: int) -> bool:
        """Whether directory ``parent``'s own attributes may wait (``fs/writeback/dirattrs.py``):
        as for a removal, it is leased here exclusively for more than twice the margin."""
        left = self.leases.exclusive_left(parent)
        if left <= 2 * LEASE_MARGIN:
            return False
        self._started(self._touches.setdefault(parent, self._due_time(left)))
        return True

    def touch_sent(self, parent: int, *, again: bool = False) -> None:
        """Directory ``parent``'s attributes were sent, or its times went with a removal
        (``again``: they changed while sent, and are due at once)."""
        self._touches.pop(parent, None)
        if again:
            self._started(self._touches.setdefault(parent, trio.current_time()))

    def retry_unlink(self, u: PendingUnlink, after: float) -> None:
        """Removal ``u`` went unanswered: due again in ``after`` seconds."""
        self._unlinks[u.oid] = (u, trio.current_time() + after)
        self._started(self._unlinks[u.oid][1])

    def unlink_sent(self, oid: int) -> None:
        """The removal of ``oid`` was taken or dropped for good."""
        if self._unlinks.pop(oid, None) is not None:
            self._unlink_room.made()

    def _due_time(self, left: float) -> float:
        """When something deferred now is sent: ``commit`` from now, or the lease's end
        less the margin if sooner (nothing deferred outlives the lease that hides it)."""
        return trio.current_time() + min(self.commit, left - LEASE_MARGIN)

    def _started(self, due: float | None = None) -> None:
        """Something is held back, due at ``due`` (None: look at once)."""
        if not self._running:  # in the file system's background (fs/background.py)
            self._running = True
            self._spawn(self.run)
        self._alarm.due(due)

    def deferred(self, oid: int) -> bool:
        """Whether the create of ``oid`` waits past its close."""
        return oid in self._due

    def writing_back(self, oid: int) -> bool:
        """Whether the deferred create of ``oid`` is being sent by write-back now: a call
        about another entry of its directory commutes with it as with one still deferred
        (``CallOrder``), rather than waiting for its update (PostMark at b = 2: every
        lookup in the directory waited for the update in flight, ~65 ms)."""
        return oid in self._writing

    def deferred_in(self, parent: int, most: int) -> list[PendingCreate]:
        """Up to ``most`` of the creates of directory ``parent`` that wait past their close,
        the first deferred first (a send that must go takes them along: ``batch``)."""
        return list(itertools.islice(self._due_in.get(parent, {}).values(), most))

    def _undue(self, oid: int) -> tuple[PendingCreate, float] | None:
        """``oid``'s create waits here no longer (sent, reopened, dropped): its entry."""
        entry = self._due.pop(oid, None)
        if entry is None:
            return None
        p = entry[0]
        self._bytes -= self._sizes.pop(oid, 0)
        in_dir = self._due_in.get(p.parent)
        if in_dir is not None:
            in_dir.pop(oid, None)
            if not in_dir:
                del self._due_in[p.parent]
        if self._deferral is not None:
            self._deferral(p, False)
        return entry

    def deferred_creates(self) -> list[tuple[PendingCreate, int]]:
        """The creates waiting past their close, each with its file's size when deferred
        (read only: the mount's metrics and status, ``Outbox.held_back``)."""
        return [(p, self._sizes.get(oid, 0)) for oid, (p, _) in self._due.items()]

    def sent(self, oid: int) -> None:
        """The create of ``oid`` was made or failed for good (by whatever sent it)."""
        self._undue(oid)
        self._reopened.pop(oid, None)

    def reopened(self, oid: int) -> None:
        """The deferred create of ``oid`` has its file open again: it waits no longer
        for its due time but for its close, as a new file's create does (a write goes into
        its buffered content, not after a round).  Its next deferral keeps the due time it
        had, so reopening a file again and again does not hold its create back."""
        entry = self._undue(oid)
        if entry is not None:
            self._reopened[oid] = entry[1]

    async def run(self) -> None:
        """Send each deferred create when it is due (a background task for the mount's
        life; a send's failure is the pending create's, logged and retried there)."""
        while True:
            now = trio.current_time()
            # First the entry updates: what is made in them follows.
            if await send_entries(self._entries, self._senders, now, batch=self.batch):
                continue
            until = self._unlink_room.due_by(now, ())  # (a removal waits for room: all)
            gone = with_their_batches(self._unlinks.values(), until, self.batch)
            until = self._create_room.due_by(now, (at for _, at in self._due.values()), self.batch)
            due = with_their_batches(self._due.values(), until, self.batch)
            touched = [parent for parent, at in self._touches.items() if at <= now]
            if gone or due or touched:  # creates first: a removal may be of a file they make
                await self._send_due_creates(due)
                await self._send_unlinks(gone)
                await self._send_touches(touched)  # last: a removal sent may carry them
                continue
            times = [at for _, at in self._due.values()] + [at for _, at in self._unlinks.values()]
            times += self._touches.values()
            times += [at for _, at in self._entries.values()]
            nxt = min(times, default=None)
            await self._alarm.sleep_until(nxt if nxt is not None else float("inf"))

    async def _send_due_creates(self, due: list[PendingCreate]) -> None:
        """Send ``due`` an update's worth (``batch``) at a time, the others still
        deferred meanwhile: a call on one of their files goes on (a reopen is answered
        here, a removal cancels it) rather than waiting for the whole pass.  One
        reopened (due again at its close), cancelled or sent meanwhile is passed by."""
        chunk: list[PendingCreate] = []
        for p in due:
            entry = self._due.get(p.oid)
            if entry is None or entry[0] is not p:
                continue
            chunk.append(p)
            if len(chunk) == self.batch:
                await self._send_batches(chunk)
                chunk = []
        if chunk:
            await self._send_batches(chunk)

    async def send_all(self, parallel: int = 1) -> None:
        """Send every deferred removal and create now (unmount, ``fsync`` of a directory);
        ``parallel``: directories whose creates are sent at once (each directory's
        updates follow one another, as they change it; a tree's restore uses many)."""
        await send_entries(self._entries, self._senders, float("inf"), batch=self.batch)
        await self._send_batches([p for p, _ in self._due.values()], parallel)
        await self._send_unlinks([u for u, _ in self._unlinks.values()])
        await self._send_touches(list(self._touches))

    async def send_held_in(self, parent: int) -> list[PendingCreate]:
        """Send every entry change held back in ``parent``; the creates not made after."""
        await send_entries(self._entries, self._senders, float("inf"), parent, self.batch)
        creates = await self._senders.send_creates_in(parent)
        await self._send_unlinks([u for u, _ in list(self._unlinks.values()) if u.parent == parent])
        return creates

    async def sync_directory(self, parent: int) -> None:
        """``fsync`` of directory ``parent``: send its held-back entries now (the mkdirs and
        renames in it, its creates - deferred or kept after a failed send - its removals
        and times) and answer 0 only once every one of them is on a quorum.

        Raises:
            Unavailable: some could not be sent (the cluster did not answer) or failed
                for good.  When that is answered EIO (:attr:`answers_eio`), those entries
                are dropped: never sent again by this mount (docs/fs.md, "What EIO
                means"); else (a ``hard`` mount's retry) they stay held back.
        """
        creates = await self.send_held_in(parent)
        if parent in self._touches:
            await self._send_touches([parent])
        entries = [(k, u) for (k, _), (u, _) in self._entries.items() if u.parent == parent]
        unlinks = [u for u, _ in self._unlinks.values() if u.parent == parent]
        touched = parent in self._touches
        if not (creates or entries or unlinks or touched):
            return
        names = [p.name for p in creates] + [getattr(u, "name", u) for _, u in entries]
        names += [u.name for u in unlinks]
        e = Unavailable(
            f"directory {parent}: {len(names) + touched} held-back change(s) not on a quorum "
            f"({names[:5]!r}{' ...' if len(names) > 5 else ''})"
        )
        if self.answers_eio:
            self._drop(creates, entries, unlinks, parent if touched else None, e)
        raise e

    def _drop(
        self,
        creates: list[PendingCreate],
        entries: list[tuple[str, Any]],
        unlinks: list[PendingUnlink],
        touched: int | None,
        e: FsError,
    ) -> None:
        """Drop what a directory ``fsync`` answered EIO for (:meth:`sync_directory`)."""
        log.warning("directory fsync answered EIO, its held-back changes dropped: %s", e)
        for p in creates:
            self.sent(p.oid)
            self._senders.drop_create(p, e)
        for kind, u in entries:
            self._senders.drop_entry(kind, u, e)
        for u in unlinks:
            self._unlinks.pop(u.oid, None)
            self._senders.drop_unlink(u, e)
        if touched is not None:
            self.touch_sent(touched)
            self._senders.drop_touch(touched, e)

    async def _send_touches(self, parents: list[int]) -> None:
        if not parents:
            return
        for parent in parents:  # (one the cluster does not answer is put back)
            self._touches.pop(parent, None)
        try:
            await self._senders.send_touches(parents)
        except Exception as e:  # noqa: BLE001 - a background task must go on
            log.warning("write-back of directory times %s: %s", parents, e)
            for parent in parents:
                self._touches.setdefault(parent, trio.current_time() + LEASE_MARGIN)

    async def _send_unlinks(self, us: list[PendingUnlink]) -> None:
        if not us:
            return
        for u in us:  # (one the cluster does not answer is put back: retry_unlink)
            self._unlinks.pop(u.oid, None)
        self._unlink_room.made()  # a removal waiting for room goes on meanwhile
        try:
            await self._senders.send_unlinks(us)
            self.stats["unlinks_written_back"] += len(us)
        except Exception as e:  # noqa: BLE001 - a background task must go on
            log.warning("write-back of removals %s: %s", [u.name for u in us], e)
            for u in us:
                if not u.done.is_set():
                    self.retry_unlink(u, LEASE_MARGIN)

    async def _send_batches(self, ps: list[PendingCreate], parallel: int = 1) -> None:
        """Send ``ps``, each directory's together (``CreateSends.send_deferred`` puts
        ``batch`` in one update), ``parallel`` directories at a time."""
        by_dir: dict[int, list[PendingCreate]] = {}
        for p in ps:
            if self._undue(p.oid) is not None:
                self._writing.add(p.oid)
            by_dir.setdefault(p.parent, []).append(p)

        async def one(group: list[PendingCreate], limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                try:
                    await self._senders.send_creates(group)
                    self.stats["written_back"] += len(group)
                except Exception as e:  # noqa: BLE001 - a background task must go on
                    log.warning("write-back of %s: %s", [p.name for p in group], e)
                finally:
                    self._writing.difference_update(p.oid for p in group)

        if parallel <= 1 or len(by_dir) <= 1:
            for group in by_dir.values():
                await one(group, trio.CapacityLimiter(1))
            return
        limiter = trio.CapacityLimiter(parallel)
        async with trio.open_nursery() as nursery:
            for group in by_dir.values():
                nursery.start_soon(one, group, limiter)
