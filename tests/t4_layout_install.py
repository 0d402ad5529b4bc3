"""A newer layout installed on running node processes and a running mount (issue 66,
docs/layout.md "Installing a layout on running processes"), with real node processes
(two groups of four, ``t = 1, b = 0``) and an in-process mount:

- ``bftfs node replace`` names a new machine in one group's place and pushes the new
  layout: every running node takes it (durably, ``node<I>/layout.signed``), the mount
  learns it from the nodes' pushes and reaches the newcomer, which catches up;
- a node that was down at the push learns it at its first handshake with a peer;
- nodes refuse an older layout, one not signed by the administrator, another layout with
  the held version and one moving partitions from maps they never held;
- with another node of the regrouped group stopped, the group serves only with the
  newcomer: the mount writes and reads there, and a fresh mount reads everything back.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from fs_helpers import read_back, write_file

from bftfs import config as cfgmod
from bftfs import local
from bftfs.cli.main import main
from bftfs.config import ClusterConfig
from bftfs.connect import open_client
from bftfs.crypto import AdminKey, Identity, KeyRing
from bftfs.fs.clients.groups import GroupedQU
from bftfs.fs.session import Session, open_session
from bftfs.fsobjects.limits import ROOT
from bftfs.ids import NodeId
from bftfs.layout import codec
from bftfs.layout.groups import group_config, load_layout
from bftfs.layout.model import Layout
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError
from bftfs.net.session import SessionRefused
from bftfs.testing.processes import ProcessCluster, wait_caught_up

pytestmark = pytest.mark.slow  # node processes started three times: about 30 s

OPTIONS = {"t": 1, "b": 0, "groups": 2, "clients": 2}


async def _write(s: Session, names: list[bytes], rng: random.Random) -> dict[bytes, bytes]:
    out = {}
    for name in names:
        data = rng.randbytes(rng.choice([100, 5000, 70_000]))
        await write_file(s.fs, name, data)
        out[name] = data
    return out


async def _same(s: Session, files: dict[bytes, bytes]) -> None:
    for name, data in files.items():
        attr = await s.fs.lookup(ROOT, name)
        assert await read_back(s.fs, attr.ino) == data, name


def _version(s: Session) -> int:
    """The layout version the session's router holds."""
    assert isinstance(s.qu, GroupedQU)
    return s.qu.layout.version


def _start_behind(pc: ProcessCluster, old: ClusterConfig, node: int, where: Path) -> None:
    """Start ``node`` from a cluster directory of its own still holding layout 1 and the
    configuration of its day, ``old`` (its machine missed the push): it learns layout 2
    from its peers."""
    where.mkdir()
    shutil.copy(pc.home / "layout.v1", where / "layout.signed")
    shutil.copytree(pc.home / "clients", where / "clients")  # (to ask it its status)
    cfg = replace(old, home=where.resolve())
    cfgmod.save(cfg, where / "cluster.toml")
    cfg = local.load_cluster(where)
    local.start_node(cfg, node)
    local.wait_ready(cfg, nodes=[node])


async def _held(cfg: ClusterConfig, layout: Layout, skip: set[int]) -> dict[int, int]:
    """The layout version each node of ``layout`` (but ``skip``) answers ``layout.get``
    with."""
    out: dict[int, int] = {}
    admin = cfg.admin_key
    assert admin is not None
    for g in layout.groups:
        async with open_client(group_config(cfg, layout, g.id), "client1") as ep:
            for i, nid in enumerate(g.members):
                if nid not in skip:
                    blob = await ep.call(NodeId(i), "layout.get", None)
                    out[nid] = codec.decode(blob, admin).version
    return out


async def _old_machine_refused(cfg: ClusterConfig, layout: Layout, old_key: Path) -> str:
    """What node 0 of group 1 tells the replaced machine (index 2, its old key) when it
    calls: its key was replaced."""
    me = Identity.load(NodeId(2), old_key)
    peer = layout.group_nodes(1)[0]
    ring = KeyRing(me, {NodeId(0): peer.public_key})
    async with open_endpoint(ring, {NodeId(0): (peer.host, peer.port)}, timeout=5.0) as ep:
        with pytest.raises(SessionRefused) as e:
            await ep.call(NodeId(0), "ping", b"")
    return str(e.value)


async def _refusals(cfg: ClusterConfig, layout: Layout, key: AdminKey) -> list[str]:
    """What node 0 of group 0 answers to four bad layouts."""
    offers = [
        codec.sign(replace(layout, version=1), key),  # older
        codec.sign(replace(layout, version=9), AdminKey(bytes(32))),  # not the admin's
        codec.sign(replace(layout, objects=layout.objects[::-1]), key),  # same version
        codec.sign(  # a move from maps it never held
            replace(
                layout, version=9, from_objects=layout.objects[::-1], from_blocks=layout.blocks
            ),
            key,
        ),
    ]
    codes = []
    async with open_client(group_config(cfg, layout, 0), "client1") as ep:
        for blob in offers:
            with pytest.raises(RemoteError) as e:
                await ep.call(NodeId(0), "layout.install", blob)
            codes.append(e.value.code)
    return codes


def test_a_node_replaced_in_one_group_while_nodes_and_a_mount_run(tmp_path: Path) -> None:
    home = tmp_path / "c"
    rng = random.Random(66)
    with ProcessCluster(home, **OPTIONS) as pc:
        cfg = pc.config
        v1 = load_layout(cfg)
        assert v1 is not None
        leaving = v1.groups[1].members[2]
        asleep = v1.groups[0].members[3]  # down during the push: learns it later
        other = v1.groups[1].members[0]  # stopped at the end: the newcomer is needed
        shutil.copy(home / "layout.signed", home / "layout.v1")
        (tmp_path / "n").mkdir()
        port = local.cluster_ports(tmp_path / "n", 1)[0]

        async def body() -> None:
            async with open_session(cfg, "client0") as s:
                files = await _write(s, [b"a%d" % i for i in range(12)], rng)
                switched = trio.Event()
                assert isinstance(s.qu, GroupedQU)
                s.qu.switched.append(lambda _layout: switched.set())
                await trio.to_thread.run_sync(pc.stop, asleep)
                argv = ["node", "replace", str(leaving), "--address", f"127.0.0.1:{port}"]
                code = await trio.to_thread.run_sync(
                    main, [*argv, "--config", str(home / "cluster.toml")]
                )
                assert code == 0
                pc.config = local.load_cluster(home)  # the newcomer too, stopped at the end
                v2 = load_layout(pc.config)
                assert v2 is not None and v2.version == 2
                newcomer = v2.groups[1].members[2]  # the new machine: the same id and place
                assert newcomer == leaving and local.running_pid(cfg.node(leaving)) is None
                assert v2.node(leaving).public_key != v1.node(leaving).public_key
                with trio.fail_after(20):  # the nodes tell the mount (a push)
                    await switched.wait()
                assert _version(s) == 2
                await trio.to_thread.run_sync(pc.start, newcomer)
                await trio.to_thread.run_sync(_start_behind, pc, cfg, asleep, tmp_path / "m")
                await trio.to_thread.run_sync(wait_caught_up, pc.config, newcomer)
                held = await _held(pc.config, v2, set())
                assert held == {n: 2 for g in v2.groups for n in g.members}, held
                assert (pc.config.node(asleep).data_dir / "layout.signed").exists()
                old_key = cfg.node(leaving).key_path  # the old machine's
                told = await _old_machine_refused(pc.config, v2, old_key)
                assert "its key was replaced in layout 2" in told, told
                codes = await _refusals(pc.config, v2, AdminKey.load(cfg.admin_key_path))
                assert codes == [
                    "stale_layout",
                    "bad_layout",
                    "conflicting_layout",
                    "unsupported_layout",
                ]
                await trio.to_thread.run_sync(
                    pc.stop, other
                )  # group 1 now serves with the newcomer only
                files |= await _write(s, [b"b%d" % i for i in range(12)], rng)
                await _same(s, files)
            async with open_session(pc.config, "client1") as fresh:
                await _same(fresh, files)

        trio.run(body)
