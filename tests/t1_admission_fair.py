"""Fair admission across principals (issue 64): the shared handler-slot pool of
net/admission.py, granted round-robin, pure and under trio's ``MockClock``.

A flooder with a thousand requests queued must not stand before a correct client's one:
the client's request is granted within one round of the ring (one grant per principal
waiting), whatever order the flooder's requests arrived in (seeded).
"""

from __future__ import annotations

import random
from collections import deque

import pytest
import trio
import trio.testing

from bftfs.ids import PrincipalId, client_id, is_node
from bftfs.net.admission import RECENT, Admission, FairSlots, Limits

FLOODER, CORRECT, THIRD, FOURTH = (PrincipalId(int(client_id(i))) for i in range(4))


def _run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_a_lone_request_is_granted_within_one_round_of_a_thousand_queued() -> None:
    pool: FairSlots[str] = FairSlots(4)
    assert pool.request(THIRD, "t")  # another principal holds a slot: the pool is shared
    assert all(pool.request(FLOODER, f"f{i}") for i in range(3))  # the pool fills
    assert pool.busy == 4
    for i in range(3, 1003):
        assert not pool.request(FLOODER, f"f{i}")
    assert not pool.request(CORRECT, "c")
    # One round, two principals waiting: the flooder (first in the ring), then the client.
    assert [pool.release(FLOODER) for _ in range(2)] == ["f3", "c"]
    assert pool.waiting(CORRECT) == 0 and pool.waiting(FLOODER) == 999
    # Every waiter is served, in its principal's order, and the pool drains.
    assert [pool.release(FLOODER) for _ in range(999)] == [f"f{i}" for i in range(4, 1003)]
    assert pool.busy == 4
    held = [FLOODER, FLOODER, CORRECT, THIRD]
    assert [pool.release(pid) for pid in held] == [None] * 4 and pool.busy == 0


def test_a_principal_alone_is_not_capped_and_shares_once_another_comes() -> None:
    """The pool shares a node; it does not cap a lone client (a writer of big files keeps
    more frames in flight than the pool has slots, each holding one through its group
    commit)."""
    pool: FairSlots[str] = FairSlots(2)
    assert all(pool.request(FLOODER, f"f{i}") for i in range(10)) and pool.busy == 10
    assert not pool.request(CORRECT, "c")  # another holds slots, all taken: its turn
    assert not pool.request(FLOODER, "f10")  # and the first now waits in turn too
    assert pool.release(FLOODER) == "c" and pool.release(FLOODER) == "f10"
    assert pool.release(CORRECT) is None and pool.busy == 9
    assert not pool.request(CORRECT, "c2")  # the flooder holds nine: no slot free


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_waiting_principal_gets_one_grant_per_round(seed: int) -> None:
    rng = random.Random(seed)
    pool: FairSlots[tuple[PrincipalId, int]] = FairSlots(2)
    assert pool.request(THIRD, (THIRD, -1)) and pool.request(FOURTH, (FOURTH, -2))
    arrivals = [FLOODER] * 300 + [THIRD] * 3
    rng.shuffle(arrivals)
    arrivals.insert(rng.randrange(len(arrivals) + 1), CORRECT)
    for i, pid in enumerate(arrivals):
        assert not pool.request(pid, (pid, i))
    order = []
    holders = deque([THIRD, FOURTH])
    while (w := pool.release(holders.popleft())) is not None:
        order.append(w[0])
        holders.append(w[0])
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
    assert pool.release(FLOODER) == "f1" and pool.release(FLOODER) is None and pool.busy == 0


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
            nursery.start_soon(one, THIRD)  # holds a slot: the pool is shared from now on
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(1000):
                nursery.start_soon(one, FLOODER)
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == 8  # the pool is full; 993 of the flooder's wait
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
                adm.release(FLOODER)
                await trio.testing.wait_all_tasks_blocked()
                if len(order) == 1002:
                    break
        assert len(order) == 1002  # nothing refused or dropped
        assert adm.statistics()[int(CORRECT)]["fair_waits"] == 1
        assert adm.stats["limits.fair_waits"] == 994

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


def test_a_client_that_used_the_node_lately_still_finds_a_flooder_capped() -> None:
    """Between a correct client's operations it holds no slot; a flooder alone since
    less than ``RECENT`` stays at the pool's share, so the client's next request does not
    arrive behind ``max_inflight`` of the flooder's; once the client is gone longer, the
    flooder is alone and not capped."""
    pool: FairSlots[str] = FairSlots(2)
    assert pool.request(CORRECT, "c", now=10.0) and pool.release(CORRECT, now=10.0) is None
    t = 10.0 + RECENT / 2
    assert pool.request(FLOODER, "f0", t) and pool.request(FLOODER, "f1", t)
    assert not pool.request(FLOODER, "f2", t)  # the pool's share: the client used it lately
    assert pool.release(FLOODER, t) == "f2"
    later = 10.0 + 2 * RECENT
    assert pool.request(FLOODER, "f3", later)  # the client is gone: a flooder alone


def test_work_charged_to_a_client_delays_its_next_request_not_anothers() -> None:
    """A node's calls to other nodes on a client's behalf (proofs of links it sent bare,
    ``qu_server``) are charged to that client's request rate: its next request waits for
    the debt; another client's does not."""

    async def main() -> None:
        limits = Limits(
            max_inflight=10, requests_per_second=100, bytes_per_second=0, burst_seconds=1
        )
        adm = Admission(limits, exempt=is_node)
        await adm.admit(FLOODER, 1, 100)
        adm.release(FLOODER)
        adm.charge(FLOODER, 299)  # 300 tokens taken of a burst of 100: 2 s of debt
        start = trio.current_time()
        await adm.admit(CORRECT, 1, 100)
        assert trio.current_time() == start
        await adm.admit(FLOODER, 1, 100)
        assert trio.current_time() - start == pytest.approx(2.01)
        assert adm.statistics()[int(FLOODER)]["charged"] == 299

    _run(main)
