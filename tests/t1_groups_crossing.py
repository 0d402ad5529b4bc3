"""A mount's operations across groups (issue 66, ``fs/clients/crossing.py``,
``fsobjects/halves.py``): three in-memory groups (``qu_helpers.MemCluster``, the node's
own request handling) whose nodes serve the file system's types and the ``txn`` type as
a node of a cluster of groups does (``layout/nodetxn.LiveTxn``), signing by their
long-term keys; the mount's router (``GroupedQU``) runs a rename, link or mkdir whose
objects span groups as one transaction, in trio's virtual time.  Each check fails on the
router without the crossing (``crossing=False``: EXDEV), as main had it."""

from __future__ import annotations

import dataclasses
import errno
import random
import stat as st
from typing import Any

import pytest
import trio
import trio.testing
from qu_helpers import MemCluster, keyrings

from bftfs.fs.clients.crossing import Crossing
from bftfs.fs.clients.groups import CrossGroup, GroupedQU
from bftfs.fsobjects import OBJECT_TYPES, RENAME_EXCHANGE, ROOT, entries
from bftfs.fsobjects.txnsign import sign
from bftfs.ids import client_id
from bftfs.layout.model import Group, Layout, LayoutNode, check
from bftfs.layout.nodetxn import LiveTxn
from bftfs.layout.txn import Abandon, Part
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.testing.byzantine.qu import BEHAVIOURS

NOW = 10**9


def virtual(fn: Any) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def _clock() -> int:
    return NOW + int(trio.current_time() * 1e9)


class Groups:
    """Three groups of six (t = b = 1) under one layout, nodes serving ``fs`` and ``txn``."""

    def __init__(self, count: int = 3, seed: int = 0) -> None:
        seeds = [1000 * seed + 17 * g + 1 for g in range(count)]
        rings = [keyrings(6, 4, s)[0] for s in seeds]
        nodes = tuple(
            LayoutNode(6 * gi + i, "10.0.0.1", 7000 + 6 * gi + i, r.me.public, f"d{i}")
            for gi, rs in enumerate(rings)
            for i, r in enumerate(rs)
        )
        groups = tuple(Group(gi, tuple(range(6 * gi, 6 * gi + 6))) for gi in range(count))
        table = tuple(p % count for p in range(16))
        self.layout = check(Layout(3, 16, 1, 1, nodes, groups, table, table))
        #: Each group's ``txn`` type, switched to another layout as a node's is.
        self.lives = [LiveTxn(self.layout, OBJECT_TYPES) for _ in range(count)]
        self.clusters: list[MemCluster] = []
        for s, rs, live in zip(seeds, rings, self.lives, strict=True):
            c = MemCluster(seed=s, reg=Registry([*OBJECT_TYPES, live.type]))
            c.cfgs = [
                dataclasses.replace(cfg, signer=_signer(r.me.private))
                for cfg, r in zip(c.cfgs, rs, strict=True)
            ]
            self.clusters.append(c)
        self.rng = random.Random(seed)

    def mount(self, k: int, *, crossing: bool = True, **kw: Any) -> GroupedQU:
        """Client ``k``'s router over every group (its crossing on trio's clock)."""
        clients = [
            QUClient(c.endpoint(k), c.th, client_id=int(client_id(k)), rng=random.Random(k))
            for c in self.clusters
        ]
        qu = GroupedQU(self.layout, clients, crossing=False)
        if crossing:
            qu.crossing = Crossing(
                self.layout, clients, rng=random.Random(50 + k), clock=_clock, **kw
            )
        return qu

    def oid_in(self, group: int) -> int:
        while True:
            oid = self.rng.randrange(2, 1 << 40)
            if self.layout.group_of_object(oid) == group:
                return oid


def _signer(private: bytes) -> Any:
    return lambda m: sign(private, m)


async def mkdir(g: Groups, qu: GroupedQU, parent: int, name: bytes, group: int) -> int:
    oid = g.oid_in(group)
    arg = {"p": parent, "o": oid, "name": name, "now": _clock(), "mode": 0o2755}
    await qu.update([parent, oid], "fs.mkdir", {**arg, "uid": 1, "gid": 7})
    return oid


async def create(g: Groups, qu: GroupedQU, parent: int, name: bytes) -> int:
    oid = g.oid_in(g.layout.group_of_object(parent))
    arg = {"p": parent, "o": oid, "name": name, "now": _clock(), "mode": st.S_IFREG | 0o644}
    await qu.update([parent, oid], "fs.create", {**arg, "uid": 1, "gid": 1, "d": oid, "alloc": 0})
    return oid


async def names(qu: GroupedQU, d: int) -> dict[bytes, int]:
    listing = await qu.query(d, "fs.readdir")
    return {n: e[0] for n, e in entries({"e": dict(enumerate(listing["e"]))}).items()}


async def tree(g: Groups, qu: GroupedQU) -> tuple[int, int, int]:
    """The root (on its group), directories ``a`` and ``b`` on the two other groups, a
    file ``a/f``."""
    root_group = g.layout.group_of_object(ROOT)
    await qu.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": _clock()})
    others = [x for x in range(3) if x != root_group]
    a = await mkdir(g, qu, ROOT, b"a", others[0])
    b = await mkdir(g, qu, ROOT, b"b", others[1])
    return a, b, await create(g, qu, a, b"f")


def rename_arg(sp: int, sn: bytes, dp: int, dn: bytes, o: int, t: int | None = None) -> dict:
    return {"sp": sp, "sn": sn, "dp": dp, "dn": dn, "o": o, "t": t, "flags": 0, "now": _clock()}


def test_a_file_renamed_across_groups_moves_atomically() -> None:
    g = Groups()

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        assert len({g.layout.group_of_object(x) for x in (ROOT, a, b)}) == 3
        old = g.mount(1, crossing=False)  # main's router: EXDEV, nothing sent
        with pytest.raises(CrossGroup) as e:
            await old.update(sorted([a, b, f]), "fs.rename", rename_arg(a, b"f", b, b"g", f))
        assert e.value.errno == errno.EXDEV
        stats = await qu.update(sorted([a, b, f]), "fs.rename", rename_arg(a, b"f", b, b"g", f))
        assert set(stats) == {str(a), str(b), str(f)} and stats[str(f)]["nl"] == 1
        seen = g.mount(2)  # another client reads both directories
        assert await names(seen, a) == {} and await names(seen, b) == {b"g": f}
        # Renamed back over a file of the target group: the replaced file loses its name.
        h = await create(g, qu, a, b"h")
        stats = await qu.update(
            sorted([a, b, f, h]), "fs.rename", rename_arg(b, b"g", a, b"h", f, h)
        )
        assert stats[str(h)]["nl"] == 0
        assert await names(seen, a) == {b"h": f} and await names(seen, b) == {}
        assert qu.crossing is not None and qu.crossing.committed == 4  # 2 mkdirs, 2 renames

    virtual(main)


def test_a_directory_renamed_across_groups_keeps_dotdot_and_counts() -> None:
    g = Groups()

    async def main() -> None:
        qu = g.mount(0)
        a, b, _ = await tree(g, qu)
        d = await mkdir(g, qu, a, b"d", g.layout.group_of_object(b))
        inner = await mkdir(g, qu, d, b"x", g.layout.group_of_object(a))
        assert (await qu.query(a, "fs.stat"))["nl"] == 3
        objs = sorted([a, b, d])  # chain: b, whose parent is the root
        await qu.update(objs, "fs.rename", rename_arg(a, b"d", b, b"d", d))
        seen = g.mount(2)
        assert (await seen.query(d, "fs.stat"))["p"] == b
        assert (await seen.query(a, "fs.stat"))["nl"] == 2
        assert (await seen.query(b, "fs.stat"))["nl"] == 3
        assert await names(seen, d) == {b"x": inner}
        # The set-group-ID directory a made d in passed its group on (checked by a's half).
        assert (await seen.query(d, "fs.stat"))["gid"] == 7
        # A directory never moves under itself, whatever chain a client declares.
        with pytest.raises(MethodRefused):
            await qu.update(sorted([ROOT, b, d, inner]), "fs.rename",
                            rename_arg(ROOT, b"b", inner, b"b", b))  # fmt: skip
        assert (await seen.query(b, "fs.stat"))["p"] == ROOT

    virtual(main)


def test_an_exchange_across_groups_stays_exdev() -> None:
    g = Groups()

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        h = await create(g, qu, b, b"h")
        arg = {**rename_arg(a, b"f", b, b"h", f, h), "flags": RENAME_EXCHANGE}
        with pytest.raises(CrossGroup):
            await qu.update(sorted([a, b, f, h]), "fs.rename", arg)

    virtual(main)


@pytest.mark.parametrize("lie", ["wrong_answer", "forge_higher_signed", "reject_everything"])
def test_a_byzantine_node_in_every_group(lie: str) -> None:
    """One node of each group runs a Byzantine behaviour: the rename, a link and a mkdir
    across groups commit, and every group holds exactly the result."""
    g = Groups(seed=1)
    for c in g.clusters:
        c.byzantine[1] = BEHAVIOURS[lie]

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        await qu.update(sorted([a, b, f]), "fs.rename", rename_arg(a, b"f", b, b"g", f))
        link = {"p": a, "o": f, "name": b"again", "now": _clock()}
        answer = await qu.update(sorted([a, f]), "fs.link", link)
        assert answer[0]["nl"] == 2
        seen = g.mount(2)
        assert await names(seen, a) == {b"again": f} and await names(seen, b) == {b"g": f}

    virtual(main)


def test_concurrent_conflicting_renames_one_wins() -> None:
    """Two clients move one file to two directories at once: one rename commits, the
    other is refused (its source entry is gone), and the file has exactly one name."""
    g = Groups(seed=2)

    async def main() -> None:
        qu0, qu1 = g.mount(0), g.mount(1)
        a, b, f = await tree(g, qu0)
        c = await mkdir(g, qu0, ROOT, b"c", g.layout.group_of_object(b))
        outcomes: list[str] = []

        async def move(qu: GroupedQU, dp: int, dn: bytes) -> None:
            try:
                await qu.update(sorted({a, dp, f}), "fs.rename", rename_arg(a, b"f", dp, dn, f))
                outcomes.append("moved")
            except MethodRefused as e:
                outcomes.append(e.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move, qu0, b, b"x")
            nursery.start_soon(move, qu1, c, b"y")
        assert len(outcomes) == 2 and outcomes.count("moved") == 1, outcomes
        seen = g.mount(2)
        where = [await names(seen, d) for d in (a, b, c)]
        assert sum(len(w) for w in where) == 1 and where[0] == {}

    virtual(main)


def test_a_half_alone_is_no_operation() -> None:
    """A client cannot call a half itself, nor commit a transaction of one half: the
    source directory's entry cannot be removed without the target's added."""
    g = Groups(seed=3)

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        arg = {**rename_arg(a, b"f", b, b"g", f), "oc": 8, "tc": 0, "ch": []}
        with pytest.raises(MethodRefused, match="no-such-method"):
            await qu.clients[g.layout.group_of_object(a)].update([a, f], "fsx.rename", arg)
        assert qu.crossing is not None
        group = g.layout.group_of_object(a)
        alone = [Part(group, tuple(sorted([a, f])), "fsx.rename", arg)]
        out = await qu.crossing.driver.run(alone, group, qu.crossing.record(group))
        assert not out.committed and out.why == "invalid"
        assert await names(g.mount(2), a) == {b"f": f}

    virtual(main)


def test_an_abandoned_transaction_is_resolved_by_the_next_call() -> None:
    """A client crashes after its prepares: its intents refuse every other call on the
    directories; another mount's plain read resolves it once its deadline passed (abort,
    then finish) and is answered, and nothing moved."""
    g = Groups(seed=4)

    async def crash(step: str) -> None:
        if step == "prepared":
            raise Abandon

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        assert qu.crossing is not None
        qu.crossing.driver.at_step = crash
        with pytest.raises(Abandon):
            await qu.update(sorted([a, b, f]), "fs.rename", rename_arg(a, b"f", b, b"g", f))
        other = g.mount(1)
        before = trio.current_time()
        assert await names(other, a) == {b"f": f}
        assert trio.current_time() - before >= 9  # waited for the deadline (10 s)
        assert other.crossing is not None and other.crossing.met > 0
        assert await names(other, b) == {}

    virtual(main)


def test_removals_across_groups() -> None:
    """A directory on another group than its parent's is removed (``fs.rmdir``, refused
    while not empty), a file moved to a directory of another group is unlinked, and a
    batch of unlinks (``fs.unlinkmany``, directory write-back) spanning groups is one
    transaction."""
    g = Groups(seed=5)

    async def main() -> None:
        qu = g.mount(0)
        a, b, f = await tree(g, qu)
        old = g.mount(1, crossing=False)
        rm = {"p": ROOT, "o": a, "name": b"a", "now": _clock()}
        with pytest.raises(CrossGroup):
            await old.update(sorted([ROOT, a]), "fs.rmdir", rm)
        with pytest.raises(MethodRefused, match="not-empty"):
            await qu.update(sorted([ROOT, a]), "fs.rmdir", rm)
        await qu.update(sorted([a, b, f]), "fs.rename", rename_arg(a, b"f", b, b"g", f))
        h = await create(g, qu, a, b"h")
        await qu.update(sorted([a, b, h]), "fs.rename", rename_arg(a, b"h", b, b"h", h))
        k = await create(g, qu, b, b"k")
        files = [{"o": o, "name": n, "now": _clock()} for o, n in ((f, b"g"), (h, b"h"))]
        files.append({"o": k, "name": b"k", "now": _clock()})
        stats, pst = await qu.update(
            sorted([b, f, h, k]), "fs.unlinkmany", {"p": b, "now": _clock(), "files": files}
        )
        assert [s["nl"] for s in stats] == [0, 0, 0] and pst["k"] == "d"
        answer = await qu.update(sorted([ROOT, a]), "fs.rmdir", {**rm, "now": _clock()})
        assert answer[0]["nl"] == 0  # the tombstone's stat
        seen = g.mount(2)
        assert set(await names(seen, ROOT)) == {b"b"} and await names(seen, b) == {}
        assert (await seen.query(ROOT, "fs.stat"))["nl"] == 3

    virtual(main)


@pytest.mark.parametrize("ahead", ["mount", "nodes", "coordinator"])
def test_a_layout_taken_at_different_times_is_waited_out(ahead: str) -> None:
    """A new layout (a node replaced elsewhere) reaches the mount and the groups' nodes at
    different times: a cross-group mkdir meanwhile is refused ``txn-layout`` (by the
    coordinator's begin, or by the other participant's prepare, so aborted) and is made
    again until all hold it, 3 s later; it is not answered EIO, and it is made once."""
    g = Groups(seed=6)
    newer = dataclasses.replace(g.layout, version=g.layout.version + 1)

    async def main() -> None:
        qu = g.mount(0)
        a, _, f = await tree(g, qu)
        assert qu.crossing is not None
        groups = sorted({g.layout.group_of_object(a), g.layout.group_of_object(ROOT)})
        if ahead != "nodes":
            qu.switch(newer)
        if ahead != "mount":
            for gi, live in enumerate(g.lives):
                if ahead == "nodes" or gi == groups[0]:
                    live.switch(newer)

        async def catch_up() -> None:
            await trio.sleep(3)
            qu.switch(newer)
            for live in g.lives:
                live.switch(newer)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(catch_up)
            d = await mkdir(g, qu, a, b"d", g.layout.group_of_object(ROOT))
        assert trio.current_time() - start >= 3
        assert qu.crossing.layouts_waited > 0
        assert await names(g.mount(1), a) == {b"f": f, b"d": d}

    virtual(main)
