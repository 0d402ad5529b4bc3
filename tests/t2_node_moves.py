"""A partition move on the nodes (issue 66; docs/layout.md, "Moving partitions"), with
in-process nodes of a cluster of groups started as ``bftfs node`` starts them (real TCP,
LMDB, the layout held and taken by ``layout.install``).

Layout 2 has one group of six and six spares; layout 3 (``builder.grow``) adds group 1 of
the spares and moves half of each map to it; layout 4 (``builder.finish_move``) ends the
move.  The source group, given layout 3: a client's update and query of an object moving
out are refused ``moved``, its ``fs.state``, ``fs.export`` and ``fs.release`` served, an
object staying served; a client's PASIS write of a block moving out refused ``moved``, its
read served, a block staying written; ``qu.latest`` answered to a client; every node
pushes a recall of the live lease on the object moving out (not of the one staying), and
so does a node restarted on layout 3.  The target group, brand new (its nodes start on
layout 3): a moved (``mv``) version of a block moving in is taken, and given-back blocks
are held; once finished, a moved version of a block not moving is refused ``unproven``.
After layout 4 the source refuses the moved ids ``misplaced``."""

from __future__ import annotations

import stat as st
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from groups_nodes import Groups, open_groups

from bftfs import erasure
from bftfs.fsobjects.leases import SHARED
from bftfs.fsobjects.limits import ROOT
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.builder import build, finish_move, grow, nodes_of
from bftfs.layout.model import Layout
from bftfs.net.errors import RemoteError
from bftfs.outcome import GenerationMoved
from bftfs.qu.messages import KIND_LATEST, VERSION, parse_latest_reply
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import RWClient
from bftfs.rw.failures import WriteFailed
from bftfs.rw.messages import encode_block_id
from bftfs.rw.timestamp import make_timestamp

#: A moved version's Time: well in the past, as the mover's copies' are.
OLD_TIME = 1_600_000_000_000_000_000
DATA = b"a version the source group holds, written long ago" * 20


def layouts(g: Groups) -> tuple[Layout, Layout, Layout]:
    """Layouts 2 (one group, six spares), 3 (group 1 added, moving) and 4 (finished)."""
    v2 = build(nodes_of(g.cfg), 1, t=1, b=1, version=2)
    v3 = grow(v2, 1)
    return v2, v3, finish_move(v3)


def pick(count: int, want: Any, start: int = 1000) -> list[int]:
    """The first ``count`` ids from ``start`` on that ``want`` takes."""
    out: list[int] = []
    ident = start
    while len(out) < count:
        if want(ident):
            out.append(ident)
        ident += 1
    return out


async def mover_write(rw: RWClient, block: int, writer: int) -> Any:
    """The mover's copy of ``writer``'s old version of ``block`` (a moved version)."""
    enc = erasure.encode(DATA, rw.th.m, rw.th.n)
    ts = make_timestamp(OLD_TIME, writer, enc.verifier)
    await rw.do_write(block, ts, enc.fragments, enc.cross_checksum, moved=True)
    return ts


async def latest(ep: Any, node: int) -> set[int]:
    """The object ids node ``node`` lists to a client (``qu.latest``, first page)."""
    return {
        oid
        for oid, _ in parse_latest_reply(await ep.call(NodeId(node), KIND_LATEST, {"v": VERSION}))[
            0
        ]
    }


async def test_a_source_group_freezes_what_moves_out_and_serves_the_rest(tmp_path: Path) -> None:
    async with open_groups(tmp_path / "c") as g:
        v2, v3, v4 = layouts(g)
        g.hold(v2)
        members = v2.groups[0].members
        for nid in members:
            await g.start(nid)
        ep0, ep1 = g.endpoint(v2, 0, 0), g.endpoint(v2, 0, 1)
        qu0, qu1, rw0 = g.qu(v2, 0, 0, ep0), g.qu(v2, 0, 1, ep1), g.rw(v2, 0, 0, ep0)
        out = lambda o: v3.source_of_object(o) == 0  # noqa: E731
        stays = lambda o: v3.group_of_object(o) == 0 and v3.source_of_object(o) is None  # noqa: E731
        f_out, c_out = pick(2, lambda o: out(o) and o != ROOT)
        f_stay, c_stay = pick(2, lambda o: stays(o) and o != ROOT)
        b_out, b_out2 = pick(2, lambda b: v3.source_of_block(b) == 0, 0x5000)
        b_stay, b_stay2 = pick(
            2, lambda b: v3.group_of_block(b) == 0 and v3.source_of_block(b) is None, 0x5000
        )

        now = time.time_ns()
        await qu1.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": now})
        for oid, name in ((f_out, b"out"), (f_stay, b"stays")):
            arg = {"p": ROOT, "o": oid, "name": name, "now": now, "mode": st.S_IFREG | 0o644}
            await qu1.update(
                [ROOT, oid], "fs.create", {**arg, "uid": 1, "gid": 1, "d": oid, "alloc": 0}
            )
            await qu1.update(
                oid, "fs.lease", {"kind": SHARED, "lt": time.time_ns(), "term": 60 * 10**9}
            )
        for oid in (c_out, c_stay):
            await qu0.update(oid, "counter.increment", 5)
        await rw0.write_block(b_out, b"before the move")
        await rw0.write_block(b_stay, b"staying")
        with pytest.raises(RemoteError, match="forbidden"):  # listings are between nodes
            await latest(ep1, 0)

        recalls: dict[int, list[Any]] = {}
        all_recalled = trio.Event()

        def on_push(node: Any, body: Any) -> None:
            if isinstance(body, dict) and "recall" in body:
                recalls.setdefault(int(node), []).append(body)
            if len(recalls) == len(members):
                all_recalled.set()

        ep1.on_push = on_push
        await g.install(ep0, v3, codec.sign(v3, g.admin), 0)
        with trio.fail_after(5):
            await all_recalled.wait()
        for nid in members:
            await g.nodes[nid].finished["layout.recalls"].wait()
        # Only the lease on the object moving out, once by each node.
        assert recalls == {i: [{"recall": [f_out]}] for i in range(len(members))}
        assert {g.nodes[nid].stats["layout.recalls.pushed"] for nid in members} == {1}

        # Q/U: a client's own operations on what moves out are refused `moved`...
        with pytest.raises(MethodRefused) as refused:
            await qu0.update(c_out, "counter.increment", 1)
        assert refused.value.code == "moved"
        with pytest.raises(MethodRefused) as refused:
            await qu0.query(c_out, "counter.fetch")
        assert refused.value.code == "moved"
        with pytest.raises(MethodRefused, match="moved"):
            await qu1.update(f_out, "fs.setattr", {"mode": 0o600, "now": time.time_ns()})
        # ...but the move's reads, and what stays.
        assert await qu0.query(f_out, "fs.state") is not None
        assert await qu0.query(f_out, "fs.export") is not None
        assert await qu0.update(c_stay, "counter.increment", 1) == 6
        assert await qu0.query(c_stay, "counter.fetch") == 6
        assert {f_out, f_stay, c_out, c_stay} <= await latest(ep1, 2)  # the mover walks it

        # PASIS: a client's own write of a block moving out refused `moved`, reads served.
        with pytest.raises(GenerationMoved):
            await rw0.write_block(b_out, b"after the freeze")
        assert sum(g.nodes[nid].stats["rw.refused.moved"] for nid in members) >= 2
        assert await rw0.read_block(b_out) == b"before the move"
        await rw0.write_block(b_stay, b"still here")
        assert await rw0.read_block(b_stay) == b"still here"
        # A moved version is taken by a target only: here it is the repair it looks like.
        for block in (b_out2, b_stay2):
            with pytest.raises(WriteFailed):
                await mover_write(rw0, block, int(g.cfg.clients[1].id))
        assert sum(g.nodes[nid].stats["rw.refused.unproven"] for nid in members) >= 4

        # A node restarted on layout 3 (its own copy) is frozen for the same objects and
        # recalls the lease again (its holder is not connected to it yet).
        again = await g.restart(members[3])
        assert again.moves.moving_out and not again.moves.moving_in
        assert again.progress["layout"] == {
            "version": 3, "group": 0, "moving": {"out": True, "in": False}
        }  # fmt: skip
        await again.finished["layout.recalls"].wait()
        counted = again.stats["layout.recalls.pushed"] + again.stats["layout.recalls.unconnected"]
        assert counted == 1
        assert await qu1.update(f_out, "fs.release", {"lt": time.time_ns()}) is None

        # Layout 4: the move is finished; the source holds nothing of it for anyone.
        await g.install(ep0, v4, codec.sign(v4, g.admin), 0)
        refusals = [
            ("qu.history", {"v": 1, "o": [f_out]}),
            ("rw.read_latest", {"v": 1, "b": encode_block_id(b_out), "d": True}),
        ]
        for kind, body in refusals:
            with pytest.raises(RemoteError) as misplaced:
                await ep0.call(NodeId(0), kind, body)
            assert misplaced.value.code == "misplaced"
        assert await qu0.update(c_stay, "counter.increment", 1) == 7
        with pytest.raises(RemoteError, match="forbidden"):
            await latest(ep1, 0)


async def test_a_brand_new_target_group_takes_moved_versions_of_what_moves_in(
    tmp_path: Path,
) -> None:
    async with open_groups(tmp_path / "c") as g:
        v2, v3, v4 = layouts(g)
        g.hold(v2)
        g.hold(v3)  # group 1 exists from layout 3 on: its nodes start on it
        members = v3.groups[1].members
        nodes = [await g.start(nid) for nid in members]
        ep = g.endpoint(v3, 1, 0)
        rw = g.rw(v3, 1, 0, ep)
        b_in, b_own, b_later = pick(3, lambda b: v3.source_of_block(b) == 0, 0x5000)
        assert all(v3.group_of_block(b) == 1 for b in (b_in, b_own, b_later))
        for node in nodes:
            assert node.moves.moving_in and not node.moves.moving_out
            assert node.progress["layout"]["moving"] == {"out": False, "in": True}
            assert node.verifier is not None and node.verifier.collection.forgetter.held()

        writer = int(g.cfg.clients[1].id)  # the version names client 1; client 0 moves it
        ts = await mover_write(rw, b_in, writer)
        got = await g.rw(v3, 1, 1).read_version(b_in)
        assert (got.ts, got.data) == (ts, DATA)
        assert sum(node.stats["rw.write.moved"] for node in nodes) >= 5  # n - t
        await rw.write_block(b_own, b"a client's own, on its new group")
        assert await rw.read_block(b_own) == b"a client's own, on its new group"

        await g.install(ep, v4, codec.sign(v4, g.admin), 1)
        for node in nodes:
            assert not node.moves.moving_in and "moving" not in node.progress["layout"]
            assert node.verifier is not None and not node.verifier.collection.forgetter.held()
        with pytest.raises(WriteFailed):  # nothing moves in: a repair nobody can prove
            await mover_write(rw, b_later, writer)
        assert sum(node.stats["rw.refused.unproven"] for node in nodes) >= 2  # t + 1
        assert (await rw.read_version(b_later)).absent
