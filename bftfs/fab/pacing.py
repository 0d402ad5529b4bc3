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
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
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

    def sent(self, key: K, now: int) -> None:
        """``key`` was sent for the first time at tick ``now``: resend it ``first`` ticks
        later (if it is still waited for then)."""
        self._due[key] = (now + self.first, self.first)

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
