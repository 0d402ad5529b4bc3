"""Tier 1: publication (``bftfs/fsobjects/publish.py``, issue 64) through the ``fs``
registry as a node runs it: a reader's query refused by another client's exclusive lease
passes with its token once the holder published up to it for that reader, and not before
nor for another reader; asking makes no version; only the exclusive holder publishes,
never backwards."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from bftfs.config import ClusterConfig
from bftfs.fs.clients.calls import Meta
from bftfs.fs.clients.reading import (
    PUBLISH_PATIENCE,
    PUBLISH_WAIT,
    REUSE,
    PublishedHints,
    RecentTokens,
)
from bftfs.fsobjects import FS, new_dir
from bftfs.fsobjects.leases import EXCLUSIVE, SHARED, holders, tag_query
from bftfs.fsobjects.pubstate import MAX_READERS, published, published_for, query_tokens
from bftfs.node.recalls import Recalls
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.qu.reply import Reply, ReplyStatus
from bftfs.qu.request import Operation, Request

REG = Registry([FS])
DIR = 16
A, B, C = 101, 102, 103
S = 10**9
T0 = 1_700_000_000 * S


def update(
    method: str, states: dict[int, Any], caller: int, **arg: Any
) -> tuple[dict[int, Any], Any]:
    raw, answer = REG.update(method, states, arg, caller)
    return {oid: unpack(b) for oid, b in raw.items()}, answer


def held_by(caller: int, kind: int = EXCLUSIVE) -> Any:
    d = new_dir(1, 0o755, 0, 0, T0)
    new, _ = update("fs.lease", {DIR: d}, caller, kind=kind, lt=T0, term=30 * S)
    return new[DIR]


def stat(state: Any, caller: int, tokens: dict[int, int] | None = None) -> Any:
    return REG.query("fs.stat", {DIR: state}, tag_query(None, 0, tokens), caller)


def ask(state: Any, caller: int, token: int) -> Any:
    """A request to publish: a query, its answer (it makes no version)."""
    return REG.query("fs.pubreq", {DIR: state}, {"lt": T0 + S, "k": token}, caller)


def publish(
    state: Any, caller: int, entries: list[list[int]], at: int = T0 + 2 * S
) -> tuple[Any, Any]:
    new, out = update("fs.publish", {DIR: state}, caller, lt=at, r=entries)
    return new[DIR], out


def test_a_token_passes_once_the_holder_published_up_to_it_and_the_lease_stays() -> None:
    d = held_by(A)
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, B)
    assert ask(d, B, 5) == [[DIR, [A], 5]]
    with pytest.raises(MethodRefused, match="leased"):  # asked, not yet published
        stat(d, B, {DIR: 5})
    d, done = publish(d, A, [[DIR, B, 0, 5]])
    assert done == [DIR] and published(d) == {(B, 0): 5}
    assert stat(d, B, {DIR: 5})["mode"]  # answered
    assert stat(d, B, {DIR: 4})["mode"]  # an older token of its reads what is there
    assert [h[:2] for h in holders(d)] == [[A, EXCLUSIVE]]  # the holder keeps its lease
    # Another reader's token, or the same reader's next one, needs a publication of its own.
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, C, {DIR: 5})
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, B, {DIR: 6})
    with pytest.raises(MethodRefused, match="leased"):  # no token, or a zero one
        stat(d, C, {DIR: 0})


def test_only_the_exclusive_holder_publishes_and_never_backwards() -> None:
    d = held_by(A)
    for other in (B, C):  # a reader cannot publish on the holder's behalf
        same, done = publish(d, other, [[DIR, B, 0, 1]])
        assert done == [] and published(same) == {}
    d, done = publish(d, A, [[DIR, B, 0, 9], [DIR, C, 2, 3], [DIR + 1, B, 0, 4]])
    assert done == [DIR] and published(d) == {(B, 0): 9, (C, 2): 3}
    d, _ = publish(d, A, [[DIR, B, 0, 1]])  # never backwards
    assert published(d)[(B, 0)] == 9
    _, done = publish(d, A, [[DIR, B, 0, 10]], at=T0 + 31 * S)  # its lease ended
    assert done == []
    for bad in ("all", [[DIR, B, 0]], [[DIR, B, 0, -1]], [[DIR, B, True, 1]]):
        with pytest.raises(MethodRefused, match="invalid"):
            update("fs.publish", {DIR: d}, A, lt=T0 + 2 * S, r=bad)


def test_the_record_keeps_the_readers_published_last() -> None:
    """One object's record names :data:`MAX_READERS` readers at most: the one published
    longest ago goes first, and asks again."""
    d = held_by(A)
    for r in range(MAX_READERS + 2):
        d, _ = publish(d, A, [[DIR, 1000 + r, 0, 1]])
    got = published(d)
    assert len(got) == MAX_READERS and (1000, 0) not in got and (1001, 0) not in got
    d, _ = publish(d, A, [[DIR, 1002, 0, 2]])  # raised: now the newest
    d, _ = publish(d, A, [[DIR, 2000, 0, 1]])
    assert published(d)[(1002, 0)] == 2 and (1003, 0) not in published(d)


def test_an_object_with_no_exclusive_lease_of_another_is_not_named() -> None:
    """A shared lease refuses no query, the caller's own exclusive lease neither: the ask
    names nothing, and the reader reads at once; a malformed ask is refused."""
    for state, caller in ((held_by(A, SHARED), B), (held_by(A), A)):
        assert ask(state, caller, 1) == []
    with pytest.raises(MethodRefused, match="invalid"):
        ask(held_by(A), B, 0)


def test_malformed_tokens_are_ignored_and_only_the_named_object_passes() -> None:
    d, _ = publish(held_by(A), A, [[DIR, B, 0, 1]])
    assert query_tokens({"pw": [[DIR, 1], "x", [1, 2, 3], [True, 1]]}) == {DIR: 1}
    assert query_tokens({"pw": "nope"}) == {}
    assert published_for(d, (B, 0), 1) and not published_for(d, (B, 0), 2)
    assert not published_for(d, (B, 1), 1) and not published_for(d, (B, 0), None)
    assert published({"lp": [3, 2]}) == {}  # the older record's form: readers ask again
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, B, {DIR + 1: 1})  # a token for another object
    bad = {"lm": 0, "q": None, "pw": [[DIR, "1"]]}
    with pytest.raises(MethodRefused, match="leased"):
        REG.query("fs.stat", {DIR: d}, bad, B)


class OlderNodes:
    """Nodes of an older release (a Q/U client's face): ``fs.pubreq`` is no method of
    theirs, and a query stays refused ``leased`` until it recalls the lease."""

    client_id = 7

    def __init__(self) -> None:
        self.recalled = False
        self.calls: list[str] = []

    async def query(self, objects: Any, method: str, arg: Any = None) -> Any:
        self.calls.append(method)
        if method == "fs.pubreq":
            raise MethodRefused("no-such-method", method)
        if not self.recalled:
            raise MethodRefused("leased", "object 16 is leased to another client")
        return {"mode": 0o40755}

    async def update(self, objects: Any, method: str, arg: Any = None) -> Any:
        self.calls.append(method)
        if method == "fs.recall":
            self.recalled = True
            return []
        return None


def test_a_reader_on_older_nodes_recalls_as_before() -> None:
    """Rolling upgrade: nodes that do not know ``fs.pubreq`` refuse it ``no-such-method``;
    the reader stops asking for publications and recalls the lease, as before."""
    nodes = OlderNodes()
    meta = Meta(nodes, None, ClusterConfig.for_test(), rng=random.Random(1), clock_ns=lambda: T0)  # type: ignore[arg-type]
    meta.publish_reads = True  # (the mount option ``publish``)
    got = trio.run(meta.query_now, DIR, "fs.stat", None)
    assert got == {"mode": 0o40755} and not meta.publish_reads
    assert nodes.calls.count("fs.pubreq") == 1 and "fs.recall" in nodes.calls


def test_a_reader_waits_on_while_the_publications_it_asked_for_come() -> None:
    """A reader recalls a holder that published nothing it asked for within
    ``PUBLISH_WAIT`` (a crashed or Byzantine one), but waits up to ``PUBLISH_PATIENCE``
    while publications it asked for still come (a busy holder working through a
    listing's entries); a reused token is no publication."""
    recent = RecentTokens()
    t0, w = 10.0, PUBLISH_WAIT
    assert recent.publishing(t0, t0 + w - 0.1)
    assert not recent.publishing(t0, t0 + w)
    recent.read_with({5: 1}, t0 + w + 1)  # a reuse: no publication came
    assert not recent.publishing(t0, t0 + w + 1.5)
    recent.read_with({6: 2}, t0 + w + 1, asked_at=t0 + w)  # one came, in a second
    assert recent.publishing(t0, t0 + w + 1.5)
    assert not recent.publishing(t0, t0 + 2 * w + 1)
    recent.read_with({7: 3}, t0 + PUBLISH_PATIENCE - 1, asked_at=t0 + PUBLISH_PATIENCE - 2)
    assert recent.publishing(t0, t0 + PUBLISH_PATIENCE - 0.5)
    assert not recent.publishing(t0, t0 + PUBLISH_PATIENCE)


def test_a_waiting_reader_tries_again_once_b_plus_one_nodes_say_it_was_published() -> None:
    """``PublishedHints``: a query waiting for a publication wakes once ``b + 1`` nodes
    said each of its objects was published since its last try; one node alone (it may
    lie), a word about some of them or other objects, or one from before the try does not
    wake it, and it then tries again after ``at_most`` anyway (a push lost)."""

    async def body() -> None:
        hints = PublishedHints(b=1)
        hints.on_push(1, {"published": [5]})  # before the try: not counted
        await trio.sleep(0.01)
        tried = trio.current_time()
        woken_at: list[float] = []

        async def waiter() -> None:
            await hints.wait([5, 6], tried, at_most=60.0)
            woken_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            hints.on_push(2, {"published": [6]})
            hints.on_push(2, {"published": [5]})  # the same node again
            hints.on_push(3, {"published": [9]})  # another object
            hints.on_push(3, {"published": [5]})  # two nodes for 5, one for 6
            await trio.testing.wait_all_tasks_blocked()
            assert not woken_at
            hints.on_push(4, {"published": [5, 6]})
        assert woken_at and woken_at[0] - tried < 1.0
        assert hints.stats["woken"] == 1
        await hints.wait([5], tried, at_most=60.0)  # said already since ``tried``
        assert hints.stats["woken"] == 2
        await hints.wait([7], trio.current_time(), at_most=0.5)  # nobody says: the fallback
        assert hints.stats["fallback"] == 1
        hints.on_push(1, {"published": "5"})
        hints.on_push(1, {"published": [True, 5]})
        assert hints.stats["malformed"] == 2

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def _accept(recalls: Recalls, client: int, method: str, arg: Any, answer: Any) -> None:
    op = Operation(method, method == "fs.pubreq", arg, 1)
    recalls.accepted(Request(client, (DIR,), {DIR: {}}, op), Reply(ReplyStatus.OK, answer=answer))


def test_a_node_tells_each_reader_when_the_publication_it_asked_for_landed() -> None:
    """``node/recalls.Recalls``: an answered ``fs.pubreq`` pushes the reader, its mount and
    its token to the holders and remembers the token per object; an accepted
    ``fs.publish`` pushes ``{"published": [...]}`` to each reader whose token it covers
    (once), and to no one else, and a release to every reader waiting on it; a node
    running the ``withhold-recalls`` profile tells nobody."""
    pushes: list[tuple[int, Any]] = []
    recalls = Recalls(lambda who, body: pushes.append((int(who), body)) or 1, Counter())
    asked = [[DIR, [A], 3], [DIR + 1, [A], 3]]
    _accept(recalls, B, "fs.pubreq", {"lt": T0, "k": 3, "lm": 2}, asked)
    _accept(recalls, C, "fs.pubreq", {"lt": T0, "k": 4}, [[DIR, [A], 4]])
    assert pushes == [
        (A, {"publish": [[DIR, B, 2, 3], [DIR + 1, B, 2, 3]]}),
        (A, {"publish": [[DIR, C, 0, 4]]}),
    ]
    pushes.clear()
    _accept(recalls, A, "fs.publish", {"lt": T0, "r": [[DIR, B, 2, 3], [DIR, C, 0, 2]]}, [DIR])
    assert pushes == [(B, {"published": [DIR]})]  # C's token 4 is not covered yet
    pushes.clear()
    both = [[DIR, C, 0, 4], [DIR + 1, B, 2, 3]]
    _accept(recalls, A, "fs.publish", {"lt": T0, "r": both}, [DIR, DIR + 1])
    assert sorted(pushes) == [(B, {"published": [DIR + 1]}), (C, {"published": [DIR]})]
    pushes.clear()
    _accept(recalls, A, "fs.publish", {"lt": T0, "r": [[DIR, C, 0, 9]]}, [DIR])
    _accept(recalls, A, "fs.publish", {"lt": T0, "r": "junk"}, [DIR])
    assert pushes == []  # each told once; a malformed argument tells nobody
    _accept(recalls, B, "fs.pubreq", {"lt": T0, "k": 8}, [[DIR, [A], 8]])
    pushes.clear()
    _accept(recalls, A, "fs.release", {"lt": T0}, None)  # handed over: no lease to wait on
    assert pushes == [(B, {"published": [DIR]})]
    pushes.clear()
    recalls.enabled = False
    _accept(recalls, B, "fs.pubreq", {"lt": T0, "k": 5}, [[DIR, [A], 5]])
    _accept(recalls, A, "fs.publish", {"lt": T0, "r": [[DIR, B, 0, 5]]}, [DIR])
    assert pushes == []


def test_a_reader_waits_longer_for_publications_that_have_been_slow() -> None:
    """A busy holder's publications take seconds: the reader's patience before a recall
    follows them (``WAIT_TIMES`` the usual wait), never beyond ``PUBLISH_PATIENCE``."""
    recent = RecentTokens()
    assert recent.patience() == PUBLISH_WAIT
    for k in range(20):
        recent.read_with({1: k + 1}, 100.0 + 5 * k + 2.5, asked_at=100.0 + 5 * k)
    assert PUBLISH_WAIT + 1 < recent.patience() <= 3 * 2.5
    assert recent.publishing(300.0, 300.0 + PUBLISH_WAIT + 0.5)
    for k in range(40):
        recent.read_with({1: k + 50}, 400.0 + 40 * k + 30, asked_at=400.0 + 40 * k)
    assert recent.patience() == PUBLISH_PATIENCE


def test_a_reused_publication_is_not_made_younger_by_its_reuse() -> None:
    """A stat reads again with a publication's tokens for ``REUSE`` seconds after the
    publication, not after its latest reuse: restamped at each reuse, a stat every half
    second read with one token for as long as the holder kept its lease."""
    recent = RecentTokens()
    recent.read_with({3: 7}, 10.0, asked_at=9.5)
    for k in range(1, 4):
        now = 10.0 + k * REUSE / 4
        assert recent.reusable("fs.stat", [3], now) == {3: 7}
        recent.read_with({3: 7}, now)  # a reuse
    assert recent.reusable("fs.stat", [3], 10.0 + REUSE + 0.01) is None
    assert recent.reusable("fs.lookup", [3], 10.0) is None  # a lookup asks its own
