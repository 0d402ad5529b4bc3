"""Tier 4: ``bftfs generation move`` and ``finish`` with real node processes (issue 35;
docs/membership.md, "Generations: the mover and finishing").

A cluster of 6 node processes holds a tree written through a session; ``bftfs generation
new`` starts generation 2 on 7 new node processes; nobody touches the tree, so only the
mover brings it over.  ``finish`` is refused before the move, ``move`` moves everything
(and a second run says the move is complete), ``finish`` retires the old nodes (they say
so to ``gen.status``), and a session over the new generation alone reads every file back
byte for byte.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import config as cfgmod
from bftfs import local
from bftfs.cli.generations import generation_config_path
from bftfs.connect import open_client
from bftfs.crypto import Identity
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.generations import MoveState, cursor_path
from bftfs.fsobjects import ROOT
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import open_rw_client
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.processes import ProcessCluster

pytestmark = pytest.mark.slow

OPTIONS: dict[str, Any] = {"clients": 2, "durable": False, "map_size": 1 << 28}


def bftfs(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, check=check, timeout=120.0)


def tree(block_size: int) -> dict[bytes, bytes]:
    rng = random.Random(36)
    files = {f"small{i}".encode(): f"small file {i}\n".encode() * (i + 1) for i in range(5)}
    for i in range(3):
        files[f"big{i}".encode()] = rng.randbytes(block_size * (i + 1) + rng.randrange(999))
    return files


@asynccontextmanager
async def file_system(cfg: cfgmod.ClusterConfig, client: str) -> AsyncIterator[FileSystem]:
    """A file system over ``cfg``'s nodes alone (one generation) as ``client``; written
    back and its leases given back at the end."""
    async with open_client(cfg, client) as ep, open_rw_client(ep, cfg) as rw:
        qu = QUClient(ep, QUThresholds.from_config(cfg), client_id=ep.pid)
        async with open_file_system(qu, rw, cfg) as fs:
            yield fs
            await fs.write_back()
            if fs.meta.leases is not None:
                await fs.meta.leases.release_all()


async def write_tree(cfg: cfgmod.ClusterConfig, files: dict[bytes, bytes]) -> None:
    async with file_system(cfg, "client0") as fs:
        d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        for name, data in files.items():
            fh, _ = await fs.create(d, name, 0o644, 0, 0, os.O_RDWR)
            await fs.write(fh, 0, data)
            await fs.release(fh)


async def read_tree(cfg: cfgmod.ClusterConfig, files: dict[bytes, bytes]) -> list[bytes]:
    """The files that do not read back through ``cfg``'s nodes alone."""
    bad = []
    async with file_system(cfg, "client1") as fs:
        d = (await fs.lookup(ROOT, b"d")).ino
        names = sorted(n for n, _ in await fs.readdir(d) if n not in (b".", b".."))
        assert names == sorted(files), names
        for name, data in files.items():
            fh = await fs.open((await fs.lookup(d, name)).ino, os.O_RDONLY)
            if await fs.read(fh, 0, len(data) + 1) != data:
                bad.append(name)
            await fs.release(fh)
    return bad


async def statuses(cfg: cfgmod.ClusterConfig) -> dict[int, Any]:
    from bftfs.connect import open_nodes
    from bftfs.membership.client import generation_status

    me = Identity.load(cfg.client("client0").id, cfg.client_key_path("client0"))
    async with open_nodes(me, cfg, timeout=5.0, resend_after=0.5) as ep:
        return await generation_status(ep, [int(n) for n in cfg.node_ids])


def test_generation_move_and_finish_bring_everything_over(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        files = tree(pc.config.block_size)
        trio.run(write_tree, pc.config, files)
        bftfs(home, "generation", "new", "--nodes", "7", "--t", "1", "--b", "1")
        new = cfgmod.load(home / "cluster.toml")
        old = cfgmod.load(generation_config_path(home, 1))
        try:
            local.start_nodes(new)
            local.wait_ready(new)
            refused = bftfs(home, "generation", "finish", check=False)
            assert refused.returncode == 2 and "no move was run" in refused.stderr, refused

            moved = bftfs(home, "generation", "move", "--bytes-per-second", "100000000")
            assert "complete" in moved.stdout, moved.stdout
            assert " 0 absent" in moved.stdout and "blocks copied" in moved.stdout, moved.stdout
            again = bftfs(home, "generation", "move")
            assert "is complete" in again.stdout, again.stdout

            shown = bftfs(home, "generation", "show").stdout
            assert "move: complete; " in shown and "(frozen)" in shown, shown
            done = bftfs(home, "generation", "finish")
            assert "retire" in done.stdout and "may be powered off" in done.stdout, done.stdout
            got = trio.run(statuses, old)
            assert got and all(s["retired"] for s in got.values()), got
            assert trio.run(read_tree, cfgmod.load(home / "cluster.toml"), files) == []
        finally:
            local.stop_nodes(new)


def test_a_move_killed_between_pages_resumes_and_finishes(tmp_path: Path) -> None:
    """``bftfs generation move`` killed (SIGKILL) once its cursor holds a page, then run
    again: it resumes there, every object of the tree is moved or found there once, and
    the tree reads back through the new generation alone after ``finish``."""
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        # 402 objects: two pages of the walk (``mover.DEFAULT_PAGE``, 256), killed between.
        files = {f"f{i:03}".encode(): f"file {i}\n".encode() for i in range(400)}
        trio.run(write_tree, pc.config, files)
        bftfs(home, "generation", "new", "--nodes", "7", "--t", "1", "--b", "1")
        new = cfgmod.load(home / "cluster.toml")
        cursor = cursor_path(home, 2)
        try:
            local.start_nodes(new)
            local.wait_ready(new)
            cmd = [sys.executable, "-m", "bftfs", "generation", "move"]
            mover = subprocess.Popen(
                [*cmd, "--config", str(home / "cluster.toml")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 120
                while (MoveState.load(cursor) or MoveState(0, 0)).after is None:
                    assert mover.poll() is None, "the move ended before a page was done"
                    assert time.monotonic() < deadline, "no page done in 120 s"
                    time.sleep(0.02)  # polling the cursor file, not waiting blindly
                mover.kill()
            finally:
                mover.wait()
            cut = MoveState.load(cursor)
            assert cut is not None and not cut.complete, cut
            moved = bftfs(home, "generation", "move")
            assert "complete" in moved.stdout, moved.stdout
            done = MoveState.load(cursor)
            assert done is not None and done.complete
            # Every object once: the tree's 400 files, its directory and the root.
            o = done.objects
            assert o["moved"] + o.get("here", 0) >= len(files) + 2, o
            bftfs(home, "generation", "finish")
            assert trio.run(read_tree, cfgmod.load(home / "cluster.toml"), files) == []
        finally:
            local.stop_nodes(new)
