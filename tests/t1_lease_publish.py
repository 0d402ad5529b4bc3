"""Tier 1: publication (``bftfs/fsobjects/publish.py``, issue 64) through the ``fs``
registry as a node runs it: a reader's query refused by another client's exclusive lease
passes with a token once the holder published up to it, and not before; only the
exclusive holder publishes, never past what was asked; a stale token reads nothing new."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from bftfs.config import ClusterConfig
from bftfs.fs.clients.calls import Meta
from bftfs.fs.clients.reading import (
    PUBLISH_PATIENCE,
    PUBLISH_WAIT,
    RETRY_MAX,
    REUSE,
    RecentTokens,
)
from bftfs.fsobjects import FS, new_dir
from bftfs.fsobjects.leases import EXCLUSIVE, SHARED, holders, tag_query
from bftfs.fsobjects.pubstate import counts, published_for, query_tokens
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

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


def ask(state: Any, caller: int) -> tuple[Any, Any]:
    new, out = update("fs.askpub", {DIR: state}, caller, lt=T0 + S)
    return new[DIR], out


def publish(state: Any, caller: int, n: int, at: int = T0 + 2 * S) -> tuple[Any, Any]:
    new, out = update("fs.publish", {DIR: state}, caller, lt=at, n=[[DIR, n]])
    return new[DIR], out


def test_a_token_passes_once_the_holder_published_up_to_it_and_the_lease_stays() -> None:
    d = held_by(A)
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, B)
    d, out = ask(d, B)
    assert out == [[DIR, [A], 1]] and counts(d) == (1, 0)
    with pytest.raises(MethodRefused, match="leased"):  # asked, not yet published
        stat(d, B, {DIR: 1})
    asked = REG.query("fs.pubasked", {DIR: d}, None, A)
    assert asked == [[DIR, 1]]
    d, done = publish(d, A, 1)
    assert done == [DIR] and counts(d) == (1, 1)
    assert stat(d, B, {DIR: 1})["mode"]  # answered
    assert [h[:2] for h in holders(d)] == [[A, EXCLUSIVE]]  # the holder keeps its lease
    # A second reader's request is a later token: the first publication does not cover it.
    d, out = ask(d, C)
    assert out == [[DIR, [A], 2]]
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, C, {DIR: 2})
    with pytest.raises(MethodRefused, match="leased"):  # no token, or a zero one
        stat(d, C, {DIR: 0})


def test_only_the_exclusive_holder_publishes_and_never_past_what_was_asked() -> None:
    d, _ = ask(held_by(A), B)
    for other in (B, C):  # a reader cannot publish on the holder's behalf
        same, done = publish(d, other, 1)
        assert done == [] and counts(same) == (1, 0)
    d, done = publish(d, A, 99)  # clamped to the requests counted
    assert done == [DIR] and counts(d) == (1, 1)
    d, _ = publish(d, A, 0)  # never backwards
    assert counts(d) == (1, 1)
    _, done = publish(d, A, 1, at=T0 + 31 * S)  # its lease ended: nothing recorded
    assert done == []
    with pytest.raises(MethodRefused, match="invalid"):
        update("fs.publish", {DIR: d}, A, lt=T0 + 2 * S, n="all")


def test_an_object_with_no_exclusive_lease_of_another_is_not_counted() -> None:
    """A shared lease refuses no query, the caller's own exclusive lease neither: the ask
    names nothing and changes nothing, and the reader reads at once."""
    for state, caller in ((held_by(A, SHARED), B), (held_by(A), A)):
        new, out = ask(state, caller)
        assert out == [] and counts(new) == (0, 0)


def test_malformed_tokens_are_ignored_and_only_the_named_object_passes() -> None:
    d, _ = ask(held_by(A), B)
    d, _ = publish(d, A, 1)
    assert query_tokens({"pw": [[DIR, 1], "x", [1, 2, 3], [True, 1]]}) == {DIR: 1}
    assert query_tokens({"pw": "nope"}) == {}
    assert published_for(d, 1) and not published_for(d, 2) and not published_for(d, None)
    with pytest.raises(MethodRefused, match="leased"):
        stat(d, B, {DIR + 1: 1})  # a token for another object
    bad = {"lm": 0, "q": None, "pw": [[DIR, "1"]]}
    with pytest.raises(MethodRefused, match="leased"):
        REG.query("fs.stat", {DIR: d}, bad, B)


class OlderNodes:
    """Nodes of an older release (a Q/U client's face): ``fs.askpub`` is no method of
    theirs, and a query stays refused ``leased`` until it recalls the lease."""

    client_id = 7

    def __init__(self) -> None:
        self.recalled = False
        self.calls: list[str] = []

    async def query(self, objects: Any, method: str, arg: Any = None) -> Any:
        self.calls.append(method)
        if not self.recalled:
            raise MethodRefused("leased", "object 16 is leased to another client")
        return {"mode": 0o40755}

    async def update(self, objects: Any, method: str, arg: Any = None) -> Any:
        self.calls.append(method)
        if method == "fs.askpub":
            raise MethodRefused("no-such-method", method)
        if method == "fs.recall":
            self.recalled = True
            return []
        return None


def test_a_reader_on_older_nodes_recalls_as_before() -> None:
    """Rolling upgrade: nodes that do not know ``fs.askpub`` refuse it ``no-such-method``;
    the reader stops asking for publications and recalls the lease, as before."""
    nodes = OlderNodes()
    meta = Meta(nodes, None, ClusterConfig.for_test(), rng=random.Random(1), clock_ns=lambda: T0)  # type: ignore[arg-type]
    meta.publish_reads = True  # (the mount option ``publish``)
    got = trio.run(meta.query_now, DIR, "fs.stat", None)
    assert got == {"mode": 0o40755} and not meta.publish_reads
    assert nodes.calls.count("fs.askpub") == 1 and "fs.recall" in nodes.calls


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


def test_a_reader_waiting_for_publications_asks_again_at_a_share_of_their_usual_wait() -> None:
    """Each try before the holder published is refused by every node, which reads each
    object of the query: a reader waits a share of the usual wait between tries (at most
    ``RETRY_MAX``), not the 0.1 s a contended update's back-off comes to."""
    recent = RecentTokens()
    assert recent.retry_after() == 0.0  # no publication seen: the usual back-off
    for k in range(20):
        recent.read_with({1: k + 1}, 100.0 + 2 * k + 1.6, asked_at=100.0 + 2 * k)
    assert 0.25 < recent.retry_after() <= RETRY_MAX
    for k in range(20):
        recent.read_with({1: k + 30}, 200.0 + k + 0.02, asked_at=200.0 + k)
    assert recent.retry_after() < 0.01  # a quiet holder: tries come at once again


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
