"""The mount's side of a partition move, without nodes (issue 66, docs/layout.md, "Moving
partitions"): a call to a group a newer layout added waits for its client; a call
refused ``moved`` waits for a newer layout; the freeze gate counts as the generation's
(more than ``n - q + b`` nodes holding the moving layout); a source group's recalls are
believed for the objects moving away from it; the routers name each moving object's
(source, target)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bftfs.fs.clients import grouproutes
from bftfs.fs.clients.grouproutes import GroupRoutes
from bftfs.fs.generations.groupfollow import group_pushes
from bftfs.fs.generations.partitions import FrozenGate, PartitionRouters
from bftfs.layout.builder import build, grow
from bftfs.layout.model import LayoutNode


def _nodes(count: int) -> list[LayoutNode]:
    return [
        LayoutNode(i, "127.0.0.1", 7000 + i, bytes([i + 1]) * 32, f"d{i % 6}") for i in range(count)
    ]


V1 = build(_nodes(18), 2, t=1, b=1, partitions=64)
V2 = grow(V1, 1)


def test_a_call_to_a_group_not_open_yet_waits_for_its_client() -> None:
    async def body() -> None:
        routes: GroupRoutes[str] = GroupRoutes(["g0", "g1"])
        got: list[str] = []

        async def call() -> None:
            got.append(await routes.get(2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            with pytest.raises(LookupError):
                routes.now(2)
            routes.add("g2")
            routes.targets[2] = "moving g2"
        assert got == ["moving g2"] and routes.now(0) == "g0"

    trio.run(body)


def test_a_refused_call_waits_for_a_newer_layout_and_gives_up_after_its_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        routes: GroupRoutes[str] = GroupRoutes(["g0"])
        version = [1]
        result: list[bool] = []

        async def wait() -> None:
            result.append(await routes.newer(lambda: version[0], 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            routes.changed()  # a change that is not newer: still waiting
            await trio.testing.wait_all_tasks_blocked()
            assert result == []
            version[0] = 2
            routes.changed()
        assert result == [True]
        monkeypatch.setattr(grouproutes, "NEWER_LAYOUT_WAIT", 3.0)
        start = trio.current_time()
        assert not await routes.newer(lambda: version[0], 2)
        assert trio.current_time() - start == pytest.approx(3.0)

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_gate_opens_once_enough_of_the_source_hold_the_moving_layout() -> None:
    async def body() -> None:
        held = {i: 1 for i in range(6)}  # group 0's six nodes, all on layout 1
        asked: list[int] = []

        async def ask(group: int, index: int) -> int | None:
            assert group == 0
            asked.append(index)
            return held[index]

        gate = FrozenGate(lambda: V2, ask, qc=4)  # n = 6, t = b = 1: the largest qc
        opened = trio.Event()

        async def wait() -> None:
            await gate.wait(0)
            opened.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            # n = 6, q = 5, b = 1: n - q + 1 + b = 3 nodes must hold layout 2
            for i in (0, 1):
                held[i] = 2
            await trio.sleep(5)
            assert not opened.is_set()
            held[4] = 3  # a later layout counts too
            await trio.sleep(5)
            assert opened.is_set()
        # A cluster writing PASIS blocks to fewer nodes (a smaller qc) needs more frozen.
        assert gate.needed(6, 1, 1) == 3
        assert FrozenGate(lambda: V2, ask, qc=2).needed(6, 1, 1) == 5
        before = len(asked)
        await gate.wait(0)  # once open, it stays open for this layout
        assert len(asked) == before

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_routers_name_each_moving_objects_pair_and_sources_recall_what_leaves() -> None:
    routers = PartitionRouters(lambda: V2, lambda g: None, FrozenGate(lambda: V2, None, qc=4))  # type: ignore[arg-type]
    moving = [o for o in range(400) if V2.source_of_object(o) is not None]
    staying = [o for o in range(400) if V2.source_of_object(o) is None]
    assert moving and staying
    for o in moving:
        assert routers.moving(o) == (V1.group_of_object(o), 2)
    assert all(routers.moving(o) is None for o in staying)
    pushed: list[tuple[int, object]] = []
    source = V1.group_of_object(moving[0])
    on_push = group_pushes(lambda node, body: pushed.append((node, body)), lambda: V2, source)
    elsewhere = next(o for o in staying if V2.group_of_object(o) != source)
    on_push(0, {"recall": [moving[0], elsewhere]})
    # A source's node is believed about the object moving away, not about another group's.
    assert pushed == [(V2.groups[source].members[0], {"recall": [moving[0]]})]
