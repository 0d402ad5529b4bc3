"""Tier 1: an update that lost at a busy object is abandoned at its other objects, however
fast the busy object moves on (issue 60 item 9, the SQLite journal pattern from two mounts).

A create M over a directory D and a new file F reached only ``r`` servers, against another
client's concurrent update N of D, which won (N is newer: a repair copies it and skips M).
F saw nothing since, so its histories list M at order ``r`` with nothing newer, and every
later request naming F must decide whether M is in D's history: a walk down D's chain,
pruned behind every complete version, one proven link per version of D.  The winner never
backs off (its own view of D shows no contention); the loser backs off before every repair,
and its repair of D and F together was stale at D each time, so each view started the walk
from a newer version of D.  Past 256 links (``request.MAX_PROVEN`` now) every node refused the
request as malformed, for good: EIO at the mount.  Here the winner makes a burst of versions
of D during each backoff of the loser, on in-memory replicas, so the interleaving is exact.
"""

from __future__ import annotations

import random

from qu_helpers import MemCluster, send
from t1_qu_client import make_client, round_budget
from t1_qu_links import inc, ohs_of

from bftfs.ids import client_id
from bftfs.qu.attempt import Attempt
from bftfs.qu.classify import View
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.request import MAX_PROVEN, Operation, Request
from bftfs.qu.timestamp import Timestamp

D, F = 7, 6  # a "directory" and a "file" counter (F's preferred quorum: servers 0-4)
ALL = list(range(6))
BURST = 60  # versions of D the winner makes during each backoff of the loser


def lost_create() -> tuple[MemCluster, Timestamp]:
    """M (client 3's add_all over F and D) at servers 0-2, a newer increment N of D at
    3-5; a client that reads D from all six barriers and copies D past M (N is newer and
    skips M) without touching F, which keeps listing M at order ``r``."""
    m_req = Request(
        int(client_id(3)), (F, D), {D: {}, F: {}}, Operation("counter.add_all", False, 5, 1)
    )
    for k in (2, 4, 5):  # a client whose timestamp orders after M's (same Time)
        cl = MemCluster()
        m = send(cl, [0, 1, 2], m_req)[0].lt
        reps = send(cl, [3, 4, 5], Request(int(client_id(k)), (D,), {D: {}}, inc(1)))
        assert {r.status for r in reps.values()} == {ReplyStatus.OK}
        if reps[3].lt > m:
            break
    else:
        raise AssertionError("no client id orders after M")
    for kind in ("barrier", "copy"):
        reps = send(cl, ALL, Request(int(client_id(1)), (D,), {D: ohs_of(cl, D, ALL)}, None))
        assert {r.type for r in reps.values()} == {kind}
    return cl, m


async def test_a_lost_create_is_abandoned_at_the_file_while_the_directory_moves_on() -> None:
    cl, m_lt = lost_create()
    winner = make_client(cl, 2)
    loser = make_client(cl, 0)
    bursts = [0]

    async def winner_runs(_delay: float) -> None:
        # The loser's backoff: the winner, which never backs off, moves D on meanwhile.
        bursts[0] += 1
        for _ in range(BURST):
            await winner.update(D, "counter.increment", 1)

    loser._sleep = winner_runs
    round_budget(loser, 4 * MAX_PROVEN)
    await loser.update((F, D), "counter.add_all", 1)
    assert bursts[0] >= 1  # the loser did back off while D moved on
    moves = 1 + BURST * bursts[0]  # N, then the winner's bursts
    assert await loser.query(F, "counter.fetch") == 1  # M abandoned at F as at D
    assert await loser.query(D, "counter.fetch") == moves + 1
    # M is decided at F from its own histories now: no walk down D's chain.
    v = View({D: ohs_of(cl, D, ALL), F: ohs_of(cl, F, ALL)}, cl.th)
    assert all(c.lt != m_lt for c in v.candidates(F)) or (
        v.wanted_links() == frozenset() and v.used_links() == frozenset()
    )


async def _backoffs(progress: bool, count: int = 30) -> list[float]:
    """The delays of ``count`` backoffs of one operation, another client completing a
    version of its object before each (``progress``) or nobody."""
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    st = Attempt(MemCluster().th, random.Random(7), sleep, ())
    for k in range(count):
        st.progressed(((D, k if progress else 0),))
        await st.back_off()
    return slept


async def test_backoff_does_not_grow_while_another_client_makes_progress() -> None:
    """Exponential backoff is against livelock: while nobody completes anything it doubles
    up to its cap as before.  Against a client that completes a version between every two
    backoffs it stays short; before, the loser's 30 doubling backoffs waited 17-19 s for
    one create while the winner's every new operation started again at 1 ms (the t4 journal
    test's fsync)."""
    stuck = await _backoffs(progress=False)
    assert max(stuck) > 0.5 and sum(stuck) > 10  # doubles to the 1 s cap, as before
    busy = await _backoffs(progress=True)
    assert max(busy) <= 0.004 and sum(busy) < 0.1


async def test_a_complete_update_shown_incomplete_by_one_quorum_is_not_walked_to() -> None:
    """The same journal pattern with one name (unlink, then create again): the loser's
    update M over F and D completed at servers 0-4, then D moved 300 versions on.  F's
    preferred quorum (servers 1-5) shows M at order 4, so the client weighed excluding it
    by walking D's pruned chain: 300 proven links, refused by every node, and every later
    operation naming F walked again (207 EIO in a row on that mount).  Read from all six,
    M is complete and nothing needs deciding."""
    f, d = 1, 7  # F's preferred quorum: servers 1-5; D's too
    cl = MemCluster()
    m_req = Request(
        int(client_id(3)), (f, d), {d: {}, f: {}}, Operation("counter.add_all", False, 5, 1)
    )
    assert {r.status for r in send(cl, [0, 1, 2, 3, 4], m_req).values()} == {ReplyStatus.OK}
    five = [0, 1, 2, 3, 4]
    for seq in range(2, MAX_PROVEN + 46):
        req = Request(int(client_id(2)), (d,), {d: ohs_of(cl, d, five)}, inc(seq))
        assert {r.status for r in send(cl, ALL, req).values()} == {ReplyStatus.OK}
    loser = make_client(cl, 0)
    round_budget(loser, 4 * MAX_PROVEN)
    await loser.update((f, d), "counter.add_all", 1)
    assert await loser.query(f, "counter.fetch") == 5 + 1
    assert loser.statistics().link_proofs < MAX_PROVEN


async def test_an_established_update_is_copied_forward_at_the_file_alone() -> None:
    """M over F and D completed at servers 0-4 and D moved on from it; then server 0 went
    down, so every quorum shows M at F at order 4 and reading all servers cannot help.  M
    is established (D's chain meets it), and F needs a copy of it: before, a copy of F and
    D together, stale at D after each backoff while the winner moved D on, walked D's
    chain from a newer version each time, past 256 links.  Established, M is copied
    forward at F alone."""
    f, d = 1, 7
    cl = MemCluster()
    m_req = Request(
        int(client_id(3)), (f, d), {d: {}, f: {}}, Operation("counter.add_all", False, 5, 1)
    )
    assert {r.status for r in send(cl, [0, 1, 2, 3, 4], m_req).values()} == {ReplyStatus.OK}
    five = [0, 1, 2, 3, 4]
    for seq in (2, 3):
        req = Request(int(client_id(2)), (d,), {d: ohs_of(cl, d, five)}, inc(seq))
        assert {r.status for r in send(cl, ALL, req).values()} == {ReplyStatus.OK}
    cl.down.add(0)
    winner = make_client(cl, 2)
    loser = make_client(cl, 0)

    async def winner_runs(_delay: float) -> None:
        for _ in range(BURST):
            await winner.update(d, "counter.increment", 1)

    loser._sleep = winner_runs
    round_budget(loser, 4 * MAX_PROVEN)
    await loser.update((f, d), "counter.add_all", 1)
    assert await loser.query(f, "counter.fetch") == 5 + 1
