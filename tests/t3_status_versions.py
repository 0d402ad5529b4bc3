"""``bftfs status`` shows the bftfs each client connected to the nodes runs, wherever it
runs, and a mix of versions degrades the cluster (issue 67, docs/operations.md): a client
of release v0.1.0 (wire 5, built from this clone's history: ``testing/releases.py``) is
connected, by a process of its own with no mount on this machine, to nodes of this
version, and one of this version too (``bftfs status`` itself asks as client0)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio

from bftfs import STORE_FORMAT, WIRE_VERSION, __version__
from bftfs.fs.session import open_session
from bftfs.testing import releases
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.processes import ProcessCluster
from bftfs.thresholds import MAX_OBJECTS

#: The old client: a session that makes a directory, says so, and stays open until the
#: test closes its stdin.
OLD_CLIENT = """
import sys, trio
from pathlib import Path
from bftfs import local
from bftfs.fs.session import open_session
async def main():
    async with open_session(local.load_cluster(Path(sys.argv[1])), "client2") as s:
        await s.fs.mkdir(1, b"from-0.1.0", 0o755, 0, 0)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
trio.run(main)
"""


@pytest.mark.slow
def test_status_shows_each_clients_version_and_warns_on_a_mix(tmp_path: Path) -> None:
    commit, why = releases.commit_of("0.1.0")
    if commit is None:
        pytest.skip(why)
    python = releases.build(commit, tmp_path / "v0.1.0")
    home = tmp_path / "c"
    with ProcessCluster(home, map_size=1 << 28, durable=False, clients=3) as pc:
        # 0.1.0 refuses the key of a wider cluster: a cluster a 0.1.0 client joins keeps
        # to the width every release takes, as docs/operations.md tells an operator
        toml = home / "cluster.toml"
        toml.write_text(toml.read_text().replace(f"max_objects = {MAX_OBJECTS}\n", ""))
        old = subprocess.Popen(
            [str(python), "-P", "-c", OLD_CLIENT, str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert old.stdout is not None and old.stderr is not None
            assert old.stdout.readline() == "ready\n", old.stderr.read()[-3000:]

            async def main() -> tuple[subprocess.CompletedProcess[str], str]:
                async with open_session(pc.config, "client1") as s:
                    await s.fs.mkdir(1, b"from-this-version", 0o755, 0, 0)
                    doc = await trio.to_thread.run_sync(
                        lambda: bftfs_cli(home, "status", "--json", check=False)
                    )
                    table = await trio.to_thread.run_sync(
                        lambda: bftfs_cli(home, "status", "-v", check=False)
                    )
                return doc, table.stdout

            doc_run, table = trio.run(main)
        finally:
            old.communicate(timeout=30)
    doc = json.loads(doc_run.stdout)
    rows = {r["client"]: r for r in doc["sessions"]}
    assert (rows["client2"]["version"], rows["client2"]["wire"]) == ("0.1.0", WIRE_VERSION - 1)
    assert (rows["client1"]["version"], rows["client1"]["wire"]) == (__version__, WIRE_VERSION)
    assert doc["health"] == "degraded" and doc_run.returncode == 1
    (mixed,) = [p for p in doc["problems"] if p.startswith("mixed versions")]
    assert f"0.1.0 (wire {WIRE_VERSION - 1}) on client client2@127.0.0.1" in mixed
    assert f"{__version__} (wire {WIRE_VERSION}) on node 0, node 1, node 2" in mixed
    assert "client client1@127.0.0.1" in mixed.split("; ")[1]
    # Each node knows what its peers run (their heartbeats connect to it).
    peers = [n["stats"]["peer_versions"] for n in doc["nodes"]]
    assert any(peers), peers
    assert {(p["version"], p["wire"]) for ps in peers for p in ps.values()} == {
        (__version__, WIRE_VERSION)
    }
    line = next(x for x in table.splitlines() if x.strip().startswith("client2"))
    assert line.rstrip().endswith(f"0.1.0 (wire {WIRE_VERSION - 1})"), table


def test_version_names_the_package_wire_and_store_format() -> None:
    """``bftfs --version`` (issue 67), and the package version is one in both places it
    is written (``bftfs/__init__.py``, ``pyproject.toml``)."""
    got = subprocess.run(
        [sys.executable, "-m", "bftfs", "--version"], capture_output=True, text=True, check=True
    )
    assert got.stdout == f"bftfs {__version__} (wire {WIRE_VERSION}, store format {STORE_FORMAT})\n"
    project = tomllib.loads((releases.repository() / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
