"""A group added to a running cluster, its partitions moved while a mount works (issue 66,
docs/layout.md, "Moving partitions"), with real node processes (two groups of four,
``t = 1, b = 0``, then a third), the real commands and an in-process mount:

- ``bftfs group add`` makes the third group's nodes and issues a layout moving about a
  third of each map's partitions to it, which the layout service (a Q/U object of one
  group) then holds; the running mount takes it from the nodes'
  pushes, opens the new group, and reads every file written before (moving what it
  touches), writes new files and directories, and renames across groups meanwhile;
- ``bftfs group move`` walks the old groups and moves the rest (a tree another mount
  wrote before and nobody touched since), ``bftfs group finish`` ends the move
  (refused before the mover completed);
- after the finish the old groups refuse the moved partitions (``misplaced``), the new
  group holds objects and blocks, and a fresh mount reads everything back.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from fs_helpers import read_back

from bftfs import local
from bftfs.cli.main import main
from bftfs.connect import open_client
from bftfs.fs.clients.groups import GroupedQU
from bftfs.fs.generations.partmover import move_states
from bftfs.fs.session import Session, open_session
from bftfs.fsobjects.limits import ROOT
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.groups import group_config, load_layout
from bftfs.layout.model import Layout
from bftfs.layout.service import GET, LAYOUT_OID
from bftfs.net.errors import RemoteError
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.messages import encode_block_id
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.slow  # twelve node processes, a mount, three commands: ~40 s

OPTIONS = {"t": 1, "b": 0, "groups": 2, "clients": 2}


def _cli(home: Path, *argv: str) -> int:
    return main([*argv, "--config", str(home / "cluster.toml")])


async def _write_tree(
    s: Session, top: bytes, count: int, rng: random.Random
) -> dict[tuple[bytes, bytes], bytes]:
    """``count`` files of seeded sizes (inline to several blocks) in a new directory
    ``top`` and its subdirectory ``sub``; ``{(dir, name): data}`` (dir ``top`` or
    ``top/sub``)."""
    fs = s.fs
    d = await fs.mkdir(ROOT, top, 0o755, 0, 0)
    sub = await fs.mkdir(d.ino, b"sub", 0o755, 0, 0)
    out = {}
    for i in range(count):
        parent, where = (d.ino, top) if i % 2 else (sub.ino, top + b"/sub")
        data = rng.randbytes(rng.choice([0, 300, 9000, 70_000, 150_000]))
        fh, _a = await fs.create(parent, b"f%d" % i, 0o644, 0, 0, 2)
        for off in range(0, len(data), 32768):
            await fs.write(fh, off, data[off : off + 32768])
        await fs.release(fh)
        out[(where, b"f%d" % i)] = data
    return out


async def _same(s: Session, files: dict[tuple[bytes, bytes], bytes]) -> None:
    for (where, name), data in files.items():
        ino = ROOT
        for part in where.split(b"/"):
            ino = (await s.fs.lookup(ino, part)).ino
        attr = await s.fs.lookup(ino, name)
        assert await read_back(s.fs, attr.ino) == data, (where, name)


def _version(s: Session) -> int:
    assert isinstance(s.qu, GroupedQU)
    return s.qu.layout.version


async def _until_version(s: Session, version: int) -> None:
    """Wait until the session's router holds ``version`` (the nodes push it)."""
    assert isinstance(s.qu, GroupedQU)
    taken = trio.Event()
    s.qu.switched.append(lambda layout: taken.set() if layout.version >= version else None)
    with trio.fail_after(30):
        if _version(s) < version:
            await taken.wait()


async def _misplaced_block(cfg: local.ClusterConfig, layout: Layout, moved: int) -> str:
    """What node 0 of block ``moved``'s old group answers to a read of it after the
    finish."""
    part = group_config(cfg, layout, 0)
    async with open_client(part, "client1") as ep:
        with pytest.raises(RemoteError) as e:
            await ep.call(
                NodeId(0), "rw.read_latest", {"v": 1, "b": encode_block_id(moved), "d": True}
            )
    return e.value.code


async def _service(cfg: local.ClusterConfig, layout: Layout) -> int:
    """The layout version the layout service holds (a Q/U query of its group)."""
    part = group_config(cfg, layout, layout.objects[0])
    async with open_client(part, "client1") as ep:
        qu = QUClient(ep, QUThresholds.from_config(part), client_id=ep.pid)
        blob = await qu.query(LAYOUT_OID, GET)
    assert cfg.admin_key is not None
    return codec.decode(blob, cfg.admin_key).version if blob else 0


def _start_new(pc: ProcessCluster, layout: Layout) -> None:
    """Start the nodes of groups the cluster's processes do not run yet (``bftfs group
    add`` starts them itself on a local cluster; this is for when it did not)."""
    for g in layout.groups:
        for nid in g.members:
            if local.running_pid(pc.config.node(nid)) is None:
                pc.start(nid)
    local.wait_ready(pc.config)


def test_a_group_added_and_its_partitions_moved_under_a_running_mount(tmp_path: Path) -> None:
    home = tmp_path / "c"
    rng = random.Random(66)
    with ProcessCluster(home, **OPTIONS) as pc:

        async def body() -> None:
            async with open_session(pc.config, "client1") as other:  # read back at the end
                untouched = await _write_tree(other, b"z", 16, rng)
            async with open_session(pc.config, "client0") as s:
                files = {}
                for top in (b"a", b"b", b"c"):
                    files |= await _write_tree(s, top, 10, rng)
                assert await trio.to_thread.run_sync(_cli, home, "group", "finish") == 2
                assert await trio.to_thread.run_sync(_cli, home, "group", "add") == 0
                pc.config = local.load_cluster(home)  # the new nodes too, stopped at the end
                v2 = load_layout(pc.config)
                assert v2 is not None and v2.moving and len(v2.groups) == 3
                await trio.to_thread.run_sync(_start_new, pc, v2)
                await _until_version(s, 2)
                assert await _service(pc.config, v2) == 2  # published by the command
                await _same(s, files)  # what the mount touches moves
                files |= await _write_tree(s, b"d", 10, rng)
                await s.fs.rename(ROOT, b"a", (await s.fs.lookup(ROOT, b"d")).ino, b"a2")
                files = {
                    ((b"d/a2" + w[1:]) if w[:1] == b"a" else w, n): v for (w, n), v in files.items()
                }
                # finish is refused while the mover has not walked every group
                assert await trio.to_thread.run_sync(_cli, home, "group", "finish") == 2
                assert await trio.to_thread.run_sync(_cli, home, "group", "move") == 0
                states = move_states(home, v2)
                assert set(states) == {0, 1}
                moved = sum(st.objects.get("moved", 0) for st in states.values() if st)
                copied = sum(st.blocks.get("copied", 0) for st in states.values() if st)
                assert moved > 0 and copied > 0, states  # what the mount never touched
                assert await trio.to_thread.run_sync(_cli, home, "group", "finish") == 0
                v3 = load_layout(pc.config)
                assert v3 is not None and v3.version == 3 and not v3.moving
                await _until_version(s, 3)
                assert await _service(pc.config, v3) == 3
                await _same(s, files)
                files |= await _write_tree(s, b"e", 6, rng)
            assert v2.moving_in(2)
            moved = next(b for b in range(1 << 20, (1 << 20) + 4096) if v2.source_of_block(b) == 0)
            assert await _misplaced_block(pc.config, v3, moved) == "misplaced"
            async with open_session(pc.config, "client1") as fresh:
                await _same(fresh, files | untouched)

        trio.run(body)
