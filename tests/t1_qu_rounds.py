"""Tier 1: when a Q/U client's round has its quorum (``qu/rounds.py``, lines 600-604).

A round ends at ``q`` OK replies; the histories they carry are what the client classifies
next.  A server whose history the client leaves out (a stray holder: an equivocating
server's forged newer candidate) adds an OK reply but no history, so a barrier round that
counted it showed its barrier at ``q - 1`` fresh histories when a correct server was
slower than the forger, and the client set barrier after barrier (``t2_qu_hunt``'s
livelock seeds).  Scripted here on :class:`qu_net.DelayNet`: a seeded, mock-clock network
with one slow server.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing
from qu_helpers import MemCluster, send
from qu_net import DelayNet, seed_trio

from bftfs.ids import client_id
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reply import Reply
from bftfs.qu.request import Operation, Request
from bftfs.qu.rounds import QuorumRounds

SLOW = 2  # a correct server, slower than the others
OID = 7


def _barrier_round(left_out: frozenset[int]) -> dict[int, Reply]:
    """Leave an increment of ``OID`` at two servers (incomplete: the next repair is a
    barrier), then send the barrier to all six over the net; the round's replies."""
    seed_trio(1)
    got: dict[int, Reply] = {}

    async def main() -> None:
        cl = MemCluster(seed=1, clients=2)
        cl.slow = {SLOW}
        c0, c1 = int(client_id(0)), int(client_id(1))

        def ohs() -> dict[int, dict]:
            return {OID: {s: cl.ohs_entry(s, OID) for s in range(cl.th.n)}}

        inc = Request(c0, (OID,), ohs(), Operation("counter.increment", False, 1, 1), None, ())
        send(cl, [0, 1], inc)
        barrier = Request(c1, (OID,), ohs(), None, None, ())
        async with trio.open_nursery() as wire:
            net = DelayNet(cl, wire, seed=1, mean=0.005, slow=0.02)
            rounds = QuorumRounds(
                net.endpoint(1, 1.0), cl.th, Counter(), probe_after=0.05, timeout=1.0, batch=False
            )
            got.update(await rounds.request((OID,), barrier, list(range(cl.th.n)), left_out))
            wire.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return got


def test_a_barrier_round_counting_every_server_ends_without_the_slow_one() -> None:
    """The setting the rule is for: five fast OK replies end the round, the slow
    server's is not among them (so its history in the client's cache predates the
    barrier)."""
    got = _barrier_round(frozenset())
    assert len(got) == 5 and SLOW not in got
    assert all(r.status is ReplyStatus.OK and r.type == "barrier" for r in got.values())


def test_a_barrier_round_waits_for_q_servers_whose_histories_count() -> None:
    """With server 5 left out (its histories are not part of the OHS), the round waits for
    the slow server: q OK replies from servers whose histories count, so the barrier
    shows at q fresh histories and classifies COPY next."""
    got = _barrier_round(frozenset({5}))
    assert SLOW in got
    counted = [s for s, r in got.items() if r.status is ReplyStatus.OK and s != 5]
    assert len(counted) >= 5
    barrier = {r.lt for r in got.values()}
    assert len(barrier) == 1
    lt = barrier.pop()
    assert all(any(c.lt == lt for c in got[s].hist[0].rh) for s in counted)
