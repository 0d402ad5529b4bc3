"""This mount's file locks (issue 37): ``fcntl`` byte-range locks (POSIX and OFD) and
``flock`` locks, held on the servers so that every mount sees them.

Every lock operation is a Q/U update of the file's lock object
(:mod:`bftfs.fsobjects.locks`), so a conflict is decided by the servers, never by one
mount: a lock another client holds is refused ``conflict`` (EAGAIN), whatever this mount
believes.  What this mount holds it also keeps here (:attr:`LockManager.held`, per file,
as the servers answered it), for three jobs:

- **the lease.**  The servers keep an entry until ``lt + term``; :meth:`LockManager.run`
  renews every file's entries a third of the term before this mount stops trusting them
  (its term from before it asked, less ``HOLDER_MARGIN``, as for leases).  A renewal that
  answers less than the mount believes it holds, or none in time (the mount was cut off),
  makes the file's locks **lost**: they are forgotten here, and the next lock operation on
  the file answers EIO (:class:`~bftfs.fs.errors.LockLost`), once, as NFS does.
- **closes.**  A close drops the closing process's POSIX locks on the file (FUSE's flush
  carries the lock owner), a release the locks taken through that open file (``flock``
  and OFD locks belong to it): :meth:`unlock_owner` costs a round only when the owner holds
  something here.
- **waiters.**  A blocking lock (``F_SETLKW``, ``flock`` without ``LOCK_NB``) that meets a
  conflict registers as a waiter on the file's lock object (``fs.lkwait``, which answers
  at once if the lock is free meanwhile) and waits to be woken: the next update that frees
  something there names the waiters, and every node that took it pushes
  ``{"unlocked": [oid]}`` to them (``node/recalls.py``, :meth:`LockManager.on_push`).  A
  wake-up is a hint to ask again (the servers decide), so any one node's is believed; a
  waiter also asks again after a randomised backoff from :data:`WAIT_FIRST` doubling to
  :data:`WAIT_MAX` seconds (a lapsed holder frees its lock with no update, a push may be
  lost).  The wait is cancelled by a signal to the waiting process (the FUSE layer
  cancels this coroutine: EINTR); an update under way is not cut (shielded), so a lock it
  took is known here and answered.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from bftfs.fs.clients.protocols import take_pushes
from bftfs.fs.errors import FsError, LockLost, NoLocks, Unavailable, WouldBlock, from_refusal
from bftfs.fsobjects import MAX_OID
from bftfs.fsobjects.leases import HOLDER_MARGIN, MAX_RECALLED
from bftfs.fsobjects.locks import (
    FLOCK,
    LOCK_SPACE,
    OFFSET_MAX,
    POSIX,
    READ,
    UNLOCK,
    WRITE,
    is_lock_object,
    lock_object,
)
from bftfs.outcome import ClusterUnavailable, paused
from bftfs.qu.core import backoff_delay
from bftfs.qu.objects import MethodRefused

log = logging.getLogger(__name__)

#: What the FUSE layer names (it imports ``fs``, not ``fsobjects``).
__all__ = ["FLOCK", "OFFSET_MAX", "POSIX", "READ", "UNLOCK", "WRITE", "LockManager"]

#: Seconds a lock lives on the servers unless renewed (a dead mount's locks end by then).
DEFAULT_TERM = 30.0
#: A blocking lock not woken asks again this many seconds after a conflict at first ...
WAIT_FIRST = 0.05
#: ... doubling up to this (a lock freed with no wake-up is taken at most this late).
WAIT_MAX = 2.0
#: Objects one renewal names at most (``MAX_OBJECTS``).
RENEW_BATCH = 8
#: Seconds before a renewal the cluster did not answer is tried again.
RENEW_RETRY = 0.5

Update = Callable[[list[int], str, Any], Awaitable[Any]]
Query = Callable[[int, str, Any], Awaitable[Any]]

#: What a file's lock object answers a holder holds: [domain, owner, start, end, kind].
Held = list[list[int]]


class _Meta(Protocol):
    """What the lock manager uses of ``fs/clients/calls.py``'s ``Meta``."""

    async def update(self, objects: list[int], method: str, arg: Any) -> Any: ...

    wall_ns: Callable[[], int]
    qu: Any
    rng: random.Random
    lease_token: int


@dataclass
class _File:
    """What this mount holds on one file: the servers' last answer, until when (trio
    time) it is trusted, and a counter of lock operations (a renewal answered across one
    is not compared)."""

    held: Held = field(default_factory=list)
    until: float = 0.0
    changes: int = 0


class LockManager:
    """This mount's locks (module docstring)."""

    def __init__(self, meta: _Meta, *, term: float = DEFAULT_TERM) -> None:
        """``term``: seconds each lock lives on the servers unless renewed (more than
        ``HOLDER_MARGIN``)."""
        if term * 1e9 <= HOLDER_MARGIN:
            raise ValueError(f"a lock term must exceed {HOLDER_MARGIN / 1e9} s")
        self.meta = meta
        self.term = term
        #: This mount's number in its lock entries (``Meta.lease_token``, random): two
        #: mounts of one client identity are two holders.
        self.mount = meta.lease_token
        self.files: dict[int, _File] = {}
        #: Files whose locks lapsed: their next lock operation answers EIO.
        self.lost: set[int] = set()
        #: Open file handle -> the (file, owner) pairs that locked through it.
        self._by_handle: dict[int, set[tuple[int, int]]] = {}
        #: (file, owner) -> the process id that last locked (F_GETLK names it).
        self.pids: dict[tuple[int, int], int] = {}
        #: Set when the servers answered a lock operation (the renewal loop looks again).
        self._recorded = trio.Event()
        #: File -> set when a node pushes that its lock object freed something.
        self._wakeups: dict[int, trio.Event] = {}
        self.stats: Counter[str] = Counter()

    # Lock operations ---------------------------------------------------------------------

    async def _check_lost(self, oid: int) -> None:
        """Raise EIO once for a file whose locks lapsed.  What the servers may still hold
        of this mount's on it is dropped first (best effort: it lapses anyway), so a later
        lock, which renews all the mount's entries on the file, does not revive them."""
        f = self.files.get(oid)
        if f is not None and f.held and trio.current_time() >= f.until:
            self._lose(oid, "not renewed in time")
        if oid not in self.lost:
            return
        self.lost.discard(oid)
        try:
            with trio.CancelScope(shield=True):
                await self.meta.update(
                    [lock_object(oid)],
                    "fs.unlockowner",
                    {"m": self.mount, "lt": self.meta.wall_ns()},
                )
        except FsError as e:
            log.info("lapsed locks on %d not dropped (they end at their term): %s", oid, e)
        raise LockLost(f"the locks on {oid} lapsed")

    def _lose(self, oid: int, why: str) -> None:
        f = self.files.pop(oid, None)
        if f is not None and f.held:
            self.lost.add(oid)
            self.stats["lost"] += 1
            log.warning("locks on %d lost (%s): the next lock operation answers EIO", oid, why)

    async def lock(
        self,
        oid: int,
        fh: int,
        domain: int,
        owner: int,
        kind: int,
        start: int,
        end: int,
        *,
        wait: bool,
        pid: int = 0,
    ) -> None:
        """Take (or change, or with :data:`UNLOCK` drop) ``owner``'s lock of ``kind`` on
        bytes ``start..end`` of file ``oid`` through handle ``fh``.  With ``wait``, a
        conflict is waited out (cancellable); without, it raises
        :class:`~bftfs.fs.errors.WouldBlock`."""
        _lockable(oid)
        await self._check_lost(oid)
        if kind == UNLOCK and not self.holds(oid, owner):
            return  # nothing of the owner's here to drop (SQLite unlocks what it never took)
        arg = {"m": self.mount, "d": domain, "o": owner, "t": kind, "s": start, "e": end}
        attempt = 0
        while True:
            try:
                await self._set(oid, arg)
                break
            except WouldBlock:
                if not wait:
                    raise
            self.stats["waits"] += 1
            paused(await self._wait(oid, arg, attempt))  # a holder's time, not the cluster's
            attempt += 1
            await self._check_lost(oid)
        if kind != UNLOCK:
            self._by_handle.setdefault(fh, set()).add((oid, owner))
            if pid:
                self.pids[(oid, owner)] = pid

    async def _wait(self, oid: int, arg: dict[str, Any], attempt: int) -> float:
        """Wait to ask for a lock again: register as a waiter, then until woken or the
        backoff's delay passed.  The seconds waited."""
        start = trio.current_time()
        woken = self._wakeups.setdefault(oid, trio.Event())  # before: a push may come soon
        try:
            with trio.CancelScope(shield=True):  # a short round; the wait is what is cut
                waits = await self.meta.update(
                    [lock_object(oid)], "fs.lkwait", {**arg, "lt": self.meta.wall_ns()}
                )
        except FsError as e:  # then poll
            log.info("wait for the lock on %d not registered: %s", oid, e)
            waits = True
        if waits:
            self.stats["registered"] += 1
            with trio.move_on_after(backoff_delay(attempt, self.meta.rng, WAIT_FIRST, WAIT_MAX)):
                await woken.wait()
            self.stats["woken" if woken.is_set() else "polled"] += 1
        return trio.current_time() - start

    def listen(self, endpoint: Any, nodes: list[int]) -> None:
        """Take the wake-ups ``endpoint`` (``net.endpoint.Endpoint``) is pushed, passing
        every other push to the handler it had (the leases' recalls), and keep a
        connection to each of ``nodes``: a node pushes only to connected clients."""
        take_pushes(endpoint, "unlocked", self.on_push)
        endpoint.stay_connected(list(nodes))

    def on_push(self, node: int, body: Any) -> None:
        """A node's wake-up ``{"unlocked": [lock object, ...]}``: the waiters on those
        files ask again now."""
        oids = body.get("unlocked") if isinstance(body, dict) else None
        if not isinstance(oids, list) or len(oids) > MAX_RECALLED:
            self.stats["pushes_malformed"] += 1
            return
        for oid in oids:
            if not isinstance(oid, int) or isinstance(oid, bool) or not is_lock_object(oid):
                self.stats["pushes_malformed"] += 1
                continue
            woken = self._wakeups.pop(oid ^ LOCK_SPACE, None)
            if woken is not None:
                woken.set()

    async def _set(self, oid: int, arg: dict[str, Any]) -> None:
        """One ``fs.setlk`` round, not cut by a cancellation (a lock it took is known)."""
        f = self.files.get(oid)
        if f is not None:
            f.changes += 1
        asked = trio.current_time()
        with trio.CancelScope(shield=True):
            held = await self.meta.update(
                [lock_object(oid)], "fs.setlk", {**arg, **self._lease_arg()}
            )
        self._record(oid, held, asked)

    def _lease_arg(self) -> dict[str, int]:
        return {"m": self.mount, "lt": self.meta.wall_ns(), "term": int(self.term * 1e9)}

    def _record(self, oid: int, held: Any, asked: float) -> None:
        """The servers' answer of what this mount holds on ``oid``, trusted for a term
        from ``asked`` less the holder's margin."""
        if isinstance(held, dict):
            held = held.get("h")
        f = self.files.setdefault(oid, _File())
        f.held = [list(x) for x in held] if isinstance(held, list) else []
        f.until = asked + self.term - HOLDER_MARGIN / 1e9
        f.changes += 1
        self._recorded.set()
        if not f.held:
            del self.files[oid]

    def holds(self, oid: int, owner: int | None = None) -> bool:
        """Whether this mount holds a lock on ``oid`` (of ``owner``, if given)."""
        f = self.files.get(oid)
        return f is not None and any(owner is None or x[1] == owner for x in f.held)

    async def test(
        self, oid: int, domain: int, owner: int, kind: int, start: int, end: int
    ) -> tuple[int, int, int, int] | None:
        """``F_GETLK``: the lock a lock of ``kind`` on ``start..end`` would conflict with,
        as (kind, start, end, pid: this mount's process for its own owners, else 0), or
        None."""
        _lockable(oid)
        await self._check_lost(oid)
        arg = {"m": self.mount, "d": domain, "o": owner, "t": kind, "s": start, "e": end}
        arg["lt"] = self.meta.wall_ns()
        try:
            got = await self.meta.qu.query(lock_object(oid), "fs.getlk", arg)
        except MethodRefused as e:
            raise from_refusal(e.code, e.message) from None
        except ClusterUnavailable as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from None
        if got is None:
            return None
        if not (isinstance(got, list) and len(got) == 7 and all(isinstance(x, int) for x in got)):
            raise FsError(f"malformed getlk answer {got!r}")  # b + 1 nodes said it: EIO
        client, mount, _, other, lo, hi, other_kind = got
        mine = client == self.meta.qu.client_id and mount == self.mount
        pid = self.pids.get((oid, other), 0) if mine else 0
        return other_kind, lo, hi, pid

    async def unlock_owner(self, oid: int, owner: int) -> None:
        """A close: drop ``owner``'s locks on ``oid`` (a round only when it holds any)."""
        if not self.holds(oid, owner):
            return
        f = self.files[oid]
        f.changes += 1
        with trio.CancelScope(shield=True):
            await self.meta.update(
                [lock_object(oid)],
                "fs.unlockowner",
                {"m": self.mount, "o": owner, "lt": self.meta.wall_ns()},
            )
        f = self.files.get(oid, _File())
        f.held = [x for x in f.held if x[1] != owner]
        if not f.held:
            self.files.pop(oid, None)
        self.pids.pop((oid, owner), None)

    async def release(self, fh: int) -> None:
        """The last close of an open file: the locks taken through it go (its ``flock``
        and OFD locks; its processes' POSIX locks went at their closes)."""
        for oid, owner in sorted(self._by_handle.pop(fh, set())):
            try:
                await self.unlock_owner(oid, owner)
            except FsError as e:  # the lease ends them: at most a term late
                log.warning("locks of %d on %d not dropped at release: %s", owner, oid, e)

    # The lease ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew the locks held, each file's a third of the term before it runs out here."""
        while True:
            with trio.move_on_at(max(trio.current_time() + 0.05, self._next_due())):
                await self._recorded.wait()  # a new lock may be due sooner
            self._recorded = trio.Event()
            failed = self.stats["renew_failed"]
            await self.renew_due()
            if self.stats["renew_failed"] > failed:
                await trio.sleep(RENEW_RETRY)  # the cluster did not answer: not in a loop

    def _next_due(self) -> float:
        due = [f.until - self.term / 3 for f in self.files.values() if f.held]
        return min(due, default=trio.current_time() + self.term / 3)

    async def renew_due(self) -> None:
        """Renew the files whose trust ends within a third of the term; a file renewed
        late or answered with less than it holds here is lost (module docstring)."""
        now = trio.current_time()
        due = sorted(o for o, f in self.files.items() if f.held and f.until - now <= self.term / 3)
        for i in range(0, len(due), RENEW_BATCH):
            await self._renew(due[i : i + RENEW_BATCH])

    async def _renew(self, oids: list[int]) -> None:
        changes = [self.files[o].changes for o in oids]
        asked = trio.current_time()
        try:
            answer = await self.meta.update(
                [lock_object(o) for o in oids], "fs.renewlk", self._lease_arg()
            )
        except FsError as e:
            self.stats["renew_failed"] += 1
            log.info("renewal of the locks on %s failed: %s", oids, e)
            for oid in oids:
                f = self.files.get(oid)
                if f is not None and trio.current_time() >= f.until:
                    self._lose(oid, "not renewed in time")
            return
        self.stats["renewed"] += len(oids)
        got = answer.get("h") if isinstance(answer, dict) else None
        if not isinstance(got, list) or len(got) != len(oids):
            got = []
        for oid, before, held in zip(oids, changes, got, strict=False):
            f = self.files.get(oid)
            if f is None or f.changes != before:
                continue  # a lock operation crossed it: its own answer counts
            if sorted(map(list, held)) != sorted(f.held):
                self._lose(oid, "the servers no longer hold them")
            else:
                f.until = asked + self.term - HOLDER_MARGIN / 1e9

    async def release_all(self) -> None:
        """Drop every lock this mount holds (an unmount): others need not wait a term."""
        oids = sorted(self.files)
        self.files.clear()
        self._by_handle.clear()
        for i in range(0, len(oids), RENEW_BATCH):
            batch = oids[i : i + RENEW_BATCH]
            try:
                await self.meta.update(
                    [lock_object(o) for o in batch],
                    "fs.unlockowner",
                    {"m": self.mount, "lt": self.meta.wall_ns()},
                )
            except FsError as e:
                log.warning(
                    "locks on %s not dropped at unmount (they end at their term): %s", batch, e
                )


def _lockable(oid: int) -> None:
    """Only objects lock: a snapshot's file under ``.snapshots`` has an inode number above
    every object id, and a lock there would name an object nobody means (ENOLCK)."""
    if not 0 < oid <= MAX_OID:
        raise NoLocks(f"inode {oid} is no object: files of snapshots take no locks")
