"""When to send a message again: exponential backoff per thing still waited for.

The seed's retransmissions (leader "resends until it hears back", L6569-6600; learners
pull after a timeout, Fig. 6.6 line 34) say nothing of how often.  Resending at every
tick is fine while a round takes less than a tick, and ruinous once it takes more: on a
loaded machine every slot's PROPOSE went out again each 50 ms tick, each one answered by
``n^2`` ACCEPTED, which slowed the rounds further (at ``n = 16`` on two cores a node
handled ten times the frames the protocol needs, and mounts got EIO).  So each key (a
slot, a checkpoint, a regency) is sent again ``first`` ticks after it is first seen
waiting, then after twice as long each time, up to ``cap`` ticks: a message lost on an
idle network costs ``first`` ticks, and a slow network gets a bounded multiple of the
protocol's own messages.

How long to wait before the first resend of a proposal is learned from the rounds
themselves (:class:`RoundTimer`, TCP's retransmission timer in ticks): about two rounds,
so a proposal whose answers are merely slow is not resent (with its ``n^2`` ACCEPTED).
"""

from __future__ import annotations

import math
from collections.abc import Container, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Backoff(Generic[K]):
    """Per key: the tick of its next send and the interval after that.

    Args:
        first: ticks between a key's first being waited for and its first resend.
        cap: the longest interval between resends, in ticks.
    """

    def __init__(self, first: int, cap: int) -> None:
        if not 1 <= first <= cap:
            raise ValueError(f"backoff needs 1 <= first ({first}) <= cap ({cap})")
        self.first, self.cap = first, cap
        self._due: dict[K, tuple[int, int]] = {}  # key -> (tick due, interval)

    def sent(self, key: K, now: int, first: int | None = None) -> None:
        """``key`` was sent for the first time at tick ``now``: resend it ``first`` ticks
        later (default: the constructor's), if it is still waited for then."""
        wait = self.first if first is None else first
        self._due[key] = (now + wait, wait)

    def due(self, waiting: Iterable[K], now: int) -> list[K]:
        """Of the keys still ``waiting`` at tick ``now`` (in their order), those to send
        again now.  A key not waited for before starts its clock; one no longer in
        ``waiting`` is forgotten (it was answered)."""
        keys = list(waiting)
        old, self._due = self._due, {}
        out = []
        for k in keys:
            at, interval = old.get(k, (now + self.first, self.first))
            if at <= now:
                out.append(k)
                interval = min(2 * interval, self.cap)
                at = now + interval
            self._due[k] = (at, interval)
        return out

    def __len__(self) -> int:
        return len(self._due)


class RoundTimer(Generic[K]):
    """The ticks a round takes, averaged over the recent ones, and the wait before a first
    resend that follows from it: twice the average, within ``[floor, cap]``.

    Args:
        floor: the shortest first wait, in ticks (the wait before any round ended).
        cap: the longest.
    """

    #: Weight of the newest round in the average (TCP's 1/8).
    GAIN = 1 / 8

    def __init__(self, floor: int, cap: int) -> None:
        self.floor, self.cap = floor, cap
        self.average = floor / 2  # no round seen yet: the first wait is ``floor``
        self._started: dict[K, int] = {}

    def start(self, key: K, now: int) -> None:
        self._started[key] = now

    def done(self, key: K, now: int) -> None:
        """The round of ``key`` ended at tick ``now`` (a key not started is ignored)."""
        began = self._started.pop(key, None)
        if began is not None:
            self.average += (max(now - began, 0) - self.average) * self.GAIN

    def keep(self, keys: Container[K]) -> None:
        """Forget the rounds not in ``keys`` (they will not end: collected, or another
        regency)."""
        self._started = {k: t for k, t in self._started.items() if k in keys}

    def first(self) -> int:
        return min(max(self.floor, math.ceil(2 * self.average)), self.cap)


class Resends:
    """A replica's clocks: its proposals (by slot) with their rounds, its pending
    checkpoint statement (by body) and its suspicion (by regency)."""

    def __init__(self, first: int, cap: int) -> None:
        self.proposals: Backoff[int] = Backoff(first, cap)
        self.rounds: RoundTimer[int] = RoundTimer(first, cap)
        self.checkpoints: Backoff[bytes] = Backoff(first, cap)
        self.suspicions: Backoff[int] = Backoff(first, cap)
