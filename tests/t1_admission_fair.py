"""Fair admission across principals (issue 64): the shared handler-slot pool of
net/admission.py, granted round-robin, pure and under trio's ``MockClock``.

A flooder with a thousand requests queued must not stand before a correct client's one:
the client's request is granted within one round of the ring (one grant per principal
waiting), whatever order the flooder's requests arrived in (seeded).
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from bftfs.ids import PrincipalId, client_id, is_node
from bftfs.net.admission import Admission, FairSlots, Limits

FLOODER, CORRECT, THIRD = (PrincipalId(int(client_id(i))) for i in range(3))


def _run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_a_lone_request_is_granted_within_one_round_of_a_thousand_queued() -> None:
    pool: FairSlots[str] = FairSlots(4)
    assert all(pool.request(FLOODER, f"f{i}") for i in range(4))  # the pool fills
    assert pool.busy == 4
    for i in range(4, 1004):
        assert not pool.request(FLOODER, f"f{i}")
    assert not pool.request(CORRECT, "c")
    # One round, two principals waiting: the flooder (first in the ring), then the client.
    assert [pool.release() for _ in range(2)] == ["f4", "c"]
    assert pool.waiting(CORRECT) == 0 and pool.waiting(FLOODER) == 999
    # Every waiter is served, in its principal's order, and the pool drains.
    assert [pool.release() for _ in range(999)] == [f"f{i}" for i in range(5, 1004)]
    assert pool.busy == 4
    assert [pool.release() for _ in range(4)] == [None] * 4 and pool.busy == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_waiting_principal_gets_one_grant_per_round(seed: int) -> None:
    rng = random.Random(seed)
    pool: FairSlots[tuple[PrincipalId, int]] = FairSlots(2)
    assert pool.request(THIRD, (THIRD, -1)) and pool.request(THIRD, (THIRD, -2))
    arrivals = [FLOODER] * 300 + [THIRD] * 3
    rng.shuffle(arrivals)
    arrivals.insert(rng.randrange(len(arrivals) + 1), CORRECT)
    for i, pid in enumerate(arrivals):
        assert not pool.request(pid, (pid, i))
    order = []
    while (w := pool.release()) is not None:
        order.append(w[0])
    # Wherever the correct client's request arrived, at most one request of each other
    # principal is granted before it.
    before = order[: order.index(CORRECT)]
    assert before.count(FLOODER) <= 1 and before.count(THIRD) <= 1
    # While another waits, no principal gets two grants running.
    last_other = max(i for i, pid in enumerate(order) if pid != FLOODER)
    assert all(order[i] != order[i + 1] for i in range(last_other))
    assert sorted(order) == sorted(arrivals)


def test_a_withdrawn_waiter_is_never_granted() -> None:
    pool: FairSlots[str] = FairSlots(1)
    assert pool.request(FLOODER, "f0")
    assert not pool.request(CORRECT, "c") and not pool.request(FLOODER, "f1")
    pool.withdraw(CORRECT, "c")
    assert pool.release() == "f1" and pool.release() is None and pool.busy == 0


def test_admission_lets_a_correct_client_past_a_flooders_thousand_requests() -> None:
    async def main() -> None:
        limits = Limits(
            max_inflight=2000,
            requests_per_second=0,
            bytes_per_second=0,
            burst_seconds=1,
            handler_slots=8,
        )
        adm = Admission(limits, exempt=is_node)
        order: list[PrincipalId] = []

        async def one(pid: PrincipalId) -> None:
            await adm.admit(pid, 1, 100)
            order.append(pid)

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(one, FLOODER)
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == 8  # the pool is full; 992 of the flooder's wait
            nursery.start_soon(one, CORRECT)
            await trio.testing.wait_all_tasks_blocked()
            assert order[-1] == FLOODER
            served = 0
            while CORRECT not in order:  # the flooder's requests are answered one by one
                adm.release(FLOODER)
                served += 1
                await trio.testing.wait_all_tasks_blocked()
            assert served <= 2, f"the correct client waited for {served} of the flooder's"
            assert not adm.limited(PrincipalId(3))  # a node is never queued (server.py)
            for _ in range(1000):
                adm.release(order[0])
                await trio.testing.wait_all_tasks_blocked()
                if len(order) == 1001:
                    break
        assert len(order) == 1001  # nothing refused or dropped
        assert adm.statistics()[int(CORRECT)]["fair_waits"] == 1
        assert adm.stats["limits.fair_waits"] == 993

    _run(main)


def test_a_cancelled_waiter_gives_its_turn_back() -> None:
    async def main() -> None:
        limits = Limits(
            max_inflight=10,
            requests_per_second=0,
            bytes_per_second=0,
            burst_seconds=1,
            handler_slots=1,
        )
        adm = Admission(limits, exempt=is_node)
        await adm.admit(FLOODER, 1, 1)
        with trio.move_on_after(1):
            await adm.admit(CORRECT, 1, 1)  # waits for the pool, then its connection ends
        assert adm.inflight(CORRECT) == 0
        adm.release(FLOODER)
        assert adm.pool is not None and adm.pool.busy == 0
        with trio.fail_after(1):
            await adm.admit(CORRECT, 1, 1)

    _run(main)
