"""Tier 1: the Q/U client driver over in-memory replicas (no network, no clock).

The real :class:`bftfs.qu.client.QUClient` runs against :class:`qu_helpers.MemEndpoint`,
whose deliveries interleave concurrent clients in a seeded order.  Every run's history is
checked for strict serializability (linearizability for single objects).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import re
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from qu_helpers import MemCluster, Recorder, check_serializable, send

from bftfs.ids import client_id
from bftfs.net.errors import RemoteError
from bftfs.outcome import StorageFull, patience
from bftfs.qu.attempt import MAX_STALLS, Attempt, TooManyObjects
from bftfs.qu.client import QUClient
from bftfs.qu.core import backoff_delay
from bftfs.qu.messages import KIND_REQUEST, ReplyStatus
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reads import read_version
from bftfs.qu.request import Operation, Request
from bftfs.testing.byzantine.qu import BEHAVIOURS


def make_client(cl: MemCluster, k: int, seed: int = 0, objects: int | None = None) -> QUClient:
    """Client ``k`` of ``cl``, naming at most ``objects`` per request if given."""

    async def no_sleep(_d: float) -> None:
        await trio.lowlevel.checkpoint()

    return QUClient(
        cl.endpoint(k),
        dataclasses.replace(cl.th, objects=objects or cl.th.objects),
        client_id=int(client_id(k)),
        rng=random.Random(seed * 100 + k),
        seq_start=1000 * (k + 1),
        sleep=no_sleep,
    )


def test_backoff_is_random_exponential_from_1ms() -> None:
    rng = random.Random(1)
    for attempt in range(6):
        d = backoff_delay(attempt, rng)
        assert 0.001 * 2**attempt / 2 <= d <= 0.001 * 2**attempt
    assert backoff_delay(40, rng) <= 1.0


async def test_single_writer_many_readers_need_no_barrier_copy_or_backoff() -> None:
    cl = MemCluster(seed=3)
    rec = Recorder()
    writer = make_client(cl, 0)
    readers = [make_client(cl, k) for k in (1, 2, 3)]

    async def write() -> None:
        for _ in range(15):
            await rec.run(writer, 7, "counter.increment", 1, False)

    async def read(c: QUClient) -> None:
        for _ in range(10):
            await rec.run(c, 7, "counter.fetch", None, True)

    async with trio.open_nursery() as n:
        n.start_soon(write)
        for c in readers:
            n.start_soon(read, c)
    for c in [writer, *readers]:
        s = c.statistics()
        assert (s.barriers, s.copies, s.backoffs) == (0, 0, 0), s
    assert check_serializable(rec.ops)


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_concurrent_increments_count_exactly(seed: int) -> None:
    cl = MemCluster(seed=seed)
    rec = Recorder()
    clients = [make_client(cl, k, seed) for k in range(4)]

    async def work(c: QUClient) -> None:
        for _ in range(6):
            await rec.run(c, 7, "counter.increment", 1, False)

    async with trio.open_nursery() as n:
        for c in clients:
            n.start_soon(work, c)
    final = await clients[0].query(7, "counter.fetch")
    assert final == sum(1 for o in rec.ops if o.ok) == 24
    assert check_serializable(rec.ops)


async def test_the_client_counts_what_its_backoffs_waited() -> None:
    """``backoff_ms`` (the split of two PostMarks in one directory, issue 62) is the sum
    of the waits the client asked for between repairs, and contention made some."""
    cl = MemCluster(seed=1)
    waited: list[list[float]] = [[] for _ in range(4)]

    def client(k: int) -> QUClient:
        async def counted(d: float) -> None:
            waited[k].append(d)
            await trio.lowlevel.checkpoint()

        return QUClient(
            cl.endpoint(k),
            cl.th,
            client_id=int(client_id(k)),
            rng=random.Random(k),
            seq_start=1000 * (k + 1),
            sleep=counted,
        )

    clients = [client(k) for k in range(4)]

    async def work(c: QUClient) -> None:
        for _ in range(6):
            await c.update(7, "counter.increment", 1)

    async with trio.open_nursery() as n:
        for c in clients:
            n.start_soon(work, c)
    stats = [c.statistics() for c in clients]
    assert sum(s.backoffs for s in stats) > 0
    for s, mine in zip(stats, waited, strict=True):
        assert s.backoff_ms == sum(round(1000 * d) for d in mine), (s, mine)


async def test_two_writers_taking_turns_pay_one_round_behind_each_a_lone_writer_none() -> None:
    """Two clients updating one object in turn (two mounts creating in one directory):
    each update's first round finds the other's change and fails, counted ``behind``
    (no barrier, copy or backoff), and the second lands; a lone writer needs one round."""
    cl = MemCluster(seed=1)
    a, b = make_client(cl, 0), make_client(cl, 1)
    for _ in range(10):
        await a.update(7, "counter.increment", 1)
        await b.update(7, "counter.increment", 1)
    sa, sb = a.statistics(), b.statistics()
    assert (sa.operations, sa.rounds, sa.behind) == (10, 19, 9), sa
    assert (sb.operations, sb.rounds, sb.behind) == (10, 20, 10), sb
    assert (sa.barriers, sa.copies, sa.backoffs, sb.barriers, sb.copies, sb.backoffs) == (0,) * 6
    assert (sa.behind_queries, sb.behind_queries) == (0, 0)  # all of them updates
    for _ in range(10):
        await a.update(7, "counter.increment", 1)
    alone = a.statistics()
    # The first finds b's last change; the nine after it, only its own.
    assert (alone.rounds - sa.rounds, alone.behind - sa.behind) == (11, 1), alone


async def test_multi_object_updates_in_opposite_orders_never_half_apply() -> None:
    cl = MemCluster(seed=5)
    rec = Recorder()
    a, b = make_client(cl, 0), make_client(cl, 1)

    await rec.run(a, 1, "counter.increment", 50, False)
    await rec.run(a, 2, "counter.increment", 50, False)

    async def mover(c: QUClient, src: int, dst: int) -> None:
        for _ in range(5):
            await rec.run(c, (src, dst), "counter.transfer", [src, dst, 3], False)

    async with trio.open_nursery() as n:
        n.start_soon(mover, a, 1, 2)
        n.start_soon(mover, b, 2, 1)
    one, two = [await a.query(o, "counter.fetch") for o in (1, 2)]
    assert one + two == 100 and one == two == 50
    assert check_serializable(rec.ops)
    assert all(o.ok for o in rec.ops)


async def test_client_dying_mid_multi_object_update_is_repaired_all_or_nothing() -> None:
    for reached in ([0, 1], [0, 1, 2], [0, 1, 2, 3]):
        cl = MemCluster(seed=len(reached))
        dead = int(client_id(3))
        op = Operation("counter.add_all", False, 5, 1)
        send(cl, reached, Request(dead, (1, 2), {1: {}, 2: {}}, op))
        r1, r2 = make_client(cl, 0), make_client(cl, 1)
        v1 = await r1.update(1, "counter.increment", 1)
        v2 = await r2.update(2, "counter.increment", 1)
        # Either the dead client's add_all took effect on both objects or on neither.
        assert (v1, v2) in ((1, 1), (6, 6)), (reached, v1, v2)


@pytest.mark.parametrize("reached", [[0, 1], [0, 1, 2, 3]])
async def test_batched_query_whose_repair_spans_nine_objects_repairs_them_one_by_one(
    reached: list[int],
) -> None:
    """Issue 5 (EIO listing a directory on a fresh mount): a query of 8 objects whose latest
    candidates are each a 2-object update with one shared object (8 files created in one
    directory) needs 9 objects to repair together, more than one request may name.  The
    client repairs the newest of those updates on its own first (issue 67: a group at a
    time; the others are then passed by at the shared object and need no deduction), then
    answers; all-or-nothing holds."""
    cl = MemCluster(seed=len(reached))
    dead = int(client_id(3))
    shared, files = 100, list(range(1, 9))
    for seq, f in enumerate(files, 1):
        op = Operation("counter.add_all", False, 5, seq)
        send(cl, reached, Request(dead, (f, shared), {f: {}, shared: {}}, op))
    c = make_client(cl, 0)
    round_budget(c, 200)

    got = await c.query(files, "counter.fetch_all")
    total = await c.query(shared, "counter.fetch")
    values = [v for _, v in got]
    assert [o for o, _ in got] == files
    assert set(values) <= {0, 5}, values
    assert total == sum(values)  # each add_all applied to both of its objects or neither
    # Reached by r = 3 servers or more, the add_alls are ObjCand: deduction needs the
    # shared object, 9 in all, so the client splits.  Reached by 2, they are incomplete:
    # the seed's rule needs no deduction and one repair of the 8 files abandons them.
    assert c.statistics().split_repairs == (1 if len(reached) >= 3 else 0)


async def test_a_query_whose_deduction_spans_many_objects_at_a_server_behind_is_answered() -> None:
    """Issue 60 item 16 (EIO from ``opendir`` on a fresh mount after node replacements,
    ``TooManyObjects``): the server behind (a newcomer still catching up) is in the
    preferred quorum, so every multi-object update it lacks shows order ``q - 1`` there:
    incomplete, and deduction needs every object it names, and those objects' own latest
    updates, more than one request may name even object by object.  Each of those updates
    is complete at ``q`` of all ``n`` servers: the client reads the others' histories too
    and answers."""
    cl = MemCluster(seed=5)
    behind = 0  # preferred quorum of the objects below (ids = 0 mod 6): servers 0-4
    reached = [1, 2, 3, 4, 5]
    dead = int(client_id(3))
    shared = 600
    a, b, c, e = ([6 * (3 * k + i + 1) for i in range(3)] for k in range(4))
    for seq, objs in enumerate(((*a, shared), (*b, shared), (*c, shared), (a[1], *e)), 1):
        o = {x: {s: cl.ohs_entry(s, x) for s in reached} for x in objs}
        op = Operation("counter.add_all", False, 1, seq)
        reps = send(cl, reached, Request(dead, tuple(sorted(objs)), o, op))
        assert {r.status for r in reps.values()} == {ReplyStatus.OK}
    assert cl.ohs_entry(behind, shared).rh == cl.ohs_entry(behind, 6).rh  # nothing there
    client = make_client(cl, 0)
    round_budget(client, 200)
    files = sorted((*a, *b, *c[:2]))
    got = await client.query(files, "counter.fetch_all")
    assert [v for _, v in got] == [1, 2, 1, 1, 1, 1, 1, 1]  # a[1]: U1 and U4


@pytest.mark.parametrize("links", [3, 5])
async def test_a_chain_of_batches_incomplete_at_every_live_server_is_repaired_in_groups(
    links: int,
) -> None:
    """Issue 67 (EIO from lookups in ``rm -rf`` under load, ``TooManyObjects``): a chain of
    4-object updates, each naming the last one's newest object, is at servers 0-4 only,
    and server 4 is down: each is at order ``q - 1`` at every live server, so deduction
    from the first object names ``1 + 3 * links`` objects, and reading every server's
    histories shows nothing more.  The client repairs the newest of the chain on its own,
    then the next, and answers; every update counts at all of its objects or none."""
    cl = MemCluster(seed=links)
    reached = [0, 1, 2, 3, 4]
    dead = int(client_id(3))
    chain = [(6, 12, 18, 24)]
    for _ in range(links - 1):
        last = chain[-1][-1]
        chain.append((last, last + 6, last + 12, last + 18))
    for seq, objs in enumerate(chain, 1):
        o = {x: {s: cl.ohs_entry(s, x) for s in reached} for x in objs}
        op = Operation("counter.add_all", False, 1, seq)
        reps = send(cl, reached, Request(dead, objs, o, op))
        assert {r.status for r in reps.values()} == {ReplyStatus.OK}
    cl.down.add(4)
    c = make_client(cl, 0)
    round_budget(c, 40 * links)
    assert await c.query(6, "counter.fetch") == 1
    # Newest first, each repair with what it deduces: at most one split per link past the
    # one that fits in a repair's request (8 objects, less ``HEADROOM``).
    assert 1 <= c.statistics().split_repairs <= links - 1
    joints = [objs[0] for objs in chain[1:]]
    assert [v for _, v in await c.query(joints, "counter.fetch_all")] == [2] * len(joints)


def ohs_of(cl: MemCluster, objects: tuple[int, ...], servers: range | list[int]) -> dict:
    """The multi-OHS a scripted client reads of ``objects`` from ``servers``."""
    return {x: {s: cl.ohs_entry(s, x) for s in servers} for x in objects}


async def test_a_deduction_that_excludes_what_it_added_is_narrowed_not_split_for_ever() -> None:
    """The hang of 2026-12-05 (a listing and a removal waiting 16 minutes, every task in
    nested split repairs): deduction is not monotone.  ``first`` is complete at servers
    0-4, ``second`` (conditioned on it at object 6) reached servers 0-2 only, and another
    client then abandoned ``second`` at object 30 (barrier, copy, increment at 1-5), and
    server 4 stopped.  From 6, deduction adds ``second``'s objects, where 30 excludes it,
    so ``first`` (order 4 now) is ObjCand at 6 and its objects are needed too: 7, more than
    this client names (6).  Split, the repair of ``first`` alone saw ``second`` newest at
    6 again (30 out of view), needed both, and found nothing to split off but ``first``,
    being repaired: ``TooManyObjects`` here, a wait for ever under a mount's patience.
    Objects 6, 12, 18, 24 and 30 are enough (30 shows the skip): the repair names those,
    keeps ``first`` and abandons ``second`` at all of its objects."""
    cl = MemCluster(seed=1)
    dead, other = int(client_id(3)), int(client_id(2))
    first, second = (6, 12, 18, 24), (6, 30, 36, 42)
    for servers, objs, add in ((range(5), first, 1), ([0, 1, 2], second, 10)):
        req = Request(
            dead, objs, ohs_of(cl, objs, range(5)), Operation("counter.add_all", False, add, add)
        )
        assert {r.status for r in send(cl, servers, req).values()} == {ReplyStatus.OK}
    quorum = [1, 2, 3, 4, 5]
    for op in (None, None, Operation("counter.increment", False, 100, 1)):  # barrier, copy
        req = Request(other, (30,), ohs_of(cl, (30,), quorum), op)
        assert {r.status for r in send(cl, quorum, req).values()} == {ReplyStatus.OK}
    cl.down.add(4)
    c = make_client(cl, 0, objects=6)
    round_budget(c, 40)

    assert await c.query(6, "counter.fetch") == 1
    assert c.statistics().narrowed_repairs >= 1
    got = await c.query([6, 12, 18, 24, 30, 36, 42], "counter.fetch_all")
    assert [v for _, v in got] == [1, 1, 1, 1, 100, 0, 0]


def test_a_too_wide_repair_with_nothing_to_split_off_waits_while_a_quorum_is_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Passes of a too wide repair that find nothing to repair on their own (which sound
    histories should never give, and once did) end the operation after ``MAX_STALLS`` in
    a row without a patience, and under a mount's patience only once fewer than a quorum
    were live for all of it: slow is not unavailable, but nothing loops for ever.  The
    wait is logged once, at ``STALLS_LOGGED`` passes, naming the objects."""

    async def main() -> None:
        th = MemCluster().th
        st = Attempt(th, random.Random(1), trio.sleep, ())
        with pytest.raises(TooManyObjects, match="4 passes"):
            for _ in range(MAX_STALLS):
                st.check_stalled((6,))
        live = {"quorum": True}
        st = Attempt(th, random.Random(1), trio.sleep, ())
        with patience(10.0, trio.current_time()) as p:
            assert p is not None
            p.live = lambda _now: live["quorum"]
            caplog.set_level(logging.INFO, logger="bftfs.qu.attempt")
            for _ in range(50 * MAX_STALLS):
                st.check_stalled((6,))
                await trio.sleep(1.0)  # the pass's backoff and reads
            logged = [r.getMessage() for r in caplog.records if r.name == "bftfs.qu.attempt"]
            assert len(logged) == 1 and re.search(r"objects \[6\]: .* 30 passes", logged[0])
            live["quorum"] = False
            gone = trio.current_time()
            with pytest.raises(TooManyObjects):
                for _ in range(20):
                    st.check_stalled((6,))
                    await trio.sleep(1.0)
            assert trio.current_time() - gone >= 9.0  # patience 10 s from its last refresh

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# forge_max_time leaves 5 = q histories to classify with, so two contending clients here,
# whose backoff is a bare checkpoint, can livelock; Q/U promises progress to isolated
# clients (L2670-2692).  Contention with real backoff: t5_qu_cluster, every placement.
CONTENDING = sorted(set(BEHAVIOURS) - {"forge_max_time"})


# A Byzantine server the client proves malevolent is reported once per client (qu/client.py).
@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
@pytest.mark.parametrize("behaviour", CONTENDING)
@pytest.mark.parametrize("server", [0, 1, 5])
async def test_byzantine_server_cannot_break_serializability(behaviour: str, server: int) -> None:
    cl = MemCluster(seed=server)
    cl.byzantine[server] = BEHAVIOURS[behaviour]
    rec = Recorder()
    clients = [make_client(cl, k) for k in range(2)]

    async def work(c: QUClient) -> None:
        for i in range(4):
            await rec.run(c, 7, "counter.increment", 1, False)
            await rec.run(c, 7 if i % 2 else 13, "counter.fetch", None, True)

    async with trio.open_nursery() as n:
        for c in clients:
            n.start_soon(work, c)
    assert all(o.ok for o in rec.ops)
    assert check_serializable(rec.ops)


def round_budget(c: QUClient, calls: int) -> None:
    """Fail (instead of hanging) once ``c`` has made ``calls`` quorum calls."""
    real = c.ep.quorum_call
    left = [calls]

    async def quorum_call(*args: Any, **kwargs: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise AssertionError(f"livelock: more than {calls} quorum calls")
        return await real(*args, **kwargs)

    c.ep.quorum_call = quorum_call


REFUSALS = [("kv.delete", "zzz", "no-such-key"), ("kv.get", "", "bad-key")]


async def refuses(c: QUClient, method: str, arg: str, code: str) -> None:
    call = c.query if method == "kv.get" else c.update
    with pytest.raises(MethodRefused) as e:
        await call(4, method, arg)
    assert e.value.code == code


@pytest.mark.parametrize(("method", "arg", "code"), REFUSALS, ids=["update", "query"])
async def test_refusal_is_believed_despite_a_forger_left_out_of_the_ohs(
    method: str, arg: str, code: str
) -> None:
    """Issue 5 (the fs workload hang with ``forge_higher``): server 5, in object 4's
    preferred quorum, forges a higher candidate into every history it returns.  Once proven
    malevolent it is left out of the OHS and asked last, so its cached forged history is
    never refreshed.  b+1 servers agreeing on a refusal must still end the operation; the
    round used to be judged on the raw cache (forged candidate: "not METHOD", refusal not
    believed) while the next step, on the presented OHS, said METHOD and re-sent at once."""
    cl = MemCluster(seed=1)
    cl.byzantine[5] = BEHAVIOURS["forge_higher"]
    c = make_client(cl, 0)
    round_budget(c, 40)

    await c.update(4, "kv.put", ["a", 1])
    for _ in range(3):
        await refuses(c, method, arg, code)
    assert await c.query(4, "kv.get", "a") == 1
    s = c.statistics()
    # Proven malevolent when its history was presented and culled; a client that asked
    # every server first (the forged candidate is stray) never presents it at all.
    assert set(s.excluded_servers) <= {5}
    assert s.refused == 3


@pytest.mark.parametrize(("method", "arg", "code"), REFUSALS, ids=["update", "query"])
async def test_refusal_is_believed_despite_a_crashed_servers_stray_candidate(
    method: str, arg: str, code: str
) -> None:
    """The same livelock without a Byzantine server: server 4 holds a stray candidate (a
    client died after sending its update to server 4 alone), our client caches that history,
    then server 4 crashes.  Its cached history is never refreshed; the stray is left out of
    the presented OHS (q fresh histories remain) and must not keep a refusal from counting."""
    cl = MemCluster(seed=2)
    c = make_client(cl, 0)
    round_budget(c, 40)

    cl.down.add(3)  # the update reaches server 4 (the in-memory cluster stops at q)
    await c.update(4, "kv.put", ["a", 1])
    cl.down.discard(3)
    dead = int(client_id(3))
    op = Operation("kv.put", False, ["b", 2], 1)
    send(cl, [4], Request(dead, (4,), {4: c.cached(4)}, op))
    assert await c.query(4, "kv.get", "a") == 1  # caches server 4's stray history
    assert any(len(e.rh) > 1 and e.rh[0].lt.client == dead for e in c.cached(4).values())
    cl.down.add(4)
    for _ in range(3):
        await refuses(c, method, arg, code)
    assert await c.query(4, "kv.get", "a") == 1
    assert c.statistics().refused == 3


async def test_byzantine_client_different_operations_to_different_servers() -> None:
    cl = MemCluster(seed=9)
    evil = int(client_id(3))
    for s in range(6):  # a different amount to every server: no two share a timestamp
        send(cl, [s], Request(evil, (7,), {7: {}}, Operation("counter.increment", False, s + 1, 1)))
    good = make_client(cl, 0)

    v = await good.update(7, "counter.increment", 100)
    again = await good.query(7, "counter.fetch")
    assert v == again
    assert v - 100 in (0, 1, 2, 3, 4, 5, 6)  # at most one of the evil increments survived
    lt = max(e.rh[0].lt for e in good.cached(7).values())
    assert read_version(cl.kvs[1], 7, lt) == v


async def test_byzantine_client_illegal_calls_are_refused() -> None:
    cl = MemCluster()
    c = make_client(cl, 0)

    await c.update(4, "kv.put", ["a", 1])
    with pytest.raises(Exception, match="no-such-key"):
        await c.update(4, "kv.delete", "zzz")
    assert await c.query(4, "kv.get", "a") == 1
    assert c.statistics().refused == 1


async def test_tampered_ohs_from_a_byzantine_client_changes_nothing() -> None:
    cl = MemCluster()
    good = make_client(cl, 0)

    cl.down.add(0)  # server 0 never sees the object
    await good.update(7, "counter.increment", 5)
    cl.down.discard(0)
    ohs = good.cached(7)
    # Forge a history claiming a complete version that never existed.
    from bftfs.qu.history import OHSEntry, make_rh
    from bftfs.qu.timestamp import Candidate, Timestamp

    fake = Candidate(Timestamp(50, False, 1, b"\5" * 32), ohs[1].rh[0].lt, (7,))
    forged = {s: OHSEntry(make_rh([fake, *e.rh]), e.auth) for s, e in ohs.items()}
    reps = send(
        cl,
        range(6),
        Request(int(client_id(1)), (7,), {7: forged}, Operation("counter.increment", False, 1, 1)),
    )
    # Every forged history is culled, so the request conditions on <0,0>: only server 0,
    # which never saw the object, accepts it - an incomplete candidate, repaired around.
    assert [s for s, r in reps.items() if r.status is ReplyStatus.OK] == [0]
    assert all(r.culled == (tuple(sorted(forged)),) for r in reps.values())

    assert await good.query(7, "counter.fetch") == 5


@pytest.mark.parametrize("server", [1, 2, 3, 4, 5])
async def test_a_forged_largest_time_under_a_valid_authenticator_does_not_stop_a_client(
    server: int,
) -> None:
    """Issue 18, defect 2: a Byzantine server lists a candidate at the largest logical time
    in every history it returns, authenticated with its own keys, so correct servers classify
    with it and refuse "logical time exhausted".  The client used to stop each round at q
    replies, one of them the forger's, and could never leave its history out (that needs q
    fresh others): it retried forever, and a mount whose root is in the forger's preferred
    quorum hung.  Now it asks the remaining servers and leaves the forged history out.
    The forger is in the objects' preferred quorum (servers 1-5) and server 0, the only other
    one, always answers last, so every round's first q replies include the forger."""
    cl = MemCluster(seed=server)
    cl.byzantine[server] = BEHAVIOURS["forge_max_time"]
    cl.slow = {0}
    c = make_client(cl, 0)
    round_budget(c, 60)

    got = []
    for oid in (7, 13):  # both have servers 1-5 as preferred quorum
        for _ in range(3):
            got.append(await c.update(oid, "counter.increment", 1))
        got.append(await c.query(oid, "counter.fetch"))
    got.append(await c.update([7, 13], "counter.transfer", [7, 13, 2]))
    got += [await c.query(7, "counter.fetch"), await c.query(13, "counter.fetch")]
    assert got[:8] == [1, 2, 3, 3, 1, 2, 3, 3]
    assert got[-2:] == [1, 5]
    assert c.statistics().refused == 0


@pytest.mark.parametrize("full", [1, 6])
async def test_a_repair_refused_for_space_by_more_than_b_nodes_ends_the_operation(
    full: int,
) -> None:
    """Nodes out of space still answer queries (they write nothing) but refuse the
    repairs a query needs first, barriers, copies and inline repairs, which write: refused
    so by more than ``b`` nodes, the query ends at once with ``StorageFull`` (the mount's
    ENOSPC), where it repaired again and again until its time was up and answered EIO
    (``t4_full_disk``); refused by ``b`` nodes, the others repair it."""
    cl = MemCluster(seed=3)
    op = Operation("counter.add_all", False, 5, 1)
    send(cl, [0, 1, 2, 3], Request(int(client_id(3)), (1, 2), {1: {}, 2: {}}, op))

    def out_of_space(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
        if kind == KIND_REQUEST:
            parse = Request.from_bytes if isinstance(payload, bytes) else Request.from_wire
            req = parse(payload, cl.th.n)
            if req.op is None or not req.op.query:
                raise RemoteError("full", "store full")
        return honest()

    for s in range(full):
        cl.byzantine[s] = out_of_space
    reader = make_client(cl, 0)
    if full > cl.th.b:
        with pytest.raises(StorageFull, match="a repair was refused"):
            await reader.query(1, "counter.fetch")
    else:
        assert await reader.query(1, "counter.fetch") in (0, 5)


async def test_histories_past_the_hot_ones_are_kept_packed_and_cost_no_round_more() -> None:
    """Issue 62 (cost flat with age): parsed, a cached OHS is some sixteen objects the
    collector walks at every full collection (an aged mount: 590 000, 0.7 s a pass).  The
    histories of all but the ``hot`` objects answered last are kept as one ``bytes`` an
    object, which the collector does not track, and read back equal: updating such an
    object takes one round, as when its histories were parsed."""
    cl = MemCluster(seed=6)
    a = make_client(cl, 0)
    a._cache.hot = 2
    for oid in range(10, 18):
        await a.update(oid, "counter.increment", 1)
    cold = a._cache._cold
    assert sorted(cold) == list(range(10, 16)) and sorted(a._cache._cache) == [16, 17]
    assert all(type(v) is bytes and not gc.is_tracked(v) for v in cold.values())
    parsed = {16: a.cached(16), 17: a.cached(17)}
    a._cache.hot = 0  # 16 and 17 packed too, then read back
    a._cache._bound()
    assert {16: a.cached(16), 17: a.cached(17)} == parsed
    before = a.statistics()
    for oid in range(10, 18):  # each from the packed tier
        await a.update(oid, "counter.increment", 1)
    after = a.statistics()
    assert (after.rounds - before.rounds, after.behind - before.behind) == (8, 0), after
    for oid in range(10, 18):
        assert await a.query(oid, "counter.fetch") == 2


async def test_per_object_state_stays_bounded_however_many_objects_a_client_touched() -> None:
    """Issue 62 (cost flat with age): a mount's Q/U client kept a lock and the histories
    of every object it ever operated on, for its life (memory, and the collector's full
    passes, grew with its age).  The locks go once nobody holds or waits for them; the
    histories of the least recently answered objects go past ``max_cached``, and an
    object whose histories went is operated on as before (one round more)."""
    cl = MemCluster(seed=5)
    a, b = make_client(cl, 0), make_client(cl, 1)
    a._cache.max_cached = 4

    async def bump(c: QUClient, oid: int) -> None:
        await c.update(oid, "counter.increment", 1)

    async with trio.open_nursery() as n:  # concurrent ones, some on the same objects
        for oid in range(10, 22):
            n.start_soon(bump, a, oid)
            n.start_soon(bump, b, oid % 3 + 10)
    assert a._locks == {} and b._locks == {}
    kept = [oid for oid in range(10, 22) if a.cached(oid)]
    assert len(kept) == 4
    await bump(a, 10)  # its histories may have gone: still counted exactly
    assert await a.query(10, "counter.fetch") == 2 + 4  # a's two, b's four (12, 15, 18, 21)
    assert a.cached(10) and len([o for o in range(10, 22) if a.cached(o)]) == 4
