"""Node replacement's Q/U pieces (issue 35; docs/membership.md, "Replacing a node"): a
history authenticated under a replaced server's ended key is dropped without blame, a
forged one is still reported, a client's caches forget the replaced server, and culls
that only show a replacement (the newcomer's of histories cached before it, issue 66)
prove nobody malevolent while a forger is still proven.  Pure."""

from __future__ import annotations

from collections import Counter

import pytest

from bftfs.net import moved
from bftfs.qu import core
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import OHSEntry, make_authenticator, make_rh
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.objects import Registry
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.replica import cull
from bftfs.qu.reply import Reply
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import ZERO, Candidate, Timestamp

TH = QUThresholds.minimal(1, 1)
OID = 42
RH = make_rh([Candidate(Timestamp(7, False, 1, b"\x01" * 32), ZERO, (OID,))])


OLD = bytes([100]) * 32  # server 0's pairwise key with server 5's old machine
NEW = bytes([200]) * 32  # ... and with its new one


def entry(with_server0: bytes) -> OHSEntry:
    """Server 5's history, its entry for server 0 made under ``with_server0``."""
    return OHSEntry(
        RH,
        make_authenticator(OID, RH, TH.n, lambda s: with_server0 if s == 0 else b"k" * 32),
    )


def server0(ended: bytes | None) -> ReplicaConfig:
    return ReplicaConfig(
        0,
        TH,
        lambda s: NEW if s == 5 else b"k" * 32,
        Registry(),
        ended_key_for=lambda s: ended if s == 5 else None,
    )


def test_a_history_under_the_ended_key_is_dropped_without_blame() -> None:
    old_history = entry(OLD)  # what the old machine served, a client's cached copy
    culled, bad = cull(server0(ended=OLD), {OID: {5: old_history}})
    assert culled == {OID: {}} and bad == ((),)  # left out, nobody blamed
    # Without the ended key (the mechanism off), the same history is blamed on server 5.
    culled, bad = cull(server0(ended=None), {OID: {5: old_history}})
    assert culled == {OID: {}} and bad == ((5,),)


def test_a_forged_history_is_still_reported() -> None:
    forged = entry(bytes([7]) * 32)
    _, bad = cull(server0(ended=OLD), {OID: {5: forged}})
    assert bad == ((5,),)


def test_a_clients_caches_forget_a_replaced_server() -> None:
    """Every cache of the endpoint that announces it; a cache of another endpoint (another
    group's, whose node 5 is another machine) keeps its histories and counts its culls."""
    group1, group0 = object(), object()
    cache = HistoryCache(TH, Counter(), source=group1)
    other = HistoryCache(TH, Counter(), source=group1)
    elsewhere = HistoryCache(TH, Counter(), source=group0)
    for c in (cache, other, elsewhere):
        c._cache[OID] = {5: entry(OLD), 1: entry(OLD)}
        c.excluded.add(5)
    moved.announce(group1, 5)
    for c in (cache, other):
        assert set(c.cached(OID)) == {1} and c.excluded == set() and c.renewed == {5}
    assert set(elsewhere.cached(OID)) == {1, 5} and elsewhere.excluded == {5}
    assert elsewhere.renewed == set()
    moved.announce(group1, 3)  # a server it holds nothing of: nothing else changes
    assert set(cache.cached(OID)) == {1}


def test_a_newcomers_cull_of_an_absent_servers_history_forgets_it() -> None:
    """A stopped server's cached history, its entry for the newcomer made under the old
    machine's key: the newcomer culls it and the others keep it, so their timestamps
    differ; with one node down every update needs the newcomer's to match (a mount's
    unmount livelocked, ``t4_groups_replace``).  The cache forgets it; a cull of a server
    that answered the round, or an old member's cull, forgets nothing."""
    cache = HistoryCache(TH, Counter())
    cache.absorb((OID,), {s: _reply() for s in range(6)}, {})
    cache.forget_server(2)  # server 2 has a new machine
    cache.absorb((OID,), {2: _reply((4, 0)), 0: _reply(), 1: _reply(), 3: _reply()}, {})
    assert set(cache.cached(OID)) == {0, 1, 2, 3, 5}  # 4 did not answer: forgotten
    cache.absorb((OID,), {3: _reply((5,)), 0: _reply(), 1: _reply()}, {})
    assert set(cache.cached(OID)) == {0, 1, 2, 3, 5}  # an old member's cull: kept
    assert cache.excluded == set()


def test_malevolent_leaves_out_the_reports_said_stale() -> None:
    """``core.malevolent``: a report ``stale`` names does not count; the others do."""
    reports = [
        (3, Reply(ReplyStatus.OK, culled=((0, 1),))),
        (2, Reply(ReplyStatus.OK, culled=((1,),))),
    ]
    assert core.malevolent(reports, [OID], 0) == {0, 1}
    assert core.malevolent(reports, [OID], 0, lambda r, _o, _s: r == 3) == {1}
    assert core.malevolent(reports, [OID], 1, lambda r, _o, _s: r == 3) == set()
    assert core.malevolent(reports, [OID], 0, lambda _r, _o, s: s == 1) == {0}


B0 = QUThresholds.minimal(1, 0)  # groups of four: one report proves a server malevolent


def _reply(culled: tuple[int, ...] = (), hist: bool = True) -> Reply:
    return Reply(ReplyStatus.FAIL, hist=(entry(OLD),) if hist else (), culled=(culled,))


def test_a_newcomers_culls_prove_nobody_malevolent() -> None:
    """Issue 66: the client cached servers 0-2's histories, their entries for server 3
    made under its old machine's key; server 3 is replaced; its new machine culls them
    all.  With ``b = 0`` that proved the three correct servers malevolent.  Histories
    that came in after the replacement may still carry old entries (a peer re-keys its
    stored histories in the background), so the newcomer's culls prove nothing then
    either."""
    cache = HistoryCache(B0, Counter())
    cache.absorb((OID,), {s: _reply() for s in range(4)}, {})
    cache.forget_server(3)  # what moved.announce(3) does to every cache
    cache.absorb((OID,), {3: _reply((0, 1, 2)), 0: _reply(), 1: _reply()}, {})
    cache.absorb((OID,), {3: _reply((0, 1, 2))}, {})
    assert cache.excluded == set()
    assert cache.faults[(0, "culled")] == 2  # still counted as culls, for the record


@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
def test_culls_of_the_replaced_machines_history_prove_nothing() -> None:
    """A request built before the client heard of the replacement carries the old
    machine's history; a peer that holds the new key culls it (one that knows the ended
    key drops it silently, ``replica.cull``): no proof against the newcomer.  The
    newcomer's own history, once cached, is judged as any other."""
    cache = HistoryCache(B0, Counter())
    cache.absorb((OID,), {s: _reply() for s in range(4)}, {})
    cache.forget_server(3)
    cache.absorb((OID,), {0: _reply((3,)), 1: _reply((3,))}, {})
    assert cache.excluded == set()
    cache.absorb((OID,), {3: _reply()}, {})  # the newcomer's history, cached now
    cache.absorb((OID,), {0: _reply((3,))}, {})
    assert cache.excluded == {3}


@pytest.mark.expected_logs("bftfs.qu.ohscache", "WARNING", match=r"^Q/U server \d+ is malevolent")
def test_a_forger_is_proven_by_the_others_despite_a_replacement() -> None:
    """Reports by servers not replaced count as before, whatever the cache's age."""
    cache = HistoryCache(B0, Counter())
    cache.absorb((OID,), {s: _reply() for s in range(4)}, {})
    cache.forget_server(3)
    cache.absorb((OID,), {1: _reply((2,)), 3: _reply((0, 2))}, {})
    assert cache.excluded == {2}
