"""Tier 1: the rule that cools an object others keep recalling (issue 62,
``fs/leases/contention.py``), on a fake clock passed in: more than ``k`` contention events
within the window start a cool-down, contention again while it is remembered doubles it,
quiet halves it and forgets it, and the holdings ask for no lease while it runs."""

from __future__ import annotations

import random
from collections import Counter

from bftfs.fs.leases.contention import BASE, LONGEST, Contention
from bftfs.fs.leases.holdings import READ_COOL, Holdings, Lease
from bftfs.fsobjects.leases import EXCLUSIVE


def fresh(k: int = 3, window: float = 30.0) -> tuple[Contention, Counter[str]]:
    stats: Counter[str] = Counter()
    return Contention(stats, k=k, window=window, base=BASE, longest=LONGEST), stats


def test_more_than_k_within_the_window_cools_the_object() -> None:
    c, stats = fresh()
    now = 100.0
    for i in range(3):
        assert not c.contended(7, now + i)
        assert not c.cooled(7, now + i)
    assert c.contended(7, now + 3)  # the fourth: more than k
    assert c.cooled(7, now + 3) and c.cooled(7, now + 3 + BASE - 0.01)
    assert not c.cooled(7, now + 3 + BASE)
    assert not c.cooled(8, now + 3)  # per object
    assert stats["cooled"] == 1


def test_events_spread_beyond_the_window_do_not_cool() -> None:
    c, stats = fresh()
    for i in range(20):
        assert not c.contended(1, i * 11.0)  # three per 30 s window at most
    assert not c.cooled(1, 220.0)
    assert stats["cooled"] == 0


def test_contention_after_a_cool_down_doubles_it_up_to_the_longest() -> None:
    c, stats = fresh()
    now = 0.0
    for i in range(4):
        c.contended(5, now + i)
    assert c.cool_of(5) == BASE
    now = 3 + BASE  # it ended: one recall at once cools it again, twice as long
    assert not c.cooled(5, now)
    assert c.contended(5, now)
    assert c.cool_of(5) == 2 * BASE and c.cooled(5, now + 2 * BASE - 0.01)
    # Events during a cool-down (its own update refused by another's lease) change nothing.
    assert not c.contended(5, now + 1)
    for _ in range(20):
        now += c.cool_of(5)
        c.contended(5, now)
    assert c.cool_of(5) == LONGEST
    assert stats["cooled"] == 22


def test_quiet_after_the_cool_down_halves_and_forgets_it() -> None:
    c, _ = fresh()
    for i in range(4):
        c.contended(9, float(i))
    now = 3.0
    for _ in range(3):  # grow it to 8 * BASE
        now += c.cool_of(9)
        c.contended(9, now)
    assert c.cool_of(9) == 8 * BASE
    end = now + 8 * BASE
    assert not c.cooled(9, end + 8 * BASE)  # one length of quiet: halved
    assert c.cool_of(9) == 4 * BASE
    assert not c.cooled(9, end + 15 * BASE)  # 8 + 4 + 2 + 1 lengths: forgotten
    assert c.cool_of(9) == 0.0
    for i in range(3):  # forgotten: k events tolerated again
        assert not c.contended(9, end + 20 * BASE + i)


def test_seeded_random_events_cool_only_past_k_per_window() -> None:
    """Against a direct count: an object is cooled by an event exactly when, with no
    cool-down remembered, more than k events fell within the window (seeded)."""
    rng = random.Random(62)
    c, _ = fresh(k=2, window=10.0)
    now = 0.0
    times: list[float] = []
    for _ in range(200):
        now += rng.expovariate(0.15)
        if c.cooled(3, now):
            continue
        remembered = c.cool_of(3) > 0
        times = [t for t in times if t > now - 10.0] + [now]
        started = c.contended(3, now)
        assert started == (remembered or len(times) > 2)
        if started:
            times = []


def test_holdings_ask_for_no_lease_on_a_cooled_object() -> None:
    stats: Counter[str] = Counter()
    h = Holdings(30.0, lambda: 0, stats, dropped=lambda oid: None, woke=lambda oids: None)
    for i in range(4):
        h.contention.contended(11, float(i))
    assert h.quiet(11, 5.0) and not h.quiet(12, 5.0)
    assert stats["cool_skipped"] == 1 and stats["cooled"] == 1
    assert not h.quiet(11, 3.0 + BASE)


def test_a_cooled_directorys_entries_cool_with_it() -> None:
    """Entries seen in a directory that met contention are not leased while it cools
    down; those of a directory that met none are not tracked."""
    c, _ = fresh()
    c.children(40, [41, 42])  # no contention in 40 yet: nothing kept
    for i in range(3):
        c.contended(40, float(i))
    c.children(40, [43, 44])
    assert not c.cooled(43, 2.5)  # 40 is not cooling yet
    assert c.contended(40, 3.0)
    assert c.cooled(43, 4.0) and c.cooled(44, 4.0) and not c.cooled(41, 4.0)
    assert not c.cooled(43, 3.0 + BASE)


def test_recalls_of_read_leases_in_a_directory_let_the_others_there_go() -> None:
    """A mount reading a directory another client writes in (a file manager beside a
    build): each recall of one of its shared leases there counts once as contention of
    the directory; the one that cools it lets go of its other shared leases there (and on
    the directory), never of an exclusive one or of one continuing its own holding, nor of
    leases elsewhere."""
    stats: Counter[str] = Counter()
    h = Holdings(30.0, lambda: 0, stats, dropped=lambda oid: None, woke=lambda oids: None)
    d, other = 50, 60
    files = list(range(51, 58))
    h.seen_in(d, files)
    h.seen_in(other, [61])
    for o in [d, *files, 61]:
        h.held[o] = Lease(0.0, 1e9)
    h.held[56] = Lease(0.0, 1e9, kind=EXCLUSIVE)
    h.held[57] = Lease(0.0, 1e9, kept=True)
    # Three recalls (one of them of two files at once: one event) do not cool it.
    assert h.read_where_changed([51], 1.0) == []
    assert h.read_where_changed([52, 53], 2.0) == []
    assert h.read_where_changed([54], 3.0) == []
    for o in (51, 52, 53, 54):
        del h.held[o]
    # An exclusive lease recalled says nothing of readers: not counted.
    assert h.read_where_changed([56], 3.5) == []
    # The fourth recall of a read lease cools the directory: what else is read there goes.
    assert sorted(h.read_where_changed([55], 4.0)) == [d]
    assert h.contention.cooled(d, 4.0) and stats["read_leases_let_go"] == 1
    assert 61 in h.held and not h.contention.cooled(other, 4.0)


def test_a_recalled_directory_is_not_counted_twice_through_its_entries() -> None:
    """A recall naming a directory and its entries counts the directory's own contention
    (the caller's), not once more per entry."""
    stats: Counter[str] = Counter()
    h = Holdings(30.0, lambda: 0, stats, dropped=lambda oid: None, woke=lambda oids: None)
    h.seen_in(70, [71, 72])
    for o in (70, 71, 72):
        h.held[o] = Lease(0.0, 1e9)
    for t in range(5):
        assert h.read_where_changed([70, 71, 72], float(t)) == []
    assert not h.contention.cooled(70, 5.0)


def test_while_a_directory_cools_a_recall_there_lets_its_read_leases_go() -> None:
    """A directory cooled by recalls of its own lease (another client creating there):
    the next recall of it or of a read lease there lets go of the mount's other read
    leases there; a cool-down started by read leases lasts at least ``READ_COOL``."""
    stats: Counter[str] = Counter()
    h = Holdings(30.0, lambda: 0, stats, dropped=lambda oid: None, woke=lambda oids: None)
    h.seen_in(80, [81, 82, 83])
    for o in (81, 82, 83):
        h.held[o] = Lease(0.0, 1e9)
    for t in range(4):  # the directory's own lease recalled: counted by the caller
        h.contention.contended(80, float(t))
    assert h.contention.cooling_now(80, 3.5)
    assert sorted(h.read_where_changed([80], 3.5)) == [81, 82, 83]
    assert stats["read_leases_let_go"] == 3
    # Another directory cooled through its read leases stays cooled READ_COOL.
    h.seen_in(90, [91, 92, 93, 94])
    for o in (91, 92, 93, 94):
        h.held[o] = Lease(0.0, 1e9)
    for t, o in enumerate((91, 92, 93, 94)):
        h.read_where_changed([o], 100.0 + t)
        del h.held[o]
    assert h.contention.cooling_now(90, 103.0 + READ_COOL - 0.1)
    assert not h.contention.cooling_now(90, 103.0 + READ_COOL)
