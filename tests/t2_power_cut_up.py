"""Every node killed at once during writes, then ``bftfs up`` (issue 60 item 8).

After a power cut of the whole cluster ``bftfs up --no-mount`` exited 4 after 36 s on a
loaded machine: it gave each node a fixed second per poll (handshake included) and gave up
at its timeout while the nodes' processes were still recovering.  ``up`` after a crash of
every node must succeed: a node still starting at the deadline (its process runs) is said,
not fatal, once a quorum answers; then the file system serves, and every file synced
before the cut reads back whole.

The slow recovery is made deterministic: one node's process is started and stopped
(SIGSTOP) before ``up``, so it runs but answers nothing until the test lets it go on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from fs_helpers import read_back

from bftfs import fsobjects as obj
from bftfs import local, proc
from bftfs.fs.session import open_session
from bftfs.testing.processes import ProcessCluster

SLOW = 4  # the node whose recovery outlasts `up`'s timeout


async def _write_until_cut(pc: ProcessCluster, synced: dict[bytes, bytes]) -> None:
    """Write and sync files; once 12 are synced, kill every node (SIGKILL, at once) while
    the next file is being written."""
    rng = random.Random(8)
    async with open_session(pc.config, "client0") as s:
        with trio.move_on_after(60):  # the writes after the cut fail: stop there
            for k in range(200):
                name, data = f"f{k}".encode(), rng.randbytes(rng.randrange(100, 90_000))
                fh, _ = await s.fs.create(obj.ROOT, name, 0o644, 0, 0, os.O_RDWR)
                await s.fs.write(fh, 0, data[: len(data) // 2])
                if k == 12:
                    for i in pc.config.node_ids:
                        local.stop_node(pc.config, i, kill=True)
                    return
                await s.fs.write(fh, len(data) // 2, data[len(data) // 2 :])
                await s.fs.fsync(fh)
                await s.fs.release(fh)
                synced[name] = data


async def _read_and_write(pc: ProcessCluster, synced: dict[bytes, bytes]) -> None:
    async with open_session(pc.config, "client1") as s:
        for name, data in synced.items():
            ino = (await s.fs.lookup(obj.ROOT, name)).ino
            assert await read_back(s.fs, ino) == data, name
        fh, _ = await s.fs.create(obj.ROOT, b"after", 0o644, 0, 0, os.O_RDWR)
        await s.fs.write(fh, 0, b"written after the power cut")
        await s.fs.fsync(fh)
        await s.fs.release(fh)


@pytest.mark.slow  # over 20 s: the slow suite (make test stays under 10 minutes)
def test_up_after_every_node_was_killed_serves_with_a_node_still_recovering(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, map_size=1 << 28, durable=False) as pc:
        synced: dict[bytes, bytes] = {}
        trio.run(_write_until_cut, pc, synced)
        assert len(synced) == 12
        assert all(local.running_pid(s) is None for s in pc.config.nodes)
        slow = local.start_node(pc.config, SLOW)
        os.kill(slow, signal.SIGSTOP)  # running, not answering: a recovery taking long
        try:
            cmd = [sys.executable, "-m", "bftfs", "up", "--dir", str(home), "--no-mount"]
            up = subprocess.run(
                [*cmd, "--timeout", "10"], capture_output=True, text=True, timeout=120, check=False
            )
            assert up.returncode == 0, up.stdout + up.stderr
            assert f"node(s) {SLOW} still starting" in up.stderr
        finally:
            os.kill(slow, signal.SIGCONT)
        local.wait_ready(pc.config, timeout=60)
        trio.run(_read_and_write, pc, synced)


@pytest.mark.slow
def test_up_starts_a_node_whose_pid_file_names_a_recycled_pid(tmp_path: Path) -> None:
    """After a power cut every node's pid file stays; pids are recycled within minutes
    where ``pid_max`` is 32768, and another cluster's node (the same program: its command
    line has the marks checked) may hold one.  ``up`` took it for the node, did not start
    the node and waited out its timeout (and ``down`` would have stopped the other
    cluster's node).  The pid file names the process's start time too."""
    home = tmp_path / "c"
    with ProcessCluster(home, map_size=1 << 28, durable=False) as pc:
        pids = [pc.pid(i) for i in range(pc.config.n)]
        killed = [pid for pid in pids if pid]  # (a 0 would signal the test's process group)
        assert len(killed) == pc.config.n, pids
        for pid in killed:  # SIGKILL, pid files left in place
            os.kill(pid, signal.SIGKILL)
        for pid in killed:  # a SIGKILL is delivered, not waited for: wait until each is gone
            proc.wait_gone(pid, timeout=30)
        # Another cluster's node, now holding a pid one of ours had.
        other = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", "bftfs", "node"],
            stdin=subprocess.PIPE,
        )
        try:
            pid_file = local.pid_path(pc.config.node(2))
            _, *rest = pid_file.read_text().split("\n")
            pid_file.write_text("\n".join([str(other.pid), *rest]))
            assert all(local.running_pid(s) is None for s in pc.config.nodes if s.id != 2)
            cmd = [sys.executable, "-m", "bftfs", "up", "--dir", str(home), "--no-mount"]
            up = subprocess.run(
                [*cmd, "--timeout", "30"], capture_output=True, text=True, timeout=120, check=False
            )
            assert up.returncode == 0, up.stdout + up.stderr
            assert local.running_pid(pc.config.node(2)) not in (None, other.pid)
            assert len(local.wait_ready(pc.config, timeout=30)) == pc.config.n
            assert other.poll() is None  # not taken for ours, nor stopped as ours
        finally:
            other.kill()
            other.communicate()
