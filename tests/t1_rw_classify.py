"""Candidate classification (bftfs/rw/classify.py): every threshold rule of seed section
3.4.4, the choices the module docstring lists, and properties against the seed's READ loop.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rw_helpers import answer, full_view, truncated_view, ts

from bftfs.rw.classify import (
    HostStatus,
    Kind,
    NodeView,
    RWThresholds,
    decide,
    view_from_history,
)
from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.thresholds import ThresholdError

B1 = RWThresholds(n=6, t=1, b=1, qc=4, m=3)
B2 = RWThresholds(n=11, t=2, b=2, qc=7, m=5)


# --- thresholds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,t,b,qc,m",
    [(5, 1, 1, 3, 2), (6, 1, 1, 4, 3), (6, 1, 1, 3, 2), (11, 2, 2, 7, 5), (17, 4, 4, 9, 5)],
)
def test_valid_configurations(n: int, t: int, b: int, qc: int, m: int) -> None:
    th = RWThresholds(n, t, b, qc, m)
    assert th.complete == qc + b and th.incomplete == qc - t and th.quorum == n - t


@pytest.mark.parametrize(
    "n,t,b,qc,m,rule",
    [
        (6, 1, 2, 4, 1, "b <= t"),
        (6, 1, 1, 2, 1, "t + b < QC"),
        (6, 1, 1, 5, 1, "QC <= N - t - b"),
        (6, 1, 1, 4, 4, "m <= QC - t"),
        (6, 1, 1, 4, 0, "1 <= m"),
    ],
)
def test_invalid_configurations_name_the_rule(
    n: int, t: int, b: int, qc: int, m: int, rule: str
) -> None:
    with pytest.raises(ThresholdError, match=re.escape(rule)):
        RWThresholds(n, t, b, qc, m)


def test_thresholds_from_cluster_config() -> None:
    from bftfs.config import ClusterConfig

    th = RWThresholds.from_config(ClusterConfig.for_test(t=2, b=2))
    assert th == B2


# --- the classification table (t = b = 1, N = 6, QC = 4, m = 3) --------------------------


def views_with(top_hosts: int, replies: int, th: RWThresholds = B1) -> dict[int, NodeView]:
    """``replies`` nodes all host v1; the first ``top_hosts`` also host v2."""
    v1, v2 = ts(10), ts(20)
    return {j: full_view(j, [v1, v2] if j < top_hosts else [v1]) for j in range(replies)}


@pytest.mark.parametrize(
    "hosts,replies,kind,cand",
    [
        (5, 5, Kind.COMPLETE, 20),  # QC + b = 5: complete (eq. 3.2)
        (4, 5, Kind.REPAIR, 20),  # between: repairable
        (3, 5, Kind.REPAIR, 20),  # QC - t = 3: still repairable with N - t replies (eq. 3.3)
        (2, 5, Kind.COMPLETE, 10),  # below QC - t: incomplete, next candidate complete
        (1, 5, Kind.COMPLETE, 10),  # one (Byzantine) node cannot fabricate anything (eq. 3.4)
        (6, 6, Kind.COMPLETE, 20),
        (4, 6, Kind.REPAIR, 20),  # with all N replies, QC hosts is the bar ...
        (3, 6, Kind.COMPLETE, 10),  # ... and three hosts of six prove it incomplete
    ],
)
def test_classification_table(hosts: int, replies: int, kind: Kind, cand: int) -> None:
    d = decide(B1, views_with(hosts, replies))
    assert d.kind is kind and d.candidate is not None and d.candidate.time == cand
    if cand == 20:
        assert d.holders == tuple(range(hosts))
    else:
        assert d.skipped == (ts(20),)


def test_fewer_than_n_minus_t_replies_widen() -> None:
    assert decide(B1, views_with(4, 4)).kind is Kind.WIDEN
    assert decide(B1, {}).kind is Kind.WIDEN


def test_first_round_may_finish_only_when_two_qc_exceed_n() -> None:
    th = RWThresholds(n=11, t=2, b=2, qc=6, m=4)  # first round QC + b = 8 < N - t = 9
    assert th.fast_read and th.first_round == 8
    assert decide(th, views_with(8, 8, th)).kind is Kind.COMPLETE
    assert decide(th, views_with(7, 8, th)).kind is Kind.WIDEN
    wide = RWThresholds(n=20, t=1, b=1, qc=3, m=2)  # 2 QC <= N: two QC sets may be disjoint
    assert not wide.fast_read
    assert decide(wide, views_with(4, 4, wide)).kind is Kind.WIDEN


def test_rejected_candidate_is_walked_past() -> None:
    d = decide(B1, views_with(5, 5), rejected=frozenset({ts(20)}))
    assert d.kind is Kind.COMPLETE and d.candidate == ts(10) and d.skipped == (ts(20),)


def test_nothing_written_is_the_complete_initial_version() -> None:
    d = decide(B1, {j: full_view(j, []) for j in range(5)})
    assert d.kind is Kind.COMPLETE and d.candidate == ZERO


def test_partial_write_only_falls_back_to_initial_version() -> None:
    views = {j: full_view(j, [ts(5)] if j < 2 else []) for j in range(5)}
    d = decide(B1, views)
    assert d.kind is Kind.COMPLETE and d.candidate == ZERO and d.skipped == (ts(5),)


def test_fabricated_versions_of_b_nodes_are_incomplete() -> None:
    # Two Byzantine nodes (b = 2) agree on a fabricated huge-time version.
    fake = ts(10**18, writer=666)
    good = ts(50)
    views = {j: full_view(j, [good, fake] if j < 2 else [good]) for j in range(9)}
    d = decide(B2, views)
    assert d.kind is Kind.COMPLETE and d.candidate == good


# --- partial knowledge: bounded histories --------------------------------------------------


def test_truncated_histories_that_hide_a_repairable_candidate_are_fetched() -> None:
    # Three histories end at a poisonous version L; below L they may hide a candidate that
    # three nodes host (repairable), so the walk cannot go on to `old` before asking.
    old, poison = ts(1), ts(40)
    views = {
        j: truncated_view(j, [old, poison, ts(50 + j)], 2) if j < 3 else full_view(j, [old])
        for j in range(5)
    }
    d = decide(B1, views, rejected=frozenset({poison}))
    assert d.kind is Kind.FETCH
    assert [(f.node, f.below, f.inclusive) for f in d.fetch] == [
        (j, poison, False) for j in range(3)
    ]
    for f in d.fetch:
        hist, more = answer([old, poison, ts(50 + f.node)], f.below, f.inclusive, 2)
        views[f.node] = view_from_history(f.node, hist, more, ZERO, previous=views[f.node])
    d = decide(B1, views, rejected=frozenset({poison}))
    assert d.kind is Kind.COMPLETE and d.candidate == old


def test_few_truncated_histories_cannot_hide_a_candidate() -> None:
    old = ts(1)
    views = {
        j: truncated_view(j, [old, ts(10 + j), ts(20 + j)], 2) if j < 2 else full_view(j, [old])
        for j in range(5)
    }
    # Two unknown nodes < QC - t = 3: any hidden version would be incomplete; but they may
    # host `old`, and only 3 nodes are known to, which is already repairable.
    d = decide(B1, views)
    assert d.kind is Kind.REPAIR and d.candidate == old


def test_unknown_nodes_deciding_the_count_are_asked_about_the_candidate() -> None:
    v = ts(5)
    views = {
        0: truncated_view(0, [v, ts(30), ts(31)], 2),
        1: full_view(1, [v]),
        2: full_view(2, [v]),
        3: full_view(3, []),
        4: full_view(4, []),
    }
    d = decide(B1, views)
    assert d.kind is Kind.FETCH
    assert [(f.node, f.below, f.inclusive) for f in d.fetch] == [(0, v, True)]
    hist, more = answer([v], v, True, 2)
    views[0] = view_from_history(0, hist, more, ZERO, previous=views[0], fetched=True)
    assert views[0].status(v) is HostStatus.HOSTS
    d = decide(B1, views)
    assert d.kind is Kind.REPAIR and d.candidate == v


def test_garbage_collected_replies_restart_when_b_plus_1_and_count_as_lacking_otherwise() -> None:
    v_new, v_old = ts(20), ts(10)
    floor = ts(15)

    def collected(j: int) -> NodeView:
        return view_from_history(j, [v_new], False, floor)

    # v_new on 2 nodes (incomplete); two nodes collected below 15, so whether they host
    # v_old is unknowable, and they decide whether v_old (on 2 known nodes) is repairable.
    views = {
        0: collected(0),
        1: collected(1),
        2: full_view(2, [v_old]),
        3: full_view(3, [v_old]),
        4: full_view(4, []),
    }
    assert views[0].status(v_old) is HostStatus.COLLECTED
    assert decide(B1, views).kind is Kind.RESTART  # 2 = b + 1 collected: a GC raced the read
    views[1] = full_view(1, [])
    assert decide(B1, views, restart_at=1).kind is Kind.RESTART  # the client's first tries
    d = decide(B1, views)  # one collected reply is treated like a Byzantine one
    assert d.candidate == ZERO  # (the client returns the empty block; nothing to repair)
    views[4] = full_view(4, [v_old])  # collected replies that do not decide are irrelevant
    views[1] = collected(1)
    d = decide(B1, views)
    assert d.kind is Kind.REPAIR and d.candidate == v_old


def test_initial_version_lost_to_collection_restarts() -> None:
    floor = ts(100)
    views = {j: view_from_history(j, [floor] if j < 2 else [], False, floor) for j in range(5)}
    d = decide(B1, views)
    assert d.kind is Kind.RESTART


def test_a_node_out_of_fetches_counts_as_collected() -> None:
    view = truncated_view(0, [ts(3), ts(4), ts(5)], 1)
    for _ in range(3):
        view = view_from_history(0, [ts(4)], True, ZERO, previous=view, fetched=True, max_fetches=3)
    assert view.collected and view.status(ts(1)) is HostStatus.COLLECTED


def test_view_merge_never_shrinks_knowledge() -> None:
    view = view_from_history(0, [ts(9), ts(8)], True, ZERO)
    assert view.lo == ts(8) and view.status(ts(7)) is HostStatus.UNKNOWN
    assert view.status(ts(8)) is HostStatus.HOSTS
    merged = view_from_history(0, [ts(7)], False, ZERO, previous=view)
    assert merged.lo == ZERO and merged.status(ts(6)) is HostStatus.LACKS
    # A reply that reaches no lower (here: the node collected that part) keeps what is known.
    again = view_from_history(0, [], False, ts(8), previous=view)
    assert again.lo == ts(8) and again.collected


# --- properties against the seed's READ loop -----------------------------------------------


def seed_read(th: RWThresholds, hosted: dict[int, set[Timestamp]]) -> tuple[Kind, Timestamp]:
    """The seed's READ (Figure 3.2) over N - t full replies: walk candidates newest first."""
    everything = sorted(set().union(*hosted.values()) | {ZERO}, reverse=True)
    missing = th.n - len(hosted)
    for cand in everything:
        count = sum(1 for v in hosted.values() if cand in v or cand == ZERO)
        if count >= th.complete:
            return Kind.COMPLETE, cand
        if count >= th.qc - missing:
            return Kind.REPAIR, cand
    raise AssertionError("ZERO is hosted everywhere")


@st.composite
def cluster_states(draw: st.DrawFn) -> tuple[RWThresholds, dict[int, set[Timestamp]]]:
    th = draw(st.sampled_from([B1, B2, RWThresholds(5, 1, 1, 3, 2), RWThresholds(7, 2, 1, 4, 2)]))
    replies = draw(st.integers(th.quorum, th.n))
    versions = [ts(t) for t in range(1, draw(st.integers(0, 8)) + 1)]
    hosted = {j: {v for v in versions if draw(st.booleans())} for j in range(replies)}
    return th, hosted


@given(cluster_states())
def test_full_knowledge_matches_the_seed(
    state: tuple[RWThresholds, dict[int, set[Timestamp]]],
) -> None:
    th, hosted = state
    d = decide(th, {j: full_view(j, v) for j, v in hosted.items()})
    assert (d.kind, d.candidate) == seed_read(th, hosted)


@given(cluster_states(), st.integers(1, 3))
@settings(max_examples=200)
def test_bounded_histories_and_fetches_reach_the_seed_decision(
    state: tuple[RWThresholds, dict[int, set[Timestamp]]], history: int
) -> None:
    th, hosted = state
    views = {j: truncated_view(j, v, history) for j, v in hosted.items()}
    for _round in range(100):
        d = decide(th, views)
        if d.kind is not Kind.FETCH:
            break
        for f in d.fetch:
            hist, more = answer(hosted[f.node], f.below, f.inclusive, history)
            views[f.node] = view_from_history(
                f.node, hist, more, ZERO, previous=views[f.node], fetched=True, max_fetches=1000
            )
    expect_kind, expect_cand = seed_read(th, hosted)
    assert d.candidate == expect_cand
    # Partial knowledge may call a complete candidate repairable (repair is harmless),
    # never the other way round.
    assert d.kind is expect_kind or (d.kind, expect_kind) == (Kind.REPAIR, Kind.COMPLETE)


@pytest.mark.parametrize("seed", range(20))
def test_byzantine_histories_never_lift_an_incomplete_write_or_hide_a_complete_one(
    seed: int,
) -> None:
    """b nodes answer anything; the decision is still between the seed's bounds."""
    rng = random.Random(seed)
    th = rng.choice([B1, B2])
    complete = ts(100)
    partial = ts(200)  # on fewer than QC - t - b correct nodes: must never be returned
    correct = list(range(th.b, th.quorum))
    hosted: dict[int, set[Timestamp]] = {}
    for j in correct:
        hosted[j] = {complete}
    for j in correct[: max(0, th.incomplete - th.b - 1)]:
        hosted[j].add(partial)
    for j in range(th.b):  # Byzantine: random fabricated and real versions
        hosted[j] = {ts(rng.randrange(1, 10**6), writer=9, tag=k) for k in range(rng.randrange(4))}
        if rng.random() < 0.5:
            hosted[j].add(partial)
    d = decide(th, {j: full_view(j, v) for j, v in hosted.items()})
    assert d.candidate == complete
