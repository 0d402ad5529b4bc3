"""Tier 1: the pace of a mount's lease-session renewals (``fs/leases/sessions.py``) when
they fail at once, on trio's mock clock (its time moves only while every task waits).

A renewal the nodes refuse fails at once (a revoked client, a session object a move
refuses): the renewing task asked again without a pause, with no wait in between, and
spent a core on it.  The Q/U update is a function here that answers the first renewal and
refuses the others as every node would (``MethodRefused``, what the Q/U client raises)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from bftfs.fs.leases.sessions import RETRY_MAX, Sessions
from bftfs.qu.objects import MethodRefused

TERM = 10.0
#: More refused renewals than this within the test's virtual minute: the loop spins.
SPINNING = 200


@pytest.mark.expected_logs("bftfs.fs.leases.sessions", "WARNING", match="not renewed")
def test_refused_renewals_pause_doubling_and_a_later_one_renews() -> None:
    calls: list[float] = []
    refuse = [True]
    spun = [False]

    async def main() -> None:
        stats: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:

            async def update(oids: list[int], method: str, arg: dict[str, Any]) -> Any:
                await trio.lowlevel.checkpoint()  # as a network call would
                calls.append(trio.current_time())
                if len(calls) > SPINNING:
                    spun[0] = True
                    nursery.cancel_scope.cancel()
                if len(calls) > 1 and refuse[0]:
                    raise MethodRefused("unauthorized")
                return {"e": arg["lt"] + arg["term"], "g": 1, "r": []}

            clock = [10**18]

            def wall_ns() -> int:
                return clock[0] + int(trio.current_time() * 1e9)

            sessions = Sessions(
                update, client=3, mount=1, n=4, term=TERM, wall_ns=wall_ns,
                spawn=nursery.start_soon, stats=stats,
            )  # fmt: skip
            sessions.holds = lambda slot: True
            assert await sessions.ready(0) == 1
            sessions.bound(0)  # (as the grant that asked for the session would)
            await trio.sleep(60.0)
            refused = len(calls) - 1
            refuse[0] = False
            renewed = stats["session_renewals"]
            await trio.sleep(RETRY_MAX + TERM)
            assert stats["session_renewals"] > renewed, dict(stats)
            nursery.cancel_scope.cancel()
            # First refusal half a use in (about 4 s); then 0.25, 0.5, 1, 2, 2, ... s apart.
            assert 20 <= refused <= 40, (refused, dict(stats))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not spun[0], f"{len(calls)} renewals without time passing"
    gaps = [b - a for a, b in zip(calls[1:], calls[2:], strict=False)][:6]
    assert gaps[:4] == [0.25, 0.5, 1.0, 2.0], gaps


def test_a_session_whose_first_lease_lands_after_the_renewal_loop_looked_is_renewed() -> None:
    """The renewing loop starts with the grant's ``ready`` and runs while the grant's
    update is under way: it found no bound lease yet and ended, and the lease that landed
    then was never renewed (PostMark at b = 2: one renewal in every run, the session found
    ended 28 s in and its held-back removals sent at once).  A bound grant now tells the
    sessions (``Sessions.bound``), which keep renewing while it is held."""
    held: set[int] = set()
    renewals: list[float] = []

    async def main() -> None:
        stats: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:

            async def update(oids: list[int], method: str, arg: dict[str, Any]) -> Any:
                await trio.sleep(0.01)  # a round trip: the loop runs meanwhile
                renewals.append(trio.current_time())
                return {"e": arg["lt"] + arg["term"], "g": 1, "r": []}

            def wall_ns() -> int:
                return 10**18 + int(trio.current_time() * 1e9)

            sessions = Sessions(
                update, client=3, mount=1, n=4, term=TERM, wall_ns=wall_ns,
                spawn=nursery.start_soon, stats=stats,
            )  # fmt: skip
            sessions.holds = lambda slot: slot in held
            gen = await sessions.ready(0)
            await trio.sleep(0.05)  # the grant's own update
            assert gen == 1
            held.add(0)
            sessions.bound(0)
            await trio.sleep(3 * TERM)
            ends = sessions.ends(0, 1)
            assert ends is not None and ends[0] > trio.current_time(), (renewals, dict(stats))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(renewals) >= 5, renewals
