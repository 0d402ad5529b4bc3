"""Cross-group renames in flight while a node of one of their groups is replaced (issue 66,
docs/layout.md "Transactions across the change"), with real node processes (two groups
of six, ``t = b = 1``, as the bar's groups) and an in-process mount.

It runs with the bar's ``b = 1`` and with ``b = 0`` (groups of four), which failed 3 runs
in 8: after a node's new machine joined, a mount excluded correct nodes of its group as
malevolent ("history culled by more than b": one cull report proves it when ``b = 0``)
and the group became unavailable to it (``QUUnavailable``, 1 of q = 3 answering).  The new
machine culled the client's cached histories whose authenticator entry for its index was
made under the old machine's key; such reports no longer count as proof
(``qu/ohscache.py``, ``tests/t4_groups_replace_culls.py``).

Each rename moves a file between directories on the two groups: one transaction of the
cross-group commit (begin on the coordinator, a prepare per group, decide, a finish per
group).  The mount's driver is held after one of its steps (``Driver.at_step``: after
``begun``, ``prepared``, ``decided``, one rename each) while ``bftfs node replace`` gives
a node a new machine and pushes the next layout, until the mount has taken it; then the
transaction goes on under the new layout, its descriptor naming the old one.  Each rename
completes and is atomic: from a fresh mount the file is under its new name only, linked
once, with its contents; no intent is left on the directories.  The newcomer is started
and caught up before the next rename, whose replacement is in the other group.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from fs_helpers import names, read_back

from bftfs import local
from bftfs.cli.main import main
from bftfs.fs.clients.groups import GroupedQU
from bftfs.fs.errors import NotFound
from bftfs.fs.session import Session, open_session
from bftfs.fsobjects.limits import ROOT
from bftfs.layout.groups import load_layout
from bftfs.layout.model import Layout
from bftfs.layout.spread import dir_group
from bftfs.testing.processes import ProcessCluster, wait_caught_up

pytestmark = pytest.mark.slow  # 12 node processes, three replacements and catch-ups

OPTIONS: dict[str, Any] = {"t": 1, "b": 1, "groups": 2, "clients": 2}
#: The step each rename is held after, and the group a node is replaced in meanwhile.
HELD = (("begun", 0), ("prepared", 1), ("decided", 0))


def _name_on(layout: Layout, group: int) -> bytes:
    """A name whose directory, made at the root, is placed on ``group``."""
    return next(b"d%d" % i for i in range(1000) if dir_group(layout, ROOT, b"d%d" % i) == group)


class Hold:
    """A driver's ``at_step`` hook: after step ``step`` of the first attempt that reaches
    it, replace node ``leaving`` by a new machine on ``port`` (``bftfs node replace``, as
    the administrator runs it) and wait until the mount's router holds the new layout;
    then the transaction goes on."""

    def __init__(
        self, step: str, home: Path, leaving: int, port: int, qu: GroupedQU,
        switched: list[trio.Event],
    ) -> None:  # fmt: skip
        self.step, self.home, self.leaving, self.port = step, home, leaving, port
        self.qu, self.switched = qu, switched
        self.done = False

    async def __call__(self, name: str) -> None:
        if name != self.step or self.done:
            return
        self.done = True
        before = self.qu.layout.version
        self.switched[0] = trio.Event()
        argv = ["node", "replace", str(self.leaving), "--address", f"127.0.0.1:{self.port}",
                "--config", str(self.home / "cluster.toml")]  # fmt: skip
        assert await trio.to_thread.run_sync(main, argv) == 0
        with trio.fail_after(30):  # the nodes tell the mount (a push)
            await self.switched[0].wait()
        assert self.qu.layout.version == before + 1


async def _make_file(s: Session, parent: int, name: bytes, data: bytes) -> int:
    fh, a = await s.fs.create(parent, name, 0o644, 0, 0, os.O_RDWR)
    await s.fs.write(fh, 0, data)
    await s.fs.release(fh)
    return a.ino


@pytest.mark.parametrize("b", [1, 0])
def test_cross_group_renames_held_across_node_replacements(tmp_path: Path, b: int) -> None:
    home = tmp_path / "c"
    rng = random.Random(67)
    with ProcessCluster(home, **{**OPTIONS, "b": b}) as pc:
        v1 = load_layout(pc.config)
        assert v1 is not None
        (tmp_path / "n").mkdir()
        ports = local.cluster_ports(tmp_path / "n", len(HELD))

        async def body() -> None:
            async with open_session(pc.config, "client0") as s:
                qu = s.qu
                assert isinstance(qu, GroupedQU) and qu.crossing is not None
                crossing = qu.crossing
                # The replacement (a process, a push) must fit in the transaction's time,
                # or another client may abort it at its deadline: 60 s, the most allowed.
                crossing.driver.span = 60 * 10**9
                switched = [trio.Event()]  # set when the mount's router takes a layout
                qu.switched.append(lambda _layout: switched[0].set())
                src = (await s.fs.mkdir(ROOT, _name_on(v1, 0), 0o755, 0, 0)).ino
                dst = (await s.fs.mkdir(ROOT, _name_on(v1, 1), 0o755, 0, 0)).ino
                assert [v1.group_of_object(src), v1.group_of_object(dst)] == [0, 1]
                files = {}
                for k in range(len(HELD)):
                    data = rng.randbytes(rng.choice([0, 300, 9000]))
                    files[k] = (await _make_file(s, src, b"f%d" % k, data), data)
                committed = crossing.committed
                for k, (step, group) in enumerate(HELD):
                    layout = qu.layout
                    leaving = layout.groups[group].members[1 + k % 3]
                    hold = Hold(step, home, leaving, ports[k], qu, switched)
                    crossing.driver.at_step = hold
                    await s.fs.rename(src, b"f%d" % k, dst, b"g%d" % k)
                    crossing.driver.at_step = None
                    assert hold.done, step
                    assert qu.layout.version == layout.version + 1
                    assert crossing.committed == committed + k + 1
                    pc.config = local.load_cluster(home)  # stop the newcomers at the end
                    await trio.to_thread.run_sync(pc.start, leaving)  # the new machine
                    await trio.to_thread.run_sync(wait_caught_up, pc.config, leaving, 120)
                    async with open_session(pc.config, "client1") as fresh:
                        await _moved(fresh, src, dst, k, files[k])
            async with open_session(pc.config, "client1") as fresh:
                for k in range(len(HELD)):
                    await _moved(fresh, src, dst, k, files[k])
                assert await names(fresh.fs, src) == []
                assert await names(fresh.fs, dst) == [b"g%d" % k for k in range(len(HELD))]

        trio.run(body)
        final = load_layout(pc.config)
        assert final is not None and final.version == 1 + len(HELD)


async def _moved(s: Session, src: int, dst: int, k: int, file: tuple[int, bytes]) -> None:
    """File ``k`` is ``dst/g<k>`` only, linked once, with its contents."""
    ino, data = file
    with pytest.raises(NotFound):
        await s.fs.lookup(src, b"f%d" % k)
    attr = await s.fs.lookup(dst, b"g%d" % k)
    assert attr.ino == ino and attr.nlink == 1
    assert await read_back(s.fs, ino) == data
