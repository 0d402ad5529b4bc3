"""Node replacement's Q/U pieces (issue 35; docs/membership.md, "Replacing a node"): a
history authenticated under a replaced server's ended key is dropped without blame, a
forged one is still reported, and a client's caches forget the replaced server.  Pure."""

from __future__ import annotations

from collections import Counter

from bftfs.net import moved
from bftfs.qu.classify import QUThresholds
from bftfs.qu.history import OHSEntry, make_authenticator, make_rh
from bftfs.qu.objects import Registry
from bftfs.qu.ohscache import HistoryCache
from bftfs.qu.replica import cull
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
    cache = HistoryCache(TH, Counter())
    other = HistoryCache(TH, Counter())
    for c in (cache, other):
        c._cache[OID] = {5: entry(OLD), 1: entry(OLD)}
        c.excluded.add(5)
    moved.announce(5)
    for c in (cache, other):
        assert set(c.cached(OID)) == {1} and c.excluded == set()
    moved.announce(3)  # a server it holds nothing of: nothing else changes
    assert set(cache.cached(OID)) == {1}
