"""The quorum engine: which nodes to ask, when to probe or resend, when to stop (pure).

Both protocols are built on one primitive: send a request to a set of nodes, return as
soon as a predicate (``enough``) holds over the *valid* replies, ask further nodes when some
are slow, dead or answer badly, and give up when nobody is left or time runs out.  This
module makes every one of those decisions and nothing else: it never imports trio, never
reads a clock and never sends.  Events go in as method calls with the current time as an
argument, and each returns a :class:`Step` saying what to do (after etcd raft's ``Step``).
The trio loop that feeds it lives in ``net/driver.py``; the transports behind it are
``Endpoint.quorum_call`` and the request batcher (``net/batch.py``).

Rules (those of ``Endpoint.quorum_call`` since its first version):

* the first ``initial`` targets (all by default) are asked at once; the rest are spares;
* the last ``reserve`` targets (suspects, ``net/suspects.py``) are not among the initial
  ones while others are left, and are never probed for ``probe_after`` alone: one is
  probed when a target fails, refuses, answers badly, loses its connection, reports
  trouble or is overdue for a resend; all that are left at once when every other target
  answered or failed without ``enough`` holding, or when every other target was asked
  :attr:`QuorumEngine.reserve_wait` ago (``min(max(probe_after, resend_after), timeout /
  4)``) and ``enough`` still does not hold.  A suspect is asked when the others do not
  do, not when they are merely slower than ``probe_after``; and the reserve never makes
  a call that a quorum of correct nodes can answer wait past its patience (a silent node
  reports nothing: without the last rule a call whose other targets include crashed or
  withholding ones waited for its deadline and failed);
* a spare is probed, one at a time, whenever a target fails, refuses, answers with a reply
  ``accept`` rejects, reports trouble (unreachable, or no answer within the resend
  interval, ``on_trouble``), loses its connection, is overdue for a resend, or
  ``probe_after`` seconds pass since the last request went out without ``enough`` holding;
* a request the driver resends itself (:meth:`QuorumEngine.watch`) is resent every
  ``resend_after`` seconds until answered;
* the call is over when ``enough`` holds (:attr:`Verdict.ENOUGH`), or every target has
  answered or failed, or the deadline passes, without it (:attr:`Verdict.UNAVAILABLE`);
* except that a call given ``linger`` does not end at its deadline while ``linger`` holds
  over the targets still outstanding (the transport's judgement that one of them is alive
  and making progress and that the operation is still willing to wait, issue 60: slow is
  not unavailable): its deadline moves on by its timeout, and overdue requests are resent
  as before.

``enough`` and ``accept`` are the caller's predicates over replies; exceptions they raise
pass through the engine unchanged (the driver re-raises them in the caller's task).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs.ids import NodeId

#: The error recorded for a target whose reply ``accept`` rejected (it did answer).
INVALID_REPLY = "invalid reply"


@dataclass
class QuorumResult:
    """The outcome of a quorum call: valid replies, and why other targets did not count."""

    replies: dict[NodeId, Any] = field(default_factory=dict)
    errors: dict[NodeId, str] = field(default_factory=dict)


class QuorumUnavailable(Exception):
    """Every target answered or failed and the quorum predicate still does not hold."""

    def __init__(self, message: str, result: QuorumResult) -> None:
        super().__init__(message)
        self.result = result


class Verdict(enum.Enum):
    """Where a quorum call stands after a step."""

    #: Still collecting: do what the step says and wait for more events.
    WAIT = "wait"
    #: ``enough`` holds over the valid replies: return them.
    ENOUGH = "enough"
    #: It never will: raise :class:`QuorumUnavailable` with :attr:`Step.reason`.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Step:
    """What the driver does after one event.

    Attributes:
        verdict: see :class:`Verdict`; once not ``WAIT``, every later step repeats it.
        probe: send the request to these nodes (new targets), in this order.
        resend: resend the outstanding request to these nodes (watched, overdue).
        reason: why the call is unavailable (the exception message), else empty.
    """

    verdict: Verdict
    probe: tuple[NodeId, ...] = ()
    resend: tuple[NodeId, ...] = ()
    reason: str = ""


#: The step with nothing to do (shared: most replies produce it).
WAIT = Step(Verdict.WAIT)
ENOUGH = Step(Verdict.ENOUGH)

Enough = Callable[[Mapping[NodeId, Any]], bool]
Accept = Callable[[NodeId, Any], bool]
#: Whether a call whose deadline passed goes on waiting for these outstanding targets.
Linger = Callable[[Collection[NodeId], float], bool]


def live_first(targets: Sequence[NodeId], down: Collection[NodeId]) -> list[NodeId]:
    """``targets`` without duplicates, those in ``down`` moved to the end.

    The caller's order (e.g. a preferred quorum) is kept otherwise; a node known to be down
    is still tried, but only after the others, so a dead node costs nothing while enough
    others answer.
    """
    unique = list(dict.fromkeys(targets))
    if not down:
        return unique
    return [n for n in unique if n not in down] + [n for n in unique if n in down]


class QuorumEngine:
    """The decisions of one quorum call (see the module docstring for the rules).

    Every event method takes ``now`` (seconds, on the driver's clock) and returns a
    :class:`Step`.  Events for a node that has no request outstanding are ignored, and so
    is everything after the verdict, so a driver may pass on whatever arrives.

    Args:
        targets: the nodes to ask, in order of preference (duplicates are dropped).
        label: names the call in the unavailability message (the request kind).
        enough: holds over the valid replies so far when the call is done.
        accept: whether one reply is valid (all are by default).
        initial: how many targets to ask at once (all by default; at least one).
        probe_after: seconds without progress before a spare is probed.
        resend_after: seconds between resends of a watched request.
        timeout: seconds from ``now`` until the call is given up.
        now: the current time.
        linger: asked at the deadline with the outstanding targets; while it holds the
            deadline moves on by ``timeout`` (at least ``resend_after``) instead.
        reserve: the last this many targets are asked only as the module docstring says.
    """

    def __init__(
        self,
        targets: Sequence[NodeId],
        *,
        label: str,
        enough: Enough,
        accept: Accept | None = None,
        initial: int | None = None,
        probe_after: float,
        resend_after: float,
        timeout: float,
        now: float,
        linger: Linger | None = None,
        reserve: int = 0,
    ) -> None:
        self.targets: tuple[NodeId, ...] = tuple(dict.fromkeys(targets))
        #: Targets the ``probe_after`` timer may ask (the rest are the reserve).
        self._timed = len(self.targets) - reserve if 0 < reserve < len(self.targets) else None
        self.label = label
        self.result = QuorumResult()
        self.deadline = now + timeout
        self._enough = enough
        self._accept = accept
        self._initial = len(self.targets) if initial is None else max(1, initial)
        if self._timed is not None:
            self._initial = min(self._initial, self._timed)
        self._probe_after = probe_after
        self._resend_after = resend_after
        self._timeout = timeout
        self._linger = linger
        #: How often a lingering call's deadline moves on.
        self._extend = max(timeout, resend_after)
        #: Times the deadline moved on because the outstanding targets were live.
        self.lingered = 0
        self._next = 0  # targets[_next:] have not been asked yet
        self._in_flight: set[NodeId] = set()
        #: Requests the driver resends itself: when each was last sent.
        self._watched: dict[NodeId, float] = {}
        self._probe_at = math.inf
        #: How long the reserve waits once every other target was asked (module docstring).
        self.reserve_wait = min(max(probe_after, resend_after), timeout / 4)
        #: When the reserve is asked for time alone (set once every other target was).
        self._reserve_at = math.inf
        self._final: Step | None = None

    # Queries -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the verdict is in (every later step repeats it)."""
        return self._final is not None

    @property
    def in_flight(self) -> frozenset[NodeId]:
        """Nodes asked that have neither answered nor failed."""
        return frozenset(self._in_flight)

    @property
    def spares(self) -> int:
        """Targets not asked yet."""
        return len(self.targets) - self._next

    @property
    def reserve_answered(self) -> list[NodeId]:
        """Targets of the reserve whose replies ``accept`` took: suspects that answered
        correctly (the transport asks them in order again, ``net/suspects.py``)."""
        if self._timed is None:
            return []
        return [n for n in self.targets[self._timed :] if n in self.result.replies]

    def wake_at(self) -> float:
        """When :meth:`on_tick` has something to do if no event comes first."""
        wake = self.deadline
        if self._next < (len(self.targets) if self._timed is None else self._timed):
            wake = min(wake, self._probe_at)
        elif self._next < len(self.targets):
            wake = min(wake, self._reserve_at)
        for sent in self._watched.values():
            wake = min(wake, sent + self._resend_after)
        return wake

    # Events ------------------------------------------------------------------------------

    def start(self, now: float) -> Step:
        """Begin: ``enough`` over no replies, or ask the initial targets."""
        if self._enough(self.result.replies):
            return self._finish(ENOUGH)
        probe = tuple(self._take(self._initial, now))
        return self._after(Step(Verdict.WAIT, probe=probe) if probe else WAIT)

    def on_reply(self, node: NodeId, value: Any, now: float) -> Step:
        """``node`` answered ``value`` (its handler accepted the request)."""
        if self._final is not None:
            return self._final
        if now >= self.deadline and (over := self._expire(now)) is not None:
            return over
        if node not in self._in_flight:
            return WAIT
        self._in_flight.discard(node)
        self._watched.pop(node, None)
        if self._accept is None or self._accept(node, value):
            self.result.replies[node] = value
            self.result.errors.pop(node, None)
            if self._enough(self.result.replies):
                return self._finish(ENOUGH)
            if not self._in_flight and self._timed is not None and self._next >= self._timed:
                return self._after(self._ask_reserve(now))  # all answered: the reserve's turn
            return self._after(WAIT)
        self.result.errors[node] = INVALID_REPLY
        return self._after(self._probe_one(now))

    def on_failure(self, node: NodeId, reason: str, now: float) -> Step:
        """``node`` will not answer: unreachable until the deadline, refused, or malformed."""
        if self._final is not None:
            return self._final
        if now >= self.deadline and (over := self._expire(now)) is not None:
            return over
        if node not in self._in_flight:
            return WAIT
        self._in_flight.discard(node)
        self._watched.pop(node, None)
        self.result.errors[node] = reason
        return self._after(self._probe_one(now))

    def on_trouble(self, now: float) -> Step:
        """A target is unreachable or slow for now (its request is still outstanding)."""
        if self._final is not None:
            return self._final
        if now >= self.deadline and (over := self._expire(now)) is not None:
            return over
        return self._probe_one(now)

    def on_lost(self, node: NodeId, now: float) -> Step:
        """``node``'s connection broke; the driver retries it by other means (unwatched)."""
        if self._final is not None:
            return self._final
        if now >= self.deadline and (over := self._expire(now)) is not None:
            return over
        if node not in self._in_flight:
            return WAIT
        self._watched.pop(node, None)
        return self._probe_one(now)

    def on_tick(self, now: float) -> Step:
        """Time passed (the driver woke at :meth:`wake_at`): resend, probe, or give up."""
        if self._final is not None:
            return self._final
        if now >= self.deadline and (over := self._expire(now)) is not None:
            return over
        resend = tuple(n for n, sent in self._watched.items() if now - sent >= self._resend_after)
        for node in resend:
            self._watched[node] = now
        # An overdue target is in trouble just as one that reported it is.
        probe: tuple[NodeId, ...] = ()
        if now >= self._reserve_at:
            probe = self._ask_reserve(now).probe  # the others were given their time
        elif resend or now >= self._probe_at:
            probe = tuple(self._take(1, now, timed=not resend))
        if not probe and not resend:
            return WAIT
        return Step(Verdict.WAIT, probe=probe, resend=resend)

    def watch(self, node: NodeId, now: float) -> None:
        """The driver sent to ``node`` on a channel that it resends on: schedule resends."""
        if node in self._in_flight and self._final is None:
            self._watched[node] = now

    # Internals ---------------------------------------------------------------------------

    def _take(self, count: int, now: float, *, timed: bool = False) -> list[NodeId]:
        """Mark up to ``count`` spares as asked (``timed``: for ``probe_after`` alone, so
        not the reserve); the probe timer restarts if any were."""
        end = self._next + count
        if timed and self._timed is not None:
            end = min(end, self._timed)
        taken = list(self.targets[self._next : end])
        self._next += len(taken)
        self._in_flight.update(taken)
        if taken:
            self._probe_at = now + self._probe_after
            if self._timed is not None and self._next >= self._timed:
                self._reserve_at = min(self._reserve_at, now + self.reserve_wait)
        return taken

    def _probe_one(self, now: float) -> Step:
        probe = self._take(1, now)
        return Step(Verdict.WAIT, probe=(probe[0],)) if probe else WAIT

    def _ask_reserve(self, now: float) -> Step:
        """Every target not asked yet, at once (the reserve's turn: the others do not do)."""
        probe = self._take(len(self.targets), now)
        return Step(Verdict.WAIT, probe=tuple(probe)) if probe else WAIT

    def _after(self, step: Step) -> Step:
        """``step``, unless nothing is outstanding and nobody is left to ask."""
        if not self._in_flight and self._next >= len(self.targets):
            result = self.result
            return self._finish(
                Step(
                    Verdict.UNAVAILABLE,
                    reason=f"{self.label}: quorum not reached ({len(result.replies)} valid of "
                    f"{len(self.targets)}; errors: {result.errors})",
                )
            )
        return step

    def _expire(self, now: float) -> Step | None:
        """The deadline passed: None if the call lingers (its deadline moved on), else
        the verdict."""
        linger = self._linger
        if linger is not None and self._in_flight and linger(self._in_flight, now):
            self.deadline = now + self._extend
            self.lingered += 1
            return None
        return self._timed_out()

    def _timed_out(self) -> Step:
        return self._finish(
            Step(
                Verdict.UNAVAILABLE,
                reason=f"{self.label}: quorum not reached within {self._timeout:g}s",
            )
        )

    def _finish(self, step: Step) -> Step:
        self._final = step
        self._watched.clear()
        return step
