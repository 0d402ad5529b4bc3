"""One Q/U operation's patience: how its rounds are counted, when it backs off and when it
gives up (:class:`QUUnavailable`).

A round that fewer than ``q`` servers answered is *short*; :data:`MAX_SHORT_ROUNDS` in a row
end the operation, naming the servers none of them heard from - unless the operation runs
under a patience that waits while a quorum of nodes is live (a mount's default, issue 60:
slow is not unavailable), which short rounds end only once it ran out: until then the
operation pauses briefly and asks again.  Contention is not silence:
the random exponential backoff between repairs (L2585-2587) is the client's own wait and
does not use up the operation's patience (``bftfs.outcome``).  A repair whose deduction
names more objects than a request may is made in groups (``repair.py``); the passes of one
that finds nothing to split off are bounded like short rounds (:data:`MAX_STALLS`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.outcome import ClusterUnavailable, current_patience, paused
from bftfs.qu import core
from bftfs.qu.classify import QUThresholds
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reply import Reply

log = logging.getLogger(__name__)

#: Rounds in a row with fewer than q replies before an operation gives up.
MAX_SHORT_ROUNDS = 3
#: Longest pause between short rounds of an operation that waits for a live quorum.
SHORT_PAUSE_MAX = 1.0
#: Rounds in a row, each backed off, in which a quorum answered that it could not object-
#: sync a version the operation needs, before giving up: no server holds it (an object
#: forgotten before nodes kept the ids they forgot, issue 31), so re-sending at once, as
#: for other failures, would go on for ever.
MAX_UNSYNCABLE_ROUNDS = 10
#: Passes in a row of a repair whose deduction names more objects than a request may and
#: that found no candidate to repair on its own (``repair.py``: none left that is not
#: being repaired already), each backed off and followed by a read of every server's
#: histories, before an operation gives up - unless it runs under a patience that waits
#: while a quorum of nodes is live, as for short rounds (:meth:`Attempt.check_stalled`).
#: With sound histories there is always such a candidate (``core.split_target``): this
#: only bounds what should not happen.  Splitting itself is not counted: each split
#: repairs one candidate for good, so splits are bounded by the candidates clients made.
MAX_STALLS = 4
#: Passes in a row of such a repair, waiting on a live quorum, after which it is logged
#: once an operation (at INFO: a mount logs the request waiting at WARNING, with its
#: stack).  With every server sound it should never happen, and it did (12-05: two
#: mounts' repairs backing off for 16 minutes, each pass finding only candidates its
#: outer levels were repairing); the objects say where to look.
STALLS_LOGGED = 30
#: The failure servers answer when no ``b + 1`` hosts hand over a version (node/qu_server.py).
UNSYNCABLE = "object sync failed"


class QUUnavailable(ClusterUnavailable):
    """Fewer than q servers answered, repeatedly: the object cannot make progress now.

    The file system turns it into its own ``bftfs.fs.errors.Unavailable`` (EIO).
    """


class TooManyObjects(QUUnavailable):
    """Repair would have to name more objects than one request may (8), and repairing the
    candidates it deduces one at a time made no progress :data:`MAX_STALLS` times in a
    row (without a patience that waits for a live quorum)."""


@dataclass
class Attempt:
    """What one operation carries from round to round."""

    th: QUThresholds
    #: Randomness for backoff, and how to wait (the client's).
    rng: random.Random
    sleep: Callable[[float], Any]
    #: The newest timestamps cached for the operation's objects when it last looked.
    seen_latest: tuple
    repairs: int = 0
    short: int = 0
    unsyncable: int = 0
    #: Servers that answered any of the current run of short rounds.
    heard: set[int] = field(default_factory=set)
    inline_tried: set[tuple] = field(default_factory=set)
    #: Passes in a row of a too wide repair that found nothing to split off
    #: (:data:`MAX_STALLS`).
    stalls: int = 0
    #: Keys of the candidates this operation repaired on their own (``repair.py``).
    split_off: set[tuple] = field(default_factory=set)
    #: Whether every server's histories were read before proving links (``repair.py``).
    widened_for_links: bool = False
    #: The newest complete versions seen at the last backoff (:meth:`progressed`).
    mark: tuple | None = None
    #: Objects added to a repair because it passes by a candidate of theirs
    #: (``classify.left_behind``): each once per operation.
    covered_behind: set[int] = field(default_factory=set)

    def answered(self, replies: Mapping[int, Reply]) -> None:
        """Count a round: one answered by fewer than ``q`` servers (whatever they said:
        contention is not absence) extends the run of short rounds, any other ends it."""
        self.short = self.short + 1 if len(replies) < self.th.q else 0
        self.heard = self.heard | set(replies) if self.short else set()

    async def check_short(self, objects: tuple[int, ...]) -> None:
        """Give up after :data:`MAX_SHORT_ROUNDS` short rounds in a row, naming the servers
        none of those rounds heard from: what the mount log shows for the EIO.  Under a
        patience that waits for a live quorum (not ``soft``) only once that patience ran
        out: before, a busy cluster's rounds cut short by their timeouts (3 of them, "0
        answered" with every node up) failed the operation (issue 60); such an operation
        pauses (growing to :data:`SHORT_PAUSE_MAX`) and asks again instead.

        Raises:
            QUUnavailable: that many short rounds.
        """
        if self.short < MAX_SHORT_ROUNDS:
            return
        if _waits_for_quorum():
            await self.sleep(
                min(SHORT_PAUSE_MAX, 0.05 * 2 ** min(self.short - MAX_SHORT_ROUNDS, 5))
            )
            return
        silent = sorted(set(range(self.th.n)) - {int(s) for s in self.heard})
        raise QUUnavailable(
            f"objects {objects}: fewer than q={self.th.q} servers answer ({MAX_SHORT_ROUNDS} "
            f"rounds in a row; {len(self.heard)} answered, none from nodes {silent})"
        )

    def check_stalled(self, objects: tuple[int, ...]) -> None:
        """Count a pass of a too wide repair that found no candidate to repair on its own;
        give up after :data:`MAX_STALLS` in a row, unless a patience waits for a live
        quorum (not ``soft``, not run out): slow is not unavailable, and such an operation
        backs off (capped, :func:`core.backoff_delay`) and reads every server again.

        Raises:
            TooManyObjects: that many passes.
        """
        self.stalls += 1
        if self.stalls == STALLS_LOGGED:  # (INFO: the request's own wait is the WARNING)
            log.info(
                "objects %s%s: a repair naming %d objects, more than %d, found no "
                "candidate to repair on its own %d passes in a row; waiting while a quorum lives",
                list(objects[:8]),
                "..." if len(objects) > 8 else "",
                len(objects),
                self.th.objects,
                self.stalls,
            )
        if self.stalls >= MAX_STALLS and not _waits_for_quorum():
            raise TooManyObjects(
                f"objects {objects}: more than {self.th.objects} to repair, and none of their "
                f"candidates to repair on its own ({self.stalls} passes)"
            )

    def progressed(self, mark: tuple) -> None:
        """Note the newest complete versions of the operation's objects before a backoff
        (:func:`core.progress_mark`).  When others completed versions since the last
        backoff, nobody is livelocked: the objects are busy, and this operation lost a
        race.  Exponential backoff is there against livelock (L2585-2587); doubling it
        against a client that keeps making progress only hands that client every later
        race (its next operation starts again at 1 ms), and a mount creating in a
        directory another mount kept changing waited 30 backoffs, 17-19 s, for one
        create (issue 60 item 9).  So progress by others halves the count instead."""
        if self.mark is not None and mark != self.mark:
            self.repairs //= 2
        self.mark = mark

    async def back_off(self) -> float:
        """Wait the next random exponential backoff of this operation (contention); the
        seconds waited.  The
        wait is this client's choice, not the cluster's silence: it does not use up the
        operation's patience (``bftfs.outcome``), which ran out in long contended repairs
        and made the next rounds short, and the operation EIO, with every node answering
        (issue 31, item 11)."""
        delay = core.backoff_delay(self.repairs, self.rng)
        self.repairs += 1
        start = trio.current_time()
        await self.sleep(delay)
        paused(trio.current_time() - start)
        return delay

    async def after_unsyncable(
        self, objects: tuple[int, ...], replies: Mapping[int, Reply]
    ) -> None:
        """Back off after a round in which ``q`` servers could not object-sync a version the
        operation needs; give up after :data:`MAX_UNSYNCABLE_ROUNDS` such rounds in a row.

        Raises:
            QUUnavailable: no server holds that version.
        """
        failed = sum(r.status is ReplyStatus.FAIL and r.why == UNSYNCABLE for r in replies.values())
        if failed < self.th.q:
            self.unsyncable = 0
            return
        self.unsyncable += 1
        if self.unsyncable >= MAX_UNSYNCABLE_ROUNDS:
            raise QUUnavailable(
                f"objects {objects}: no server holds a version this operation needs "
                f"({self.unsyncable} rounds of '{UNSYNCABLE}')"
            )
        await self.sleep(core.backoff_delay(self.unsyncable, self.rng))


def _waits_for_quorum() -> bool:
    """Whether the current operation runs under a patience that waits while a quorum of
    nodes is live (a mount's default, not ``soft``) and has not run out."""
    p = current_patience()
    return p is not None and not p.soft and not p.expired(trio.current_time())
