"""``bftfs status`` lists the clients the nodes hold sessions with, wherever they run
(issue 67): from the admin directory it listed only the mounts of its own machine, so an
administrator could not see who else was connected."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

from bftfs.fs.session import open_session
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.processes import ProcessCluster


def _status(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, "status", *args, check=False)


def test_status_lists_a_client_with_no_mount_on_this_machine(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, map_size=1 << 28, durable=False) as pc:

        async def main() -> tuple[dict, str]:
            # A session in this process stands in for a laptop's mount: no mount status
            # file on this machine names it; only the nodes know it.
            async with open_session(pc.config, "client1") as s:
                for i in range(5):
                    await s.fs.mkdir(1, f"d{i}".encode(), 0o755, 0, 0)
                doc = await trio.to_thread.run_sync(_status, home, "--json")
                table = await trio.to_thread.run_sync(_status, home, "-v")
            return json.loads(doc.stdout), table.stdout

        doc, table = trio.run(main)
    assert doc["mounts"] == []
    rows = [r for r in doc["sessions"] if r["client"] == "client1"]
    assert len(rows) == 1, doc["sessions"]
    row = rows[0]
    assert row["host"] == "127.0.0.1" and row["requests"] >= 5
    assert len(row["nodes"]) >= pc.config.n - pc.config.t  # a quorum answered its updates
    assert "client1" in table and "127.0.0.1" in table
