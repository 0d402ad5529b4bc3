"""Tier 4: a mount's writes wait for a new generation whose nodes start late (issue 35;
docs/membership.md, "Generations: a session across the change").

``bftfs generation new`` issues the view and pushes it to the old nodes, which freeze and
push it on to their clients, before the new nodes are started (an operator starts them
next, ``t4_generations.py`` at once).  The mount used to switch to the new generation as
soon as it took the view: every call then went to nodes not listening yet, whose patience
(``timeo``) ran out, and the write failed with EIO when starting the new nodes took longer
than that - on a loaded machine, 11 node processes take seconds
(``t4_generations.py``' checker, 1-2 runs of 3 at load 8-10).  Now the session switches
only once a quorum of the new nodes answers; the calls the frozen nodes refuse wait for
it.  Here the window is made on purpose: the mount (``timeo=2``) writes while the new
nodes are not started, they are started only well past ``timeo``, and the write completes,
its data reading back; the mount never logs a session renewal refused ``invalid``
(``t3_generation_sessions.py``).  Real node processes, real FUSE.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from bftfs import config as cfgmod
from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

OPTIONS: dict[str, Any] = {"clients": 2, "durable": False, "map_size": 1 << 28}
#: The mount's patience for an unavailable cluster (s): short, so the window bites.
TIMEO = 2.0


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, timeout=120.0)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_a_write_waits_for_new_nodes_started_past_timeo_and_completes(tmp_path: Path) -> None:
    home = tmp_path / "c"
    new: ClusterConfig | None = None
    with ProcessCluster(home, **OPTIONS) as pc:
        try:
            options = f"{'allow_other,' if os.getuid() == 0 else ''}timeo={TIMEO:g}"
            with Mount(pc.config, tmp_path / "m", client="client1", options=options) as m:
                root = m.mountpoint
                (root / "d").mkdir()
                write_synced(root / "d/before.txt", b"written in generation 1\n")
                for _ in range(4):  # looked at often: leased, bound to the mount's session
                    assert (root / "d/before.txt").read_bytes() == b"written in generation 1\n"
                    os.stat(root / "d")

                got = bftfs(home, "generation", "new", "--nodes", "11", "--t", "2", "--b", "2")
                assert "of the old generation: frozen" in got.stdout, got.stdout
                new = cfgmod.load(home / "cluster.toml")
                # The mount took the view and handled it: switched at once (before the
                # fix) or waits for the new nodes (after).
                wait_for("the mount to take view 2", lambda: "now in view 2" in m.log_text())
                wait_for(
                    "the mount to handle the new generation",
                    lambda: (
                        "session: generation 2" in m.log_text()
                        or "starts generation 2: waiting for" in m.log_text()
                    ),
                )

                errors: list[BaseException] = []

                def writer() -> None:
                    try:
                        write_synced(root / "d/after.txt", b"written while the nodes start\n")
                        os.stat(root / "d/before.txt")
                    except BaseException as e:  # noqa: BLE001 - reported by the test
                        errors.append(e)

                thread = threading.Thread(target=writer)
                thread.start()
                # The new nodes start late: well past the mount's patience (the scenario,
                # not a synchronisation: the write must not depend on when they start).
                thread.join(timeout=4 * TIMEO)
                local.start_nodes(new)
                local.wait_ready(new, timeout=120.0)
                thread.join(timeout=180.0)
                assert not thread.is_alive(), "the write did not end once the nodes ran"
                assert errors == [], (errors, m.log_text())
                assert (root / "d/after.txt").read_bytes() == b"written while the nodes start\n"
                assert (root / "d/before.txt").read_bytes() == b"written in generation 1\n"
                log = m.log.read_text(errors="replace")
                assert "session: generation 2, moving from 1" in log
                assert "not renewed: invalid" not in log, log[-4000:]
        finally:
            if new is not None:
                local.stop_nodes(new)
