"""Tier 1: a node's shared object syncs and claimed candidates (``node/qu_inflight.py``),
on trio's virtual clock: who waits for whom, for how long at most, and when a sync is
shared."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio
import trio.testing

from bftfs.ids import NodeId
from bftfs.net.quorum import INVALID_REPLY, QuorumResult
from bftfs.node.qu_inflight import (
    CLAIM_SECONDS,
    FAILED_SECONDS,
    KEPT_SECONDS,
    WAIT_SECONDS,
    Held,
    InFlight,
)
from bftfs.node.qu_objsync import every_host_answered
from bftfs.node.store import Store
from bftfs.qu.timestamp import Timestamp

LT = Timestamp(5, False, 65536, b"\x01" * 16)
OLDER = Timestamp(4, False, 65536, b"\x02" * 16)


def run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_a_request_waits_for_the_claimant_of_the_version_it_needs_until_it_ends() -> None:
    async def main() -> None:
        stats: Counter[str] = Counter()
        inflight = InFlight(stats)
        mine = inflight.claim([7, 9], LT, trio.current_time())
        assert mine == ((7, LT), (9, LT))
        assert inflight.claim([7], LT, trio.current_time()) == ()  # a resent copy claims nothing
        assert not await inflight.wait_made([(7, OLDER), (8, LT)])  # nobody makes these
        ended = []

        async def claimant() -> None:
            await trio.sleep(0.3)
            ended.append(trio.current_time())
            inflight.release(mine)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claimant)
            assert await inflight.wait_made([(9, LT)])
            assert ended == [trio.current_time()]  # woken when it ended, not later
        assert stats["qu.sync_waited"] == 1
        assert not await inflight.wait_made([(9, LT)])  # released: nothing to wait for

    run(main)


def test_a_claimant_that_never_ends_holds_a_waiter_at_most_wait_seconds() -> None:
    async def main() -> None:
        inflight = InFlight(Counter())
        inflight.claim([7], LT, trio.current_time())
        t0 = trio.current_time()
        assert await inflight.wait_made([(7, LT)])
        assert trio.current_time() - t0 == WAIT_SECONDS

    run(main)


def test_wants_of_one_version_share_a_sync_and_a_cancelled_asker_is_replaced() -> None:
    async def main() -> None:
        stats: Counter[str] = Counter()
        inflight = InFlight(stats)
        runs = []

        async def sync() -> tuple[bytes | None, bytes]:
            runs.append(trio.current_time())
            await trio.sleep(0.1)
            return b"state", b"ap"

        got = []

        async def want() -> None:
            got.append(await inflight.fetch((7, LT), sync))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(want)
        assert len(runs) == 1 and got == [(b"state", b"ap")] * 3
        assert stats["qu.sync_shared"] == 2
        await want()  # over, and kept a while for the next want of it
        assert len(runs) == 1 and stats["qu.sync_reused"] == 1
        await trio.sleep(KEPT_SECONDS)
        await want()  # no longer kept: synced again
        assert len(runs) == 2

        first = trio.CancelScope()

        async def cancelled_want() -> None:
            with first:
                await inflight.fetch((9, LT), sync)

        async def other_want() -> None:
            got.append(await inflight.fetch((9, LT), sync))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_want)
            await trio.sleep(0.01)
            nursery.start_soon(other_want)  # shares the first asker's sync ...
            await trio.sleep(0.01)
            first.cancel()  # ... which ends without an answer: it asks itself
        assert len(runs) == 4 and got[-1] == (b"state", b"ap")

    run(main)


def test_a_version_whose_sync_failed_is_not_asked_for_again_for_a_while() -> None:
    async def main() -> None:
        stats: Counter[str] = Counter()
        inflight = InFlight(stats)
        runs = []

        async def gone() -> None:
            runs.append(trio.current_time())
            await trio.sleep(0.5)  # every host answers that it holds no such version
            inflight.gone(current[0])

        async def timed_out() -> None:
            runs.append(trio.current_time())
            await trio.sleep(2.0)  # no answer in time: not remembered

        current = [(6, LT)]
        assert await inflight.fetch((6, LT), timed_out) is None
        assert await inflight.fetch((6, LT), timed_out) is None
        assert len(runs) == 2
        runs.clear()
        current[0] = (7, LT)

        assert await inflight.fetch((7, LT), gone) is None
        await trio.sleep(FAILED_SECONDS - 1.0)
        assert await inflight.fetch((7, LT), gone) is None  # at once, without a sync
        assert len(runs) == 1 and stats["qu.sync_skipped"] == 1
        current[0] = (8, LT)
        assert await inflight.fetch((8, LT), gone) is None  # another version is asked for
        current[0] = (7, LT)
        await trio.sleep(1.0)
        assert await inflight.fetch((7, LT), gone) is None
        assert len(runs) == 3

    run(main)


def test_kept_versions_are_bounded_in_number_and_bytes() -> None:
    async def main() -> None:
        from bftfs.node import qu_inflight

        inflight = InFlight(Counter())
        big = b"x" * (qu_inflight.MAX_KEPT_BYTES // 8)

        async def sync() -> tuple[bytes | None, bytes]:
            return big, b""

        for oid in range(10):
            await inflight.fetch((oid, LT), sync)
        assert inflight._kept_bytes <= qu_inflight.MAX_KEPT_BYTES
        assert (0, LT) not in inflight._kept and (9, LT) in inflight._kept  # oldest went

        async def small() -> tuple[bytes | None, bytes]:
            return None, b"ap"

        for oid in range(100, 100 + qu_inflight.MAX_KEPT + 5):
            await inflight.fetch((oid, LT), small)
        assert len(inflight._kept) == qu_inflight.MAX_KEPT

    run(main)


def test_a_claim_its_request_never_released_stops_counting_when_it_expires() -> None:
    """A claim whose request never released it (the request died without ending) holds
    waiters at most until it expires; from then on it is no claim at all: a request that
    needs the version syncs it, and a new request may claim it.  (Before, an expired
    claim stayed in the table and each wait for it returned at once as "waited", so
    every request that needed the version stepped again four times without syncing it
    and failed, "object sync did not settle", until 4 096 claims had piled up.)"""

    async def main() -> None:
        stats: Counter[str] = Counter()
        inflight = InFlight(stats)
        assert inflight.claim([7, 8], LT, trio.current_time())
        t0 = trio.current_time()
        assert await inflight.wait_made([(7, LT), (8, LT)])
        assert trio.current_time() - t0 == WAIT_SECONDS  # in all, not for each claim
        await trio.sleep(CLAIM_SECONDS)
        t0 = trio.current_time()
        assert not await inflight.wait_made([(7, LT)])  # expired: sync it
        assert stats["qu.sync_waited"] == 2 and trio.current_time() == t0
        assert inflight.claim([8], LT, trio.current_time()) == ((8, LT),)  # taken over
        assert await inflight.wait_made([(8, LT)])

    run(main)


def test_a_store_step_that_runs_after_its_request_ended_claims_nothing(tmp_path: Path) -> None:
    """A durable store runs a queued step even when the task that queued it was cancelled
    (its client went away): the step's claim must not outlive the request, which has
    released its claims already and will release nothing more."""

    async def main() -> None:
        store = Store(tmp_path / "store", map_size=1 << 22, durable=True)
        inflight = InFlight(Counter())
        held = Held()
        now = trio.current_time()  # the step runs in the committer's worker thread

        def step(_kv: object) -> None:
            inflight.claim_for(held, [7], LT, now)

        async def request(scope: trio.CancelScope) -> None:
            with scope:
                try:
                    await store.write(step)  # queued; its task is cancelled before it runs
                finally:
                    inflight.end(held)

        try:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()
                nursery.start_soon(request, scope)
                await trio.testing.wait_all_tasks_blocked()
                assert store.queued == (1, 0)
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(store.committer)
                await store.write(lambda _kv: None)  # after the cancelled request's step
                assert store.commits >= 1  # it ran (jobs run in order)
                assert not await inflight.wait_made([(7, LT)])
                assert held.keys == []
                nursery.cancel_scope.cancel()
        finally:
            store.close()

    trio.run(main)


def test_a_version_is_skipped_only_when_every_host_answered_without_it() -> None:
    """The evidence for :meth:`InFlight.gone`: every host asked answered (with the
    version, without it, or a reply that did not count, as a liar's); a host that refused
    or never answered may hold the version, so a sync that ended so is not remembered."""
    hosts = [NodeId(i) for i in range(1, 6)]
    liar, holder = hosts[0], hosts[1]
    answered = QuorumResult(
        replies={holder: {"s": b"state", "ap": b"ap"}},
        errors={h: INVALID_REPLY for h in hosts if h != holder},
    )
    assert every_host_answered(answered, hosts)
    refused = QuorumResult(
        replies={liar: {"s": b"forged", "ap": b"ap"}},
        errors={h: INVALID_REPLY for h in hosts[2:]} | {holder: "refused: internal: X"},
    )
    assert not every_host_answered(refused, hosts)
    assert not every_host_answered(
        QuorumResult(errors={h: INVALID_REPLY for h in hosts[1:]}), hosts
    )
