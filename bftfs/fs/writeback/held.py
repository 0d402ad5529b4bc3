"""Files this mount holds an exclusive lease on: opens, attributes and closes without a round.

A regular file created by directory write-back under the directory's exclusive lease comes
leased to this mount exclusively too, until the same end (``fsobjects.leases.INHERIT``,
:meth:`Leases.inherit`; renewed on use).  While that lease runs no other client can read
or change the file without recalling it first (``fsobjects.leases.guarded`` and
``leased``), so what the mount knows of it is the file.  A file the mount did not make
is held the same way once it asked for an exclusive lease on it (after a few closes that
sent their writes at once: :meth:`HeldFiles.want`), but only from a state read since the
holding began (:meth:`HeldFiles.holds_current`):

- **Kept**: at its last close the file's state (:class:`OpenFile`: attributes, content of
  a small file, clean blocks) stays in the mount (at most :data:`MAX_KEPT` files and
  :data:`MAX_KEPT_BYTES`, the least recently closed go first), so a later ``open`` is
  answered without the ``fs.open`` round (close-to-open holds: nobody else can have
  changed it) and ``stat`` from it (``Names.getattr``).
- **Written back**: the close of a file with buffered writes returns at once; they are sent
  ``commit`` seconds later (the mount option of directory write-back), or before the
  lease's end less a margin if sooner, at ``fsync``, before any other call of this mount
  on the file (the gate: ``CallOrder.before_call``), before the lease is released (a
  recall: the release is a gated update on the file) and at unmount.  A reopen writes
  into the same buffered state.  Bounds as for deferred creates: files of at most
  :data:`bftfs.fs.writeback.schedule.MAX_FILE`, at most
  :data:`bftfs.fs.writeback.schedule.MAX_BYTES` buffered at once.
- **Unseen files** (``leases/unseen.py``): a file this mount made under its directory's
  exclusive lease, held without a break since, and never named elsewhere, is reached by
  no other client but through the directory, whose recall's release sends first what is
  held back for it (:meth:`HeldFiles.before` on ``fs.release``).  Its close may hold its
  writes back under the directory's lease alone, the file's own lease let end
  (``Taker.lapses``), due before the directory's lease ends less the margin (issue 64:
  PostMark's appends, one per file every few seconds, each went as an ``fs.write``).
  Also while it still holds its own lease, when that may lapse (its directory's removals
  wait in write-back, ``Taker.lapses``): held back under its own, the file counted as
  written and the held files' sweep renewed its lease, which held the next append back
  again (PostMark 2 000 / 100 000: 10 033 file leases renewed, a seventh of the rounds).
- **A crash** of the mount loses the writes of the last ``commit`` seconds that no
  ``fsync`` covered, as a local file system's crash does; the servers keep the file as
  it was before them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from bftfs.fs.files import OpenFile
from bftfs.fs.leases import Leases
from bftfs.fs.writeback.alarm import Alarm
from bftfs.fs.writeback.schedule import LEASE_MARGIN, MAX_BYTES, MAX_FILE

log = logging.getLogger(__name__)

#: Closed files whose state the mount keeps while it holds them: about 2.3 KB each besides
#: their content (which :data:`MAX_KEPT_BYTES` bounds), 38 MB at most.  At 1 024, a
#: PostMark of 2 000 files forgot half of them between two uses, and every such open cost
#: its ``fs.open`` round (22 835 of 100 000 transactions, 128 tx/s against 1 000 files'
#: 520: issue 62, the work must not grow with the objects a client holds).
MAX_KEPT = 16384
#: Bytes of content and clean blocks the kept files hold at most (the least recently
#: closed go first).
MAX_KEPT_BYTES = 64 * 1024 * 1024
#: Failed sends of one file's writes after which write-back stops trying (they stay
#: buffered for its next close, ``fsync`` or the unmount).
MAX_FAILURES = 3
#: Files not yet due that may fill an update of files due now (``fs.writemany`` takes
#: eight objects).
FILL = 7
#: Terms since its last use during which a held file's lease is kept.
RENEW_TERMS = 3
#: Terms since its last held-back write during which a held file's lease is renewed as
#: exclusive (its next close may be held back again); a file used but not written that
#: long has its lease turned into a session-bound shared one (``Leases.to_session``).
WRITE_TERMS = 1
#: Files written back alone at once (each a round or three: one file's wait does not
#: hold the others back past their lease).
SENDERS = 4


class HeldFiles:
    """The exclusively leased files of one mount: kept when closed, their writes sent when
    due by a background task (module docstring)."""

    def __init__(
        self,
        leases: Leases,
        commit: float,
        files: dict[int, OpenFile],
        flush: Callable[[OpenFile], Awaitable[None]],
        flush_many: Callable[[list[OpenFile]], Awaitable[set[int]]] | None = None,
        *,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        """``files``: the mount's open and cached files (``MetadataCache.files``), where a
        kept file stays; ``flush``: sends a file's buffered writes (``Handles._flush_file``);
        ``flush_many``: sends several small files' at once, answering those it sent
        (``fs/writeback/writemany.py``); ``spawn``: starts a background task (the write-back
        and lease-renewal sweeps: ``Background.spawn``)."""
        self.leases = leases
        self.commit = commit
        self.files = files
        self._flush = flush
        self._flush_many = flush_many
        self._spawn = spawn
        #: Closed files kept, least recently closed first, with the bytes each keeps.
        self._kept: OrderedDict[int, int] = OrderedDict()
        self._kept_bytes = 0
        #: Files whose buffered writes wait past their close: due time (trio).
        self._due: dict[int, float] = {}
        #: Files being sent (their own calls pass the gate).
        self._sending: set[int] = set()
        #: Sends of a file that failed in a row.
        self._failures: dict[int, int] = {}
        self._alarm = Alarm()
        self._running = False
        #: Files used (opened, closed): when last (trio), for the sweep (:meth:`renew_used`).
        self._used: dict[int, float] = {}
        #: Files whose close held writes back: when last (trio).
        self._written: dict[int, float] = {}
        #: Files of :attr:`_due` held back under their directory's exclusive lease alone
        #: (unseen, ``leases/unseen.py``) -> that directory, whose release sends them first.
        self._under: dict[int, int] = {}
        self._renewing = False
        self.stats = leases.stats
        #: Closed files kept at most (:data:`MAX_KEPT`; a test lowers it to reach it with
        #: a few files).
        self.max_kept = MAX_KEPT

    def holds(self, ino: int) -> bool:
        """Whether this mount holds ``ino`` exclusively for more than twice the margin."""
        return self.leases.exclusive_left(ino) > 2 * LEASE_MARGIN

    def holds_current(self, f: OpenFile) -> bool:
        """Whether this mount holds ``f`` (:meth:`holds`) and ``f``'s state is the file's:
        it made the file under the lease, or read its state since the holding began
        (another client may have written it before: its open here must not answer from
        what the mount knew then, close-to-open)."""
        since = self.leases.exclusive_from(f.ino)
        return since is not None and f.adopted >= since and self.holds(f.ino)

    def current(self, f: OpenFile) -> bool:
        """Whether ``f``'s kept state is the file's: held as :meth:`holds_current` says, or,
        clean, under a lease of any kind held without a break since the state was read
        (one turned into a session-bound shared lease, :meth:`renew_used`): nobody else
        changed the file meanwhile, so an ``open`` may still answer from it (what is
        written then goes at the close: only an exclusive lease holds writes back); or,
        clean, a file no other client can have seen (``leases/unseen.py``), whose lease
        may have ended (``Taker.lapses``), clean or with writes held back under its
        directory's lease (:meth:`defer`)."""
        if self.holds_current(f):
            return True
        if f.ino in self._under and f.ino not in self._sending and self.unseen_in(f) is not None:
            return True  # nobody else can have seen or changed it (``leases/unseen.py``)
        if f.dirty or f.ino in self._due or f.ino in self._sending:
            return False
        if self.leases.unseen.directory_of(f.ino) is not None:
            return True  # nobody else can have changed it (``leases/unseen.py``)
        return self.leases.remaining(f.ino, f.adopted) > 0  # (nothing to send before it ends)

    def unseen_in(self, f: OpenFile) -> int | None:
        """The directory of ``f`` when no other client can have seen it
        (``leases/unseen.py``) and it is a regular file with that one name, else None:
        its writes may then wait on that directory's exclusive lease alone (another
        client reaches it only by reading the directory, which recalls that lease)."""
        parent = self.leases.unseen.directory_of(f.ino)
        if parent is None or f.st.get("k", "f") != "f" or f.st.get("nl", 1) != 1:
            return None
        return parent

    def want(self, f: OpenFile) -> None:
        """A close of ``f`` sent its writes at once, as the mount does not hold it: ask
        for an exclusive lease after a few (:meth:`Leases.want_exclusive_file`), unless
        ``f`` is past :data:`MAX_FILE`, which the mount would not keep even then (such a
        lease would only cost its round and hold other clients' looks off until recalled)."""
        if f.size <= MAX_FILE:
            self.leases.want_exclusive_file(f.ino)

    def reopen(self, ino: int) -> OpenFile | None:
        """The kept state of ``ino`` for an ``open`` answered without a round, or None.
        None for a file removed here (no link left): the kernel reached it by a name it
        cached, now stale, which the open's round refuses (``StaleNames.check_reached``)."""
        f = self.files.get(ino)
        if f is None or f.behind_error is not None or not self.current(f) or f.st.get("nl") == 0:
            return None
        self._unkeep(ino)
        self._use(ino)
        self.stats["held_opens"] += 1
        return f

    def _use(self, ino: int) -> None:
        """``ino`` is in use: its lease is renewed by the sweeps (:meth:`renew_used`)."""
        self._used[ino] = trio.current_time()
        if not self._renewing:
            self._renewing = True
            self._spawn(self.renew_used)

    def _unkeep(self, ino: int) -> None:
        self._kept_bytes -= self._kept.pop(ino, 0)

    def keep(self, f: OpenFile, *, used: bool = True) -> bool:
        """Whether the closed ``f`` stays in the mount (it is held); the least recently
        closed clean file beyond :data:`MAX_KEPT`, or no longer held, is forgotten.
        ``used``: its close is a use of the file (its write-back is not)."""
        if f.size > MAX_FILE or not self.current(f):
            return False
        self._unkeep(f.ino)
        if used:
            self._use(f.ino)
        self._kept[f.ino] = f.clean_bytes
        self._kept_bytes += f.clean_bytes
        while len(self._kept) > self.max_kept or self._kept_bytes > MAX_KEPT_BYTES:
            self._forget(next(iter(self._kept)))
        return f.ino in self._kept

    def _sent(self, f: OpenFile) -> None:
        """``f``'s buffered writes went: closed and clean, it is kept as a file closed
        clean is (one closed with writes is not kept at its close; forgotten here, its
        next open cost a round while the mount still held it), or else forgotten."""
        if f.opens == 0 and not f.dirty and not self.keep(f, used=False):
            self._forget(f.ino)

    def _forget(self, ino: int) -> None:
        self._unkeep(ino)
        f = self.files.get(ino)
        if f is not None and f.opens == 0 and not f.dirty and ino not in self._due:
            del self.files[ino]

    def defer(self, f: OpenFile) -> bool:
        """Whether the close of ``f`` may leave its buffered writes to write-back."""
        if f.ino in self._due:
            return True
        left = self.leases.exclusive_left(f.ino)
        own = self.holds_current(f)
        under = self.unseen_in(f) if not own or self.leases.taker.lapses(f.ino) else None
        if under is not None:  # unseen: on the directory's lease (module docstring)
            self.leases.want_exclusive(under)  # (renewed ahead of its end, as for removals)
            parent_left = self.leases.exclusive_left(under)
            if parent_left > 2 * LEASE_MARGIN:
                left = parent_left
            else:
                under = None  # (held back under its own lease, if it holds one)
        if under is None and not own:
            return False
        if (
            f.size > MAX_FILE
            or f.behind is not None
            or sum(self.files[i].dirty_bytes for i in self._due if i in self.files) + f.dirty_bytes
            > MAX_BYTES
        ):
            return False
        self._use(f.ino)
        self._written[f.ino] = trio.current_time()
        self._due[f.ino] = trio.current_time() + min(self.commit, left - LEASE_MARGIN)
        if under is not None:
            self._under[f.ino] = under
            self.stats["held_closes_unseen"] += 1
        self.stats["held_closes"] += 1
        if not self._running:  # in the file system's background (fs/background.py)
            self._running = True
            self._spawn(self.run)
        self._alarm.due(self._due[f.ino])
        return True

    def discard(self, ino: int) -> bool:
        """A removal of the last name of held, closed ``ino`` is about to be deferred: its
        buffered writes are dropped with its kept state, as a local file system drops
        dirty pages of a file deleted before they were written (nobody can read them: no
        name leads to the file, no handle has it open, and while the lease lives nobody
        else has the file).  Whether it did."""
        f = self.files.get(ino)
        if (
            f is None
            or f.opens
            or ino in self._sending
            or f.st.get("nl") != 1
            or (self.leases.exclusive_left(ino) <= 0 and self.unseen_in(f) is None)
        ):
            return False
        self._due.pop(ino, None)
        self._under.pop(ino, None)
        self._used.pop(ino, None)
        self._written.pop(ino, None)
        self._unkeep(ino)
        del self.files[ino]
        self.stats["held_discarded"] += 1
        return True

    # The gate ----------------------------------------------------------------------------

    def holds_back(self) -> bool:
        return bool(self._due)

    def due_files(self) -> set[int]:
        """The files whose writes are held back and due (``Outbox.unsent``)."""
        return set(self._due)

    async def before(self, objects: list[int], method: str = "") -> None:
        """Send the buffered writes of the held files among ``objects`` (a call of this
        mount on them, or their lease's release, must follow them); for the release of a
        directory (``fs.release``: recalled, or given up) or its publication
        (``fs.publish``), also those of the unseen files held back under its lease
        (:meth:`defer`): another client reads the directory next, and may open them.  A
        release also waits for the sends in flight of the
        files it must follow (it is what another client's recall waits for)."""
        due = [i for i in objects if i in self._due and i not in self._sending]
        due = [i for i in due if not self._flushing_here(i)]
        await self._send_together(due)  # (a publication's 32 files: one update, not 32)
        for ino in due:
            if ino in self._due and ino not in self._sending:
                await self._send(ino)
        if method not in ("fs.release", "fs.publish"):  # (a publication: leases/publish.py)
            return
        dirs = set(objects)
        under = [ino for ino, parent in self._under.items() if parent in dirs]
        under += [  # (held on their own lease, ended early: as safe to send now)
            ino
            for ino in self._due
            if ino not in self._under and self.leases.unseen.directory_of(ino) in dirs
        ]
        if not under:
            return
        self.stats["held_sent_for_release"] += len(under)
        await self._send_together([ino for ino in under if ino in self._due])
        for ino in under:
            f = self.files.get(ino)
            if ino in self._sending and f is not None and not self._flushing_here(ino):
                async with f.lock:  # a send in flight holds the file's lock: its end
                    pass
            if ino in self._due and ino not in self._sending:
                await self._send(ino)

    def _flushing_here(self, ino: int) -> bool:
        """Whether the calling task is inside a flush of ``ino`` (it holds the file's
        lock): its update is how the writes go, not a call that must follow them (an open
        of a file whose lease ended flushes it first; sending it again from the gate
        would take the lock twice)."""
        f = self.files.get(ino)
        return f is not None and f.lock.statistics().owner is trio.lowlevel.current_task()

    # Sending -----------------------------------------------------------------------------

    async def _send(self, ino: int) -> None:
        self._due.pop(ino, None)
        f = self.files.get(ino)
        if f is None:
            return
        self._sending.add(ino)
        try:
            await self._flush(f)
            self.stats["held_written_back"] += 1
            self._failures.pop(ino, None)
            if ino not in self._due:
                self._under.pop(ino, None)
        except BaseException:
            # Kept buffered and due again shortly, a few times (a file removed meanwhile
            # may refuse them for good: its writes are then dropped with the warning).
            self._failures[ino] = self._failures.get(ino, 0) + 1
            if f.dirty and self._failures[ino] < MAX_FAILURES:
                self._due[ino] = trio.current_time() + LEASE_MARGIN
                self._alarm.due(self._due[ino])
            raise
        finally:
            self._sending.discard(ino)
        self._sent(f)

    async def run(self) -> None:
        """Send each file's writes when due (a background task for the mount's life; a
        failure is logged and the file tried again a margin later, its writes kept)."""
        while True:
            now = trio.current_time()
            due = [ino for ino, at in self._due.items() if at <= now]
            if due:
                # The files come due one at a time, as they were closed: the next ones
                # fill the update that must go (sent a little early, never late).
                later = sorted((at, ino) for ino, at in self._due.items() if at > now)
                await self._send_together(due + [ino for _, ino in later[:FILL]])
            async with trio.open_nursery() as nursery:
                limit = trio.Semaphore(SENDERS)
                for ino in due:
                    if ino in self._due:  # not sent together
                        nursery.start_soon(self._send_logged, ino, limit)
            if due:
                continue
            await self._alarm.sleep_until(min(self._due.values(), default=float("inf")))

    async def _send_logged(self, ino: int, limit: trio.Semaphore) -> None:
        async with limit:
            try:
                await self._send(ino)
            except Exception as e:  # noqa: BLE001 - a background task must go on
                log.warning("write-back of file %d: %s", ino, e)

    async def renew_used(self) -> None:
        """Every third of a lease's term, keep the leases of the held files this mount
        still has and used within the last :data:`RENEW_TERMS` terms.  Renewed one at a
        time on use, a file used less often than its term (PostMark's 1 000 files over a
        minute) lost its lease between two uses, and every later use cost its rounds
        again: without a lease its opens, closes and lookups go to the servers.  Those
        written within :data:`WRITE_TERMS` (or with writes still to send) are renewed as
        exclusive, together (eight per update: a directory's files share a quorum); the
        others need no exclusive lease (nothing is held back for them) and are turned
        into shared leases bound to the session once (seven per update), which then cost
        nothing per file (issue 62: a tree just unpacked, read by ``grep`` and ``git
        add`` a minute later, cost every file a renewal per third of a term); one a
        removal asked back (``Claims.reclaim``) is not bound for a term, and
        is renewed as exclusive with the busy ones.  A file left unused that long lets its
        exclusive lease end (an idle mount stops renewing); a bound one goes when its tree
        is idle (``fs/leases/holdings.py``)."""
        while True:
            await trio.sleep(self.leases.term / 3)
            now = trio.current_time()
            since = now - RENEW_TERMS * self.leases.term
            for ino, at in list(self._used.items()):
                if at < since or ino not in self.files or self.leases.remaining(ino, now) <= 0:
                    del self._used[ino]
                    self._written.pop(ino, None)
            written = now - WRITE_TERMS * self.leases.term
            busy, idle = [], []
            for ino in self._used:
                if self._lapses_under_directory(ino):
                    continue  # (its writes wait on its directory's lease: let its own end)
                if not self._writing(ino, written) and self.leases.exclusive_left(ino) > 0:
                    if self.leases.taker.lapses(ino):
                        continue  # (nothing of it needs its lease: let it end)
                    idle.append(ino)
                else:
                    busy.append(ino)  # (renewed; one bound already: counted as used)
            if idle and self.leases.to_session(idle) < len(idle):
                busy += [ino for ino in idle if self.leases.exclusive_left(ino) > 0]
            self.leases.renew(busy)

    def _lapses_under_directory(self, ino: int) -> bool:
        """Whether held file ``ino``'s exclusive lease may end though it is written: no
        other client can have seen it and its directory's removals let it lapse
        (``Taker.lapses``), and nothing of it waits on that lease (its held-back writes,
        if any, wait on the directory's: :meth:`defer`).  Renewed as busy, each of
        PostMark's files cost a grant per sweep that its appends no longer need."""
        if ino in self._sending or not self.leases.taker.lapses(ino):
            return False
        if ino in self._due:
            return ino in self._under
        f = self.files.get(ino)
        return f is not None and f.opens == 0 and not f.dirty

    def _writing(self, ino: int, since: float) -> bool:
        """Whether held file ``ino`` has writes to send or had some held back since
        ``since``: its exclusive lease is worth renewing."""
        if ino in self._due or ino in self._sending or self.files[ino].dirty:
            return True
        return self._written.get(ino, float("-inf")) >= since

    async def send_all(self) -> None:
        """Send every held file's writes now (unmount, ``fsync`` of a directory)."""
        await self._send_together(list(self._due))
        for ino in list(self._due):
            await self._send(ino)

    async def _send_together(self, due: list[int]) -> None:
        """Send the small ones of ``due`` several per update (``flush_many``); the others,
        and any it could not send, stay due for :meth:`_send`."""
        files = [self.files[i] for i in due if i in self.files and i not in self._sending]
        if self._flush_many is None or len(files) < 2:
            return
        inos = [f.ino for f in files]
        self._sending.update(inos)
        try:
            written = await self._flush_many(files)
        finally:
            self._sending.difference_update(inos)
        for ino in written:
            self._due.pop(ino, None)
            self._under.pop(ino, None)
            self._failures.pop(ino, None)
            self.stats["held_written_back"] += 1
            self.stats["held_written_together"] += 1
            f = self.files.get(ino)
            if f is not None:
                self._sent(f)
