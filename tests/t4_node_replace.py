"""Node replacement online with real node processes (issue 35; docs/membership.md,
"Replacing a node"): node 5 is replaced by a new process on a new port with a new key while
a mount keeps running; the old node-5 process keeps running and every node and client
refuses it; the newcomer, started empty, catches up; with node 0 then killed, every file
reads back byte for byte, so the newcomer holds what it must."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.crypto import Identity, KeyRing
from bftfs.ids import NodeId
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.session import SessionRefused
from bftfs.qu.messages import KIND_LATEST, VERSION
from bftfs.rw.messages import KIND_LIST, MAX_LIST, ListRequest
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster, wait_caught_up

OPTIONS: dict[str, Any] = {"clients": 2, "durable": False, "map_size": 1 << 28}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, timeout=120.0)


def tree(block_size: int) -> dict[str, bytes]:
    """Small files and files of several blocks, in nested directories (seeded)."""
    rng = random.Random(35)
    files = {f"small/f{i}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(12)}
    for i in range(4):
        size = block_size * (i + 1) + rng.randrange(block_size)
        files[f"big/d{i}/blocks{i}.bin"] = rng.randbytes(size)
    files["top.bin"] = rng.randbytes(block_size)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_back(root: Path, files: dict[str, bytes]) -> list[str]:
    """The files that do not read back byte for byte."""
    return [rel for rel, data in files.items() if (root / rel).read_bytes() != data]


async def ping_each(
    ring: KeyRing, addresses: dict[NodeId, tuple[str, int]], nodes: list[int]
) -> dict[int, Any]:
    """``ping`` to each of ``nodes`` at ``addresses`` as ``ring``'s principal: each reply,
    or the exception."""
    out: dict[int, Any] = {}
    async with open_endpoint(ring, addresses, timeout=5.0, resend_after=0.2) as ep:

        async def one(node: int) -> None:
            try:
                out[node] = await ep.call(NodeId(node), "ping", b"")
            except (RemoteError, TransportError) as e:
                out[node] = e

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(one, node)
    return out


async def listings(cfg: ClusterConfig, nodes: list[int]) -> dict[int, Any]:
    """What each of ``nodes`` lists (``qu.latest``: each object's newest timestamp;
    ``rw.list``: each block's latest version), asked as node 1 (listings are between
    nodes)."""
    me = Identity.load(NodeId(1), cfg.node(1).key_path)
    ring = KeyRing(me, cfg.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    out: dict[int, Any] = {}
    async with open_endpoint(ring, addresses, timeout=10.0, resend_after=0.5) as ep:
        for node in nodes:
            objects = await ep.call(NodeId(node), KIND_LATEST, {"v": VERSION, "after": None})
            blocks = await ep.call(NodeId(node), KIND_LIST, ListRequest(None, MAX_LIST).to_wire())
            out[node] = (objects, blocks)
    return out


async def same_listings(cfg: ClusterConfig, seconds: float = 60.0) -> dict[int, Any]:
    """Node 2's and node 5's listings, once equal or after ``seconds``."""
    with trio.move_on_after(seconds):
        while True:
            held = await listings(cfg, [2, 5])
            if held[2] == held[5]:
                return held
            await trio.sleep(0.5)
    return await listings(cfg, [2, 5])


def test_a_node_replaced_online_catches_up_and_its_old_key_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        old = pc.config
        files = tree(old.block_size)
        old_five = Identity.load(NodeId(5), old.node(5).key_path)
        old_five_at = (old.node(5).host, old.node(5).port)
        with Mount(old, tmp_path / "through", client="client1") as through:
            write_tree(through.mountpoint, files)
            for rel in files:  # through to the nodes: nothing left in the write-behind
                fd = os.open(through.mountpoint / rel, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            (port,) = local.cluster_ports(tmp_path / "newcomer", 1)
            got = bftfs(home, "node", "replace", "5", "--address", f"127.0.0.1:{port}")
            assert "view 2 acknowledged by 5 of 6" in got.stdout, got.stdout
            cfg = cfgmod.load(home / "cluster.toml")
            assert cfg.node(5).port == port and cfg.node(5).public_key != old_five.public
            assert cfg.node(5).data_dir != old.node(5).data_dir
            assert not (cfg.node(5).data_dir / "lmdb").exists()  # the newcomer starts empty
            local.start_node(cfg, 5)
            try:
                local.wait_ready(cfg, nodes=[5])
                done = wait_caught_up(cfg, 5)
                assert not done["qu.catchup"]["failed"], done
                # The newcomer comes to hold every object and block node 2 does, at the same
                # version (a block whose read failed is caught up by the next pass).
                held = trio.run(same_listings, cfg)
                assert held[5] == held[2], held
                # The old node-5 process still runs; every peer refuses its key, saying why.
                assert local.process_alive(pc.pid(5) or -1)
                peers = {s.id: (s.host, s.port) for s in cfg.nodes}
                ring = KeyRing(old_five, old.node_public_keys())
                refused = trio.run(ping_each, ring, peers, [0, 1, 2, 3, 4])
                assert all(
                    isinstance(r, SessionRefused) and "key was replaced in view 2" in str(r)
                    for r in refused.values()
                ), refused
                # A client of view 2 does not take the old machine for node 5.
                me = Identity.load(cfg.client("client0").id, cfg.client_key_path("client0"))
                at_old = trio.run(
                    ping_each, KeyRing(me, cfg.node_public_keys()), {NodeId(5): old_five_at}, [5]
                )
                assert isinstance(at_old[5], TransportError), at_old
                # The mount that ran through the replacement keeps working.
                (through.mountpoint / "after.txt").write_bytes(b"written after the replacement")
                assert read_back(through.mountpoint, files) == []
                files["after.txt"] = b"written after the replacement"
                # Node 0 fails: reads need the newcomer's fragments and objects now.
                pc.kill(0)
                with Mount(cfg, tmp_path / "fresh", client="client0") as fresh:
                    assert read_back(fresh.mountpoint, files) == []
            finally:
                local.stop_node(cfg, 5)
