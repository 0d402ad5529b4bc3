"""The cross-group commit (issue 66, docs/layout.md "Operations across groups"): several
groups, each its own in-memory Q/U cluster (``qu_helpers.MemCluster``) whose nodes run
the ``txn`` methods and sign their replies by their long-term keys, and real
``QUClient``s driving ``layout/txn.py`` in trio's virtual time (deadlines and back-off
from the injected clock).

The helpers here (:class:`Groups`) are shared by ``t1_txn_byzantine.py``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from qu_helpers import MemCluster, keyrings

from bftfs.fsobjects.txnmethods import make_txn_type
from bftfs.fsobjects.txnsign import sign
from bftfs.ids import client_id
from bftfs.layout.model import Group, Layout, LayoutNode, check
from bftfs.layout.txn import (
    Abandon,
    Driver,
    Part,
    group_keys,
    run_transaction,
    vouch_for,
)
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.testing.byzantine.qu import BEHAVIOURS
from bftfs.testing.testobjects import COUNTER, KV

#: The record objects live apart from the data objects.
RECORDS = 1 << 40


def virtual(fn: Callable[[], Any]) -> None:
    """Run ``fn`` in trio's virtual time (sleeps jump)."""
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


class Groups:
    """``count`` groups of ``n = 6`` (t = b = 1), every node serving ``counter``, ``kv``
    and ``txn`` under one layout's keys, and signing by its long-term key."""

    def __init__(self, count: int = 2, seed: int = 0) -> None:
        seeds = [1000 * seed + 17 * g + 1 for g in range(count)]
        rings = [keyrings(6, 4, s)[0] for s in seeds]
        # The layout names each node's long-term key; the nodes sign by it.
        nodes = tuple(
            LayoutNode(6 * gi + i, "10.0.0.1", 7000 + 6 * gi + i, r.me.public, f"d{i}")
            for gi, rs in enumerate(rings)
            for i, r in enumerate(rs)
        )
        groups = tuple(Group(gi, tuple(range(6 * gi, 6 * gi + 6))) for gi in range(count))
        table = tuple(p % count for p in range(16))
        self.layout = check(Layout(7, 16, 1, 1, nodes, groups, table, table))
        self.keys = group_keys(self.layout)
        self.clusters: list[MemCluster] = []
        for s, rs in zip(seeds, rings, strict=True):
            inner = Registry([COUNTER, KV])
            reg = Registry([COUNTER, KV, make_txn_type(inner, self.keys)])
            c = MemCluster(seed=s, reg=reg)
            c.cfgs = [
                dataclasses.replace(cfg, signer=_signer(r.me.private))
                for cfg, r in zip(c.cfgs, rs, strict=True)
            ]
            self.clusters.append(c)
        self._records = RECORDS

    def client(self, k: int, group: int, *, vouch: bool = True) -> QUClient:
        """Client ``k``'s Q/U client of ``group``."""
        c = self.clusters[group]
        return QUClient(
            c.endpoint(k),
            c.th,
            client_id=int(client_id(k)),
            rng=random.Random(100 * k + group),
            vouch=vouch_for(self.keys, group) if vouch else None,
        )

    def driver(self, k: int, **kw: Any) -> Driver:
        """Client ``k``'s transaction driver over every group, its clock trio's (ns)."""
        groups = [self.client(k, g) for g in range(len(self.clusters))]
        return Driver(
            groups,
            self.keys,
            int(client_id(k)),
            lambda: int(trio.current_time() * 1e9),
            random.Random(k),
            **kw,
        )

    def record(self) -> int:
        """A fresh record object id."""
        self._records += 1
        return self._records


def _signer(private: bytes) -> Callable[[bytes], bytes]:
    return lambda m: sign(private, m)


async def put(g: Groups, group: int, oid: int, key: str, value: Any) -> None:
    """Set ``key`` of kv object ``oid`` on ``group`` (client 3)."""
    await g.client(3, group).update(oid, "kv.put", [key, value])


async def read(g: Groups, group: int, oid: int, key: str) -> Any:
    """``key`` of kv object ``oid`` on ``group``, read by a fresh client."""
    return await g.client(3, group).query(oid, "kv.get", key)


def rename(name: str, new: str, value: Any) -> list[Part]:
    """A rename-shaped transaction: ``name`` leaves directory 1 on group 0, ``new``
    enters directory 2 on group 1."""
    return [Part(0, (1,), "kv.delete", name), Part(1, (2,), "kv.put", [new, value])]


def test_rename_over_two_groups_commits_atomically() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 42)
        d = g.driver(0)
        assert g.keys.quorums == (5, 5) and g.keys.version == 7
        out = await run_transaction(
            d.groups,
            g.keys,
            rename("a", "b", 42),
            coordinator=0,
            record=g.record,
            client=d.client,
            clock=d.clock,
            rng=d.rng,
        )
        assert out.committed and out.attempts == 1
        assert await read(g, 0, 1, "a") is None
        assert await read(g, 1, 2, "b") == 42
        # Both directories are free again (no intent left): ordinary updates run.
        await put(g, 0, 1, "c", 1)
        await put(g, 1, 2, "d", 2)

    virtual(main)


def test_a_no_vote_aborts_both_groups() -> None:
    g = Groups()

    async def main() -> None:
        out = await g.driver(0).run(rename("missing", "b", 1), 0, g.record)
        assert not out.committed and out.why == "no-such-key"
        assert await read(g, 1, 2, "b") is None  # group 1's yes was dropped
        await put(g, 1, 2, "d", 2)  # and its intent with it

    virtual(main)


def test_an_intent_refuses_every_other_method_naming_t() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        d = g.driver(0, at_step=_stop("prepared"))
        with pytest.raises(Abandon):
            await d.run(rename("a", "b", 1), 0, g.record)
        for method, arg in (("kv.put", ["z", 1]), ("kv.delete", "a")):
            with pytest.raises(MethodRefused) as e:
                await g.client(3, 0).update(1, method, arg)
            word, dig, coord, rec = e.value.code.split()
            assert word == "intent" and coord == "0" and int(rec) > RECORDS
            assert len(bytes.fromhex(dig)) == 32
        with pytest.raises(MethodRefused, match="intent"):
            await g.client(3, 1).query(2, "kv.get", "b")

    virtual(main)


def _stop(step: str) -> Callable[[str], Awaitable[None]]:
    async def stop(now: str) -> None:
        if now == step:
            raise Abandon(step)

    return stop


@pytest.mark.parametrize("step", ["begun", "prepared"])
def test_an_abandoned_transaction_is_aborted_by_the_next_client_after_its_deadline(
    step: str,
) -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        with pytest.raises(Abandon):
            await g.driver(0, at_step=_stop(step)).run(rename("a", "b", 1), 0, g.record)
        t0 = trio.current_time()
        second = g.driver(1, span=10**9)
        out = await second.run(rename("a", "c", 1), 0, g.record)
        assert out.committed
        if step == "prepared":
            # Before the first one's deadline (10 s) the second only backed off and
            # retried; then it aborted the first and finished it on both groups.
            assert trio.current_time() - t0 >= 9.0
            assert second.resolved >= 1  # each participant that met it may resolve it
        else:  # begun, nothing locked: nothing to wait for (its record stays pending)
            assert trio.current_time() - t0 < 1.0 and second.resolved == 0
        assert await read(g, 1, 2, "b") is None
        assert await read(g, 1, 2, "c") == 1

    virtual(main)


def test_a_decided_transaction_is_finished_by_the_next_client_at_once() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 5)
        with pytest.raises(Abandon):
            await g.driver(0, at_step=_stop("decided")).run(rename("a", "b", 5), 0, g.record)
        t0 = trio.current_time()
        second = g.driver(1)
        out = await second.run([Part(1, (2,), "kv.put", ["x", 1])], 1, g.record)
        assert out.committed and second.resolved == 1
        assert trio.current_time() - t0 < 1.0  # no deadline waited for
        assert await read(g, 1, 2, "b") == 5  # the first one's commit, finished by the second
        assert await read(g, 0, 1, "a") is None

    virtual(main)


async def _overlapping(g: Groups, first: list[Part], second: list[Part]) -> list[Any]:
    """Run ``first`` (client 0) and, while it holds its intents between its prepares
    and its decide (one virtual second), ``second`` (client 1); both outcomes."""
    outs: list[Any] = [None, None]
    async with trio.open_nursery() as n:

        async def run_second() -> None:
            outs[1] = await g.driver(1).run(second, 1, g.record)

        async def at_step(step: str) -> None:
            if step == "prepared":
                n.start_soon(run_second)
                await trio.sleep(1)

        outs[0] = await g.driver(0, at_step=at_step).run(first, 0, g.record)
    return outs


def test_two_conflicting_transactions_one_commits_and_state_is_serializable() -> None:
    """Two clients move the same key to different places, the second while the first
    holds its intents: the second meets them, aborts its attempts and retries until the
    first committed; then its delete finds nothing.  The value exists exactly once."""
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 7)
        first, second = await _overlapping(g, rename("a", "x", 7), rename("a", "y", 7))
        assert first.committed and first.attempts == 1
        assert not second.committed and second.why == "no-such-key"
        assert second.attempts > 1  # it met the first's intents
        assert await read(g, 1, 2, "x") == 7
        assert await read(g, 1, 2, "y") is None
        assert await read(g, 0, 1, "a") is None

    virtual(main)


def test_two_transactions_on_the_same_objects_both_commit_one_after_the_other() -> None:
    """Two increments of the same two counters, the second while the first holds its
    intents: the second retries until the first committed, then commits; each counter
    shows both (serializable)."""
    g = Groups()

    async def main() -> None:
        parts = [Part(0, (3,), "counter.increment", 1), Part(1, (4,), "counter.increment", 1)]
        first, second = await _overlapping(g, parts, parts)
        assert first.committed and second.committed and second.attempts > 1
        assert await g.client(3, 0).query(3, "counter.fetch") == 2
        assert await g.client(3, 1).query(4, "counter.fetch") == 2

    virtual(main)


def test_concurrent_transactions_race_to_serializable_state() -> None:
    """Two clients' transactions on the same counters started at once (seeds): whatever
    the interleaving, both commit and the counters show both."""
    for seed in range(3):
        g = Groups(seed=seed)

        async def main(g: Groups = g) -> None:
            parts = [Part(0, (3,), "counter.increment", 1), Part(1, (4,), "counter.increment", 1)]
            outs: list[Any] = [None, None]

            async def one(k: int) -> None:
                outs[k] = await g.driver(k).run(parts, k, g.record)

            async with trio.open_nursery() as n:
                n.start_soon(one, 0)
                n.start_soon(one, 1)
            assert all(o.committed for o in outs)
            assert await g.client(3, 0).query(3, "counter.fetch") == 2
            assert await g.client(3, 1).query(4, "counter.fetch") == 2

        virtual(main)


@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_one_byzantine_node_per_group_still_atomic(behaviour: str) -> None:
    g = Groups(count=3, seed=3)
    for gi, c in enumerate(g.clusters):
        c.byzantine[(gi * 2 + 1) % 6] = BEHAVIOURS[behaviour]

    async def main() -> None:
        await put(g, 0, 1, "a", 3)
        parts = [*rename("a", "b", 3), Part(2, (3,), "counter.increment", 1)]
        out = await g.driver(0).run(parts, 2, g.record)
        assert out.committed
        assert await read(g, 0, 1, "a") is None
        assert await read(g, 1, 2, "b") == 3
        assert await g.client(3, 2).query(3, "counter.fetch") == 1
        out = await g.driver(1).run(rename("a", "c", 3), 0, g.record)  # a is gone now
        assert not out.committed and out.why == "no-such-key"
        assert await read(g, 1, 2, "c") is None

    virtual(main)


def test_a_no_vote_ends_a_transaction_that_also_met_an_intent() -> None:
    """A no is final, an intent only worth another attempt: an attempt meeting both ends
    with the no (not retried for as long as the intent stays)."""
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 7)
        other = [Part(0, (1,), "kv.put", ["z", 1]), Part(1, (5,), "kv.delete", "nothing")]
        first, second = await _overlapping(g, rename("a", "x", 7), other)
        assert first.committed
        assert not second.committed and second.why == "no-such-key" and second.attempts == 1
        assert await read(g, 0, 1, "z") is None

    virtual(main)
