"""Sending pending creates (``fs/writeback/creates.py``): once, whoever needs them first;
together when directory write-back deferred several (one ``fs.createmany``); again in
the background while the cluster does not answer; then the writes of a file closed
meanwhile.  A create a call answered EIO for is dropped instead (:meth:`CreateSends.give_up`,
docs/fs.md "What EIO means"): the background resends are for what nothing reported.

A call of another task waits for a create being sent; a call made while sending it (or
another one) goes on, so two sends never wait for each other.  What a send found out
goes to the table of creates below it (:class:`~bftfs.fs.writeback.creates_table.CreateTable`):
made (no longer pending), failed for good (its flush and close say why), or pending again
with a resend time (``RESEND_FIRST`` doubling up to ``RESEND_MAX``).  Each create is made
by :class:`~bftfs.fs.writeback.creates_update.CreateSender`, below that.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import trio

from bftfs.fs.caches import MetadataCache
from bftfs.fs.errors import FsError, NoSpace, Unavailable
from bftfs.fs.files.flush import FlushEngine
from bftfs.fs.writeback.creates_table import CreateTable
from bftfs.fs.writeback.creates_update import CreateSender, PendingCreate
from bftfs.fs.writeback.schedule import batch_size
from bftfs.qu.timestamp import NARROW_OBJECTS

log = logging.getLogger(__name__)

#: After a send of a pending create fails for want of a quorum, other calls on its
#: directory go on without sending it again for this long (seconds), doubling per failure
#: up to :data:`RESEND_MAX`; the file's own flush, fsync and close always send it.
RESEND_FIRST = 1.0
RESEND_MAX = 30.0
#: Seconds after its close a file whose create waits is no longer in use: a reader's
#: publication then makes it without this mount's lease (:meth:`CreateSends.send_deferred`),
#: as a publication hands over a held object not used for ``leases.publish.IDLE``.
CLOSED_IDLE = 1.0


class CreateSends:
    """How pending creates are sent (module docstring); the creates themselves are
    ``creates``' (the pending, failed and moved ones), each made by ``sender``."""

    def __init__(
        self,
        creates: CreateTable,
        sender: CreateSender,
        cache: MetadataCache,
        engine: FlushEngine,
        *,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        """``spawn``: starts a background task (a create's resends while the cluster does
        not answer: ``Background.spawn``)."""
        self.creates = creates
        self._spawn = spawn
        self.sender = sender
        self.cache = cache
        self.engine = engine
        #: Tasks sending a pending create now (they never wait for another one: no deadlock).
        self._senders: set[trio.lowlevel.Task] = set()

    async def send_one(self, p: PendingCreate) -> None:
        """Send ``p`` because a call needs it; one directory write-back deferred goes with
        the next deferred creates of its directory, an update's worth (the next calls
        would need them one by one: a program reopening the files it just wrote)."""
        wb = self.creates.writeback
        if wb is None or not wb.deferred(p.oid):
            await self.send(p)
            return
        others = [q for q in wb.deferred_in(p.parent, wb.batch) if q is not p]
        await self.send_deferred([p, *others[: wb.batch - 1]])

    async def send(self, p: PendingCreate, *, quiet: bool = True, kept: bool = False) -> None:
        """Make ``p`` on the servers, once: a call of another task waits for it, a call
        made while sending it (or another one: no circular wait) goes on.  Failures reach
        the file's flush and close (``_failed``, or pending again if the cluster was
        unavailable); ``quiet``: a call on the directory goes on after logging them.
        ``kept``: this task kept ``p`` from a batch that failed (:meth:`_send_together`),
        the calls waiting for it still waiting: it sends ``p`` alone now."""
        me = trio.lowlevel.current_task()
        if p.sender is not None and not (kept and p.sender is me):
            if p.sender is not me and me not in self._senders:
                await p.done.wait()
            return
        if self.creates.pending_of(p.oid) is not p:
            if kept:
                self._sent(p, settled=False)
            return
        p.sender = me
        self._senders.add(me)
        settled = False  # made, or failed for good (else pending again)
        made = False
        try:
            await self.sender.send_now(p)
            settled = made = True
        except Unavailable as e:  # the cluster did not answer: try again at the next flush
            p.failures += 1
            wait = min(RESEND_MAX, RESEND_FIRST * 2 ** min(p.failures - 1, 16))
            p.resend_at = trio.current_time() + wait
            if p.failures == 1:
                self._spawn(functools.partial(self._resend_later, p))
            if not quiet:
                raise
            log.warning("pending create of %r not sent yet (again in %g s): %s", p.name, wait, e)
        except FsError as e:
            settled = True
            self.creates.fail(p, e)
            log.warning("create of %r failed when sent: %s", p.name, e)
        finally:
            self._senders.discard(me)
            self._sent(p, settled=settled)
        if made:
            await self._write_back_closed(p)
        elif settled and not self.creates.open_here(p.oid):
            self.creates.abandon(p.oid)  # closed already (a resend): nothing will release it

    async def send_deferred(self, ps: list[PendingCreate], *, hand_over_left: bool = False) -> None:
        """Send creates directory write-back deferred past their files' close
        (``fs/writeback/schedule.py``), all of one directory: together in one ``fs.createmany``
        when they can be, else (or when that fails) each alone; a closed file made clean
        is then forgotten, as a close forgets it.

        ``hand_over_left``: they go for a reader's first look at the directory (the gate
        of ``fs.publish``, ``leases.publish.FIRST_LOOK``).  A small file closed longer than
        :data:`CLOSED_IDLE` ago is then made without this mount's lease, as a publication
        hands over a file not in use (``leases/publish.py``): the reader's listing reads
        every entry's attributes, and each file leased here refused it until a publication
        of its own (1 000 files made on one mount, which went on working there, listed on
        another: 5 500 requests to publish, 5 s)."""
        together = [p for p in ps if self._sendable_together(p)]
        handed = self._idle_small(together) if hand_over_left else set()
        made: set[int] = set()
        #: Creates of a batch that failed: still this task's (their waiters wait) until
        #: each is sent alone below.
        kept: set[PendingCreate] = set()
        wb = self.creates.writeback
        width = batch_size(NARROW_OBJECTS) if wb is None else wb.batch
        try:
            for inherit in (False, True):
                group = [p for p in together if (p.oid in handed) != inherit]
                for i in range(0, len(group), width):
                    # Again at each batch: the batches before it waited, and meanwhile
                    # another task (a publication, a listing) sent some alone or forgot
                    # their files.
                    batch = [p for p in group[i : i + width] if self._sendable_together(p)]
                    if len(batch) > 1:
                        if await self._send_together(batch, inherit=inherit):
                            made.update(p.oid for p in batch)
                        else:
                            kept.update(batch)
            await self._handed_over(sorted(handed & made))
            for p in ps:
                if p.oid not in made:
                    mine = p in kept
                    kept.discard(p)
                    await self.send(p, kept=mine)
                f = self.cache.files.get(p.oid)
                held = f is not None and self.creates.held is not None and self.creates.held.keep(f)
                if f is not None and f.opens == 0 and not f.dirty and not held:
                    self.cache.files.pop(p.oid, None)
        finally:
            for p in kept:  # not sent alone (an error above): their waiters go on
                self._sent(p, settled=False)

    def _idle_small(self, ps: list[PendingCreate]) -> set[int]:
        """The files of ``ps`` a reader's publication makes without this mount's lease
        (:meth:`send_deferred`): closed, within the inline limit (sent whole with the
        create: no blocks to write under a lease after it), not closed since
        :data:`CLOSED_IDLE`."""
        since = trio.current_time() - CLOSED_IDLE
        files = self.cache.files
        return {
            p.oid
            for p in ps
            if p.closed_at <= since
            and (f := files.get(p.oid)) is not None
            and not f.opens
            and f.size <= self.sender.inline
        }

    async def _handed_over(self, oids: list[int]) -> None:
        """Files just made without this mount's lease (:meth:`send_deferred`): what the
        kernel was told of them under the directory's lease is forgotten, as at a
        release (``Leases.before_release``)."""
        leases = self.sender.meta.leases
        if not oids or leases is None:
            return
        if self.creates.writeback is not None:
            self.creates.writeback.stats["creates_handed_over"] += len(oids)
        if leases.before_release is not None:
            await leases.before_release(oids)

    def _sendable_together(self, p: PendingCreate) -> bool:
        """Whether ``p`` may go in an ``fs.createmany`` now: still pending, nobody sending
        it, never failed, not moved, its file known.  Checked once per batch, not once
        per call: a batch with a create made meanwhile was refused ``IdTaken``, one whose
        file was forgotten failed here (``KeyError``), and all of its creates then went
        alone, a round apiece (231 beside a reader asking publications)."""
        return (
            self.creates.pending_of(p.oid) is p
            and p.sender is None
            and p.failures == 0
            and not self.creates.moved(p.oid)
            and self.cache.files.get(p.oid) is not None
        )

    async def send_directory(self, parent: int) -> list[PendingCreate]:
        """Send every pending create of directory ``parent`` now (a directory ``fsync``:
        those write-back holds, together, and those whose send failed before, kept for a
        resend); the ones that are not made afterwards (the cluster did not answer, or
        they failed for good)."""
        wb = self.creates.writeback
        ps = self.creates.pending_in(parent)
        deferred = [p for p in ps if wb is not None and wb.deferred(p.oid)]
        if deferred:
            await self.send_deferred(deferred)
        for p in self.creates.pending_in(parent):
            await self.send(p)
        return [
            p
            for p in ps
            if self.creates.pending_of(p.oid) is p
            or self.creates.failure_of(p.oid) is not None
            or p.oid in self.cache.unmade
        ]

    def give_up(self, p: PendingCreate, e: FsError) -> None:
        """Drop ``p`` for good: a call was answered EIO for it (docs/fs.md, "What EIO
        means": not applied).  It is never sent again; its file's flush and close answer
        ``e``, and once closed its inode answers ESTALE (:meth:`CreateTable.abandon`)."""
        if self.creates.pending_of(p.oid) is not p:
            return
        log.info("create of %r dropped: answered %s", p.name, e)
        self.creates.fail(p, e)
        self.creates.drop_pending(p)
        if not self.creates.open_here(p.oid):
            self.creates.abandon(p.oid)
        leases = self.sender.meta.leases
        if leases is not None:  # a listing kept under a lease may hold the name: dropped
            leases.entry_done("fs.create", p.parent, frozenset(), "unknown")

    async def _send_together(self, ps: list[PendingCreate], *, inherit: bool = True) -> bool:
        """One ``fs.createmany`` for ``ps``; whether it made them (else none of them is
        made by it and each is sent alone, with everything :meth:`send` handles: a name
        taken meanwhile, space, a send the cluster did not answer).  A batch that failed
        stays this task's, the calls waiting for its creates still waiting, until the
        caller sent each alone (``send(kept=True)``): released at the failure, a listing
        waiting for them read the directory's entries before they were made and left
        them out (issue 60 item 7: ``diff -r``'s "Only in" right after a copy with a node
        just stopped, ``rm -rf``'s "Directory not empty")."""
        me = trio.lowlevel.current_task()
        for p in ps:
            p.sender = me
        self._senders.add(me)
        made = False
        alone = False
        try:
            await self.sender.send_many(ps, inherit=inherit)
            made = True
        except Exception as e:  # noqa: BLE001 - each is then sent alone (it reports)
            alone = True
            log.debug("creates of %s sent together failed (each goes alone): %r", ps, e)
        finally:
            self._senders.discard(me)
            if not alone:
                for p in ps:
                    self._sent(p, settled=made)
        if made:
            if self.creates.writeback is not None:
                self.creates.writeback.stats["write_back_updates"] += 1
            # The blocks of the files past the inline limit, each file's under its own
            # write lease: at once (one file's flush does not wait for another's).
            async with trio.open_nursery() as nursery:
                for p in ps:
                    nursery.start_soon(self._write_back_closed, p)
        return made

    def _sent(self, p: PendingCreate, *, settled: bool) -> None:
        """A send of ``p`` ended: nobody sends it now, it is no longer pending if
        ``settled`` (made, or failed for good), and the calls waiting for it go on."""
        p.sender = None
        if settled:
            self.creates.drop_pending(p)
        done, p.done = p.done, trio.Event()
        done.set()

    async def _resend_later(self, p: PendingCreate) -> None:
        """Send ``p`` again at its resend times until it is made, fails for good or is
        dropped (:meth:`give_up`: a call answered EIO for it) (a background task, started
        by its first failed send): a create no call reported is made once the cluster is
        back without this mount doing anything more (issue 31, item 5).  Errors are
        logged by :meth:`send`; nothing escapes."""
        while self.creates.pending_of(p.oid) is p:
            await trio.sleep_until(p.resend_at)
            if self.creates.pending_of(p.oid) is not p or trio.current_time() < p.resend_at:
                continue  # made meanwhile, or failed again and rescheduled
            try:
                await self.send(p)
            except Exception as e:  # a background task must catch its own errors
                log.warning("resending the create of %r failed: %s", p.name, e)
                return

    async def _write_back_closed(self, p: PendingCreate) -> None:
        """After ``p`` was made: a file already closed with writes still buffered (its
        close failed, the cluster unavailable) has them sent now, so that this mount and
        the others read the same file (issue 31, item 5: 2 bytes here, 0 elsewhere).  A
        failure keeps them for a later send."""
        f = self.cache.files.get(p.oid)
        if f is None or f.opens or not f.buffered:
            return
        try:
            await self.engine.flush(f)
        except NoSpace as e:  # refused for good: the file keeps what was stored
            log.warning("writes of closed %r refused, dropped: %s", p.name, e)
            self.cache.drop_refused_writes(f)
        except FsError as e:
            # Kept buffered: held write-back tries them again when due and before the
            # file's lease goes (its gate); the unmount sends them in any case
            # (``Outbox.send_closed``).
            held = self.creates.held
            again = held is not None and held.defer(f)
            log.warning(
                "writes of closed %r not sent yet%s: %s", p.name, " (kept due)" if again else "", e
            )
