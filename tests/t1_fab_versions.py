"""Object versions under FaB (``bftfs/fab/versions.py``, issue 39): every correct node of a
simulated run with a view change, checkpoints and log collection keeps the same versions
with the same times; a restarted node keeps them (its store, ``fab_server``'s persist);
a node that installs a fetched snapshot knows only what came after it; retention thins by
the versions' own clock, deterministically, keeping the newest and the snapshots' versions;
nodes answer only a cut they executed (``fab/pastclient.py``)."""

from __future__ import annotations

from typing import Any

from fab_sim import CLIENT_BASE, Network, silent
from t1_fab_durable import _persisted
from t1_fab_protocol import _increments, _settle

from bftfs import thinning
from bftfs.fab import durable, pastclient
from bftfs.fab.execution import Execution
from bftfs.fab.pastclient import best
from bftfs.fab.replica import Replica, Settings
from bftfs.fab.versions import Entry, History, Retention, Versions
from bftfs.kv import MemoryKV
from bftfs.qu.canon import canonical, unpack
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q1 = FabQuorums.standard(1)
NODE = 2
S = 10**9
HOUR = thinning.HOUR_NS


def _kept_versions(r: Replica, kv: MemoryKV) -> None:
    """Also write the versions' changes after each step, as ``fab_server`` does."""
    step = r.step

    def stepped(sender: int, data: bytes) -> Any:
        out = step(sender, data)
        durable.write(kv, r.execution.versions.changes())
        return out

    setattr(r, "step", stepped)  # noqa: B010 - an instance's method, wrapped


def test_correct_nodes_keep_the_same_versions_and_a_restart_keeps_them() -> None:
    net = Network(6, Q1, registry(), seed=21, settings=Settings(window=16, interval=8),
                  byzantine={0: silent})  # fmt: skip
    kvs = {i: MemoryKV() for i in net.correct()}
    for i, kv in kvs.items():
        _persisted(net.replicas[i], kv)
        _kept_versions(net.replicas[i], kv)
    net.submit(CLIENT_BASE + 1, "counter.increment", [2], 5)  # object 2: one version
    assert net.run(net.idle)
    assert _increments(net, 30) and _settle(net)
    top = max(net.replicas[i].execution.executed for i in net.correct())
    assert net.replicas[1].election.regency >= 1  # a view change on the way
    whole = [i for i in net.correct() if net.replicas[i].statistics().installed == 0]
    fetched = [i for i in net.correct() if i not in whole]
    assert whole and fetched  # (seed 21: nodes 1-4 caught up by a snapshot)
    answers = {canonical(net.replicas[i].execution.versions.answer(1, top)) for i in whole}
    assert len(answers) == 1
    r = net.replicas[whole[0]]
    complete, entries = r.execution.versions.answer(1, top)
    assert complete and [unpack(e[3]) for e in entries] == list(range(1, 31))
    times = [e[1] for e in entries]
    assert times == sorted(set(times))  # strictly increasing, from the clients' rids
    # the cut: a node answers only up to the slot asked for
    assert len(r.execution.versions.answer(1, entries[9][0])[1]) == 10
    for i in fetched:  # a node that caught up by a snapshot lacks the versions before it
        complete, tail = net.replicas[i].execution.versions.answer(1, top)
        assert not complete and len(tail) < 30
    # ... but not of an object that did not change in what it skipped: every node agrees
    two = {canonical(net.replicas[i].execution.versions.answer(2, top)) for i in net.correct()}
    assert len(two) == 1 and net.replicas[1].execution.versions.answer(2, top)[0] is True

    for i in net.correct():  # a restart: its store's versions, its own snapshot
        image = durable.load(kvs[i])
        assert image is not None and image.state is not None and image.state.seq >= 24
        back = net._replica(i)
        back.execution.versions.load(kvs[i])
        back.execution.versions.restoring = True  # its own snapshot clears nothing
        back.restore(image)
        mine = net.replicas[i].execution.versions
        for oid in (1, 2):
            assert back.execution.versions.answer(oid, top) == mine.answer(oid, top)
        assert back.execution.versions.clock == mine.clock


def test_a_fetched_snapshot_carries_the_clock_and_the_newest_version_not_those_before() -> None:
    ex = Execution(registry())
    ex.apply(1, b"")  # (malformed: a slot with nothing)
    ex.versions.executed(1, 7, 5 * S, {1: canonical(1)}, {})
    ex.objects[1] = 1
    other = Execution(registry())
    assert other.install(ex.snapshot())
    assert other.versions.clock == 5 * S
    # it existed before: incomplete, from its newest version as the snapshot stamps it
    assert other.versions.answer(1, 1) == [False, [[1, 5 * S, 7, canonical(1), False]]]
    other.versions.executed(2, 7, 1, {1: canonical(2), 9: canonical(1)}, other.objects)
    assert other.versions.answer(1, 2)[1][1][1] == 5 * S + 1  # monotonic over the clock
    assert other.versions.answer(9, 2)[0] is True  # created after the install: complete
    # a snapshot of the format before versions (no clock) still installs
    assert Execution(registry()).install(canonical([1, {1: 1}, {}]))


def test_nodes_that_caught_up_by_a_snapshot_answer_an_objects_newest_version() -> None:
    """``t4_fab_history`` once read "object 0x1: no version is kept": the root last changed
    before the checkpoint that most nodes of a loaded cluster caught up by, and such a
    node knew nothing of its versions.  ``f + 1`` of them answered the same empty page,
    the one node that executed the change could not get the complete one vouched for, and
    the read took the empty page.  Now the certified state stamps each object's newest
    version, and a node that installs it (in chunks, as state transfer does) answers that
    version: the page taken reaches the version current at any later moment."""
    ex = Execution(registry())
    ex.apply(1, b"")  # (malformed: a slot with nothing)
    ex.versions.executed(1, 7, 5 * S, {1: canonical({"root": 1})}, {})
    ex.objects[1] = {"root": 1}
    chunked = Execution(registry())  # (the image of that state, its buckets all encoded)
    assert chunked.install(ex.snapshot())
    image = chunked.image()
    caught_up = [Execution(registry()) for _ in range(4)]
    assert all(o.install_image(image) for o in caught_up)
    assert {o.digest() for o in caught_up} == {image.root}
    nodes = [ex, *caught_up]
    pages = [pastclient.serve(o.versions, o.executed, [[1], 1])[1][0] for o in nodes]
    answers = {canonical(p): p for p in pages}
    votes: dict[bytes, set[int]] = {}
    for i, p in enumerate(pages):
        votes.setdefault(canonical(p), set()).add(i)
    whole = [1, 5 * S, 7, canonical({"root": 1}), False]
    assert pages[0] == [True, [whole], False]
    # five of six answered, only one complete: the others' page is taken, and it holds
    # the version (before: [False, [], False], "no version is kept")
    assert best(answers, votes, 1, 6) == [False, [whole], False]


def test_a_restart_from_a_snapshot_without_stamps_takes_them_from_its_versions() -> None:
    """A node upgraded from the format before stamps restores its own snapshot (slots
    alone) over the versions it recorded: it stamps the objects from those, as a node that
    executed the same slots does, so their states encode alike (checkpoint digests)."""
    ran = Versions()
    ran.executed(1, 7, 5 * S, {1: canonical(1), 2: canonical(1)}, {})
    ran.executed(2, 8, 6 * S, {1: canonical(2)}, {1: 1, 2: 1})
    back = Versions()
    back.objects = {oid: History(list(h.entries), h.complete) for oid, h in ran.objects.items()}
    back.restoring = True
    back.installed([ran.clock, dict(ran.changed)], {1: 2, 2: 1}, 2)
    assert back.stamps == ran.stamps == {1: [6 * S, 8], 2: [5 * S, 7]}


class _Writer:
    """Updates of objects at chosen times, as execution hands them to :class:`Versions`."""

    def __init__(self, versions: Versions) -> None:
        self.v, self.slot, self.objects = versions, 0, dict[int, Any]()

    def write(self, oid: int, time: int, value: Any) -> None:
        self.slot += 1
        self.v.executed(self.slot, 7, time, {oid: canonical(value)}, self.objects)
        self.objects[oid] = value

    def times(self, oid: int) -> list[tuple[int, bool]]:
        return [(e[1], e[4]) for e in self.v.answer(oid, self.slot)[1]]


def test_retention_thins_by_the_versions_clock_keeping_newest_and_snapshots() -> None:
    pins: list[int] = []
    keep = Retention(thinning.Schedule(keep_ns=60 * S, hourly=2), keep_last=1)
    w = _Writer(Versions(keep, lambda: pins))
    base = 1000 * HOUR
    w.write(1, base + 10 * S, "a")
    w.write(1, base + 20 * S, "b")  # newest of hour 1000
    pins.append(base + 15 * S)  # a snapshot: "a" was current then
    w.write(1, base + HOUR + 5 * S, "c")
    w.write(1, base + HOUR + 10 * S, "d")
    # younger than 60 s all but the first three; nothing thinned yet
    assert [t for t, thinned in w.times(1) if thinned] == []
    # other objects move the clock on: object 1 is looked at when its versions are due
    w.write(2, base + HOUR + 100 * S, "x")
    assert w.times(1) == [
        (base + 10 * S, False),  # pinned by the snapshot
        (base + 20 * S, False),  # the newest of its hour, kept 2 h
        (base + HOUR + 5 * S, True),  # neither: thinned, a gap
        (base + HOUR + 10 * S, False),  # the newest (keep_versions)
    ]
    pins.clear()
    w.write(2, base + 3 * HOUR + 30 * S, "y")  # past the 2 h horizon of hour 1000
    assert w.times(1) == [(base + HOUR + 10 * S, False)]
    assert w.v.answer(1, w.slot)[0] is False  # no longer reaches the object's start
    assert w.v.answer(2, w.slot)[0] is True


def test_the_same_updates_thin_alike_whenever_a_node_looks() -> None:
    """A restarted node looks at every object at its next version, not when it was due:
    thinning at a later clock gives what thinning on the way gave."""
    keep = Retention(thinning.Schedule(keep_ns=60 * S, hourly=1), keep_last=1)
    a, b = _Writer(Versions(keep)), _Writer(Versions(keep))
    t = 500 * HOUR
    for k in range(20):
        a.write(1, t + k * 600 * S, k)
    kv = MemoryKV()
    durable.write(kv, a.v.changes())
    b.v.load(kv)
    b.slot, b.objects, b.v.clock = a.slot, dict(a.objects), a.v.clock
    for w in (a, b):
        for k in range(5):
            w.write(2, t + 3 * HOUR + 1800 * S + k * S, k)
    assert a.v.answer(1, a.slot) == b.v.answer(1, b.slot)
    assert sum(thinned for _, thinned in a.times(1)) > 0


def test_a_node_answers_a_cut_it_executed_and_refuses_nonsense() -> None:
    w = _Writer(Versions())
    w.write(5, 3 * S, "v")
    assert pastclient.serve(w.v, 0, [[5], 1]) == ["behind", 0]
    assert pastclient.serve(w.v, 1, [[5, 6], 1]) == [
        "ok",
        [[True, [[1, 3 * S, 7, canonical("v"), False]], False], [True, [], False]],
    ]
    for bad in ([[], 1], [[5] * 65, 1], [["x"], 1], [5, 1], "x", [[5], 1, [None, 1]], [[5], 1, 0]):
        try:
            pastclient.serve(w.v, 1, bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was answered")


def test_a_history_two_nodes_know_only_since_a_snapshot_does_not_hide_the_full_one() -> None:
    """Two correct nodes that installed the same snapshot answer an object's versions alike,
    incomplete (``f + 1`` of them); the client waits for ``n - f`` answers and takes the
    complete history the others vouch for, or, with none complete, the one reaching
    furthest back (CI once read a file's past as reclaimed this way)."""
    full = [True, [[3, 30, 1, None, True], [9, 90, 1, b"s", False]]]
    since = [False, [[9, 90, 1, b"s", False]]]
    answers = {canonical(a): a for a in (full, since)}

    def votes(**by: set[int]) -> dict[bytes, set[int]]:
        return {canonical(full): by.get("full", set()), canonical(since): by.get("since", set())}

    assert best(answers, votes(since={4, 5}), 1, 6) is None  # only two answered: wait
    assert best(answers, votes(since={4, 5}, full={0}), 1, 6) is None
    assert best(answers, votes(since={4, 5}, full={0, 1}), 1, 6) == full  # at once
    older = [False, [[5, 50, 1, b"r", False], [9, 90, 1, b"s", False]]]
    answers[canonical(older)] = older
    v = {canonical(since): {4, 5}, canonical(older): {0, 1}, canonical(full): {2}}
    assert best(answers, v, 1, 6) == older  # five answered, none complete vouched for
    # A liar's page (b = 1) is one vote: neither a made-up older start nor a truncated
    # history claimed complete is taken, however far back it reaches.
    made_up = [False, [[1, 10, 1, b"x", False], *since[1]]]
    cut = [True, since[1]]
    answers.update({canonical(made_up): made_up, canonical(cut): cut})
    v = {canonical(since): {0, 1}, canonical(made_up): {2}, canonical(cut): {3}}
    v[canonical(older)] = {4}
    assert best(answers, v, 1, 6) == since
    assert best(answers, {canonical(since): {4, 5, 0, 1, 2}}, 1, 6) == since


def test_long_histories_come_in_pages_every_node_cuts_alike() -> None:
    """An object's versions come a page at a time (``fab/pastclient.py``): bounded in
    versions and in bytes of states, the same pages on every node holding the same
    versions, a continuation only from a node whose history reaches the cursor, and an
    answer of many objects stops short of ``ANSWER_BYTES`` (the rest asked again)."""
    w = _Writer(Versions())
    for k in range(2 * pastclient.PAGE_VERSIONS + 5):  # small states: bound by count
        w.write(1, (k + 1) * S, k)
    first = pastclient.serve(w.v, w.slot, [[1], w.slot])[1][0]
    complete, entries, more = first
    assert complete and more and len(entries) == pastclient.PAGE_VERSIONS
    cursor, got = entries[-1][0], list(entries)
    while more:
        page = pastclient.serve(w.v, w.slot, [[1], w.slot, [cursor]])[1][0]
        entries, more = page
        got += entries
        cursor = entries[-1][0] if entries else cursor
    assert got == w.v.answer(1, w.slot)[1]  # every version once, in order
    big = bytes(pastclient.PAGE_BYTES // 3)  # large states: bound by bytes, one at least
    for k in range(7):
        w.write(2, (5000 + k) * S, big + bytes([k]))
    _, entries, more = pastclient.serve(w.v, w.slot, [[2], w.slot])[1][0]
    assert more and len(entries) == 2
    huge = bytes(pastclient.PAGE_BYTES * 2)
    w.write(3, 9000 * S, huge)
    assert pastclient.serve(w.v, w.slot, [[3], w.slot])[1][0][1][0][3] == canonical(huge)
    # many objects: the answer stops at ANSWER_BYTES, the first object always in it
    many = list(range(10, 20))
    for oid in many:
        for k in range(3):
            w.write(oid, (10_000 + 3 * oid + k) * S, big + bytes([k]))
    pages = pastclient.serve(w.v, w.slot, [many, w.slot])[1]
    assert pages[0] is not None and None in pages
    weight = sum(
        pastclient.page(w.v, o, w.slot, None)[1] for o, p in zip(many, pages, strict=True) if p
    )
    assert weight <= pastclient.ANSWER_BYTES
    # a node whose history starts after the cursor (it installed a snapshot) says nothing
    late = Versions()
    late.objects[1] = History([Entry(*e) for e in w.v.answer(1, w.slot)[1][500:]], False)
    assert pastclient.serve(late, w.slot, [[1], w.slot, [10]])[1] == [None]
    # an object larger than an answer's budget still goes when nothing precedes it
    w.write(4, 9001 * S, bytes(pastclient.ANSWER_BYTES + 1))
    late.objects[4] = w.v.objects[4]
    none, alone = pastclient.serve(late, w.slot, [[1, 4], w.slot, [10, None]])[1]
    assert none is None and alone is not None and alone[1][0][0] == w.slot
    assert (
        pastclient.serve(late, w.slot, [[1], w.slot, [600]])[1][0]
        == pastclient.page(w.v, 1, w.slot, 600)[0]
    )
