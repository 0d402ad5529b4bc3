"""Pacing bytes to a rate: a token bucket that both background copies use, the node's
block catch-up (``node/rw_catchup.py``) and the generation mover (``fs/generations/mover.py``),
and a mount's publications (``fs/leases/publish.py``, one unit each)."""

from __future__ import annotations

import trio

#: Seconds of the rate a spender may run ahead of its pace.
BURST_SECONDS = 1.0


class ByteRate:
    """Paces bytes to ``per_second`` (0: no limit): a spender's bytes are spent as it goes,
    and it waits while more than :data:`BURST_SECONDS` of the rate is owed, so ``B`` bytes
    take at least ``B / per_second - BURST_SECONDS``."""

    def __init__(self, per_second: int, burst: float = BURST_SECONDS) -> None:
        """``burst``: seconds of the rate a spender may run ahead (:data:`BURST_SECONDS`)."""
        self.per_second = per_second
        self.burst = burst
        self._paid_until = 0.0  # trio time by which everything spent so far is paid for

    async def spend(self, nbytes: int) -> None:
        if self.per_second <= 0 or nbytes <= 0:
            return
        now = trio.current_time()
        self._paid_until = max(self._paid_until, now) + nbytes / self.per_second
        if self._paid_until - self.burst > now:
            await trio.sleep_until(self._paid_until - self.burst)
