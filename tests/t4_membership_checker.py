"""The two-client consistency checker running through membership changes (issue 35;
``docs/membership.md``): real node processes, two real mounts taking turns on one
directory, every read checked against close-to-open semantics on a model
(``bftfs.testing.consistency``), while the administrator adds a client that mounts and
writes, revokes it, and replaces node 3 by a new process with a new key, address and empty
data directory, which catches up while the checker goes on.  Node 3 is Byzantine in the
old view (it corrupts every fragment it serves: the machine replaced for an intrusion) and
its replacement is Byzantine in the new one, so each view has one liar.  Beside the
checker, one thread per mount reads and rewrites two fixed-size files at the same time as
the other, and that history is checked for linearizability (``bftfs.testing.registers``)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import trio

from bftfs import config as cfgmod
from bftfs import local
from bftfs.connect import IdentityRefused, check_identity
from bftfs.crypto import Identity, KeyRing
from bftfs.testing import consistency, registers
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import wait_caught_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

LIAR = ["--byzantine", "corrupt-fragments"]
REPLACED = 3


def test_the_checker_runs_through_a_client_added_and_revoked_and_a_node_replaced(
    tmp_path: Path,
) -> None:
    with consistency.mounted(tmp_path, 2, node_args={REPLACED: LIAR}) as (pc, dirs):
        home = pc.home
        started: list[int] = []
        # A laptop's bundle made now, in view 1: it mounts only after every change below.
        bftfs_cli(home, "bundle", "--client", "client1", "-o", str(tmp_path / "laptop.tgz"))

        def add_and_use_carol() -> None:
            out = bftfs_cli(home, "client", "add", "carol", "-o", str(tmp_path / "carol.tgz"))
            assert "view 2 acknowledged by 6 of 6" in out.stdout, out.stdout
            cfg = cfgmod.load(home / "cluster.toml")
            with Mount(cfg, tmp_path / "carol", client="carol") as mc:
                (mc.mountpoint / "by-carol").write_bytes(b"carol was here")
                assert (mc.mountpoint / "by-carol").read_bytes() == b"carol was here"

        def revoke_carol() -> None:
            out = bftfs_cli(home, "client", "revoke", "carol")
            assert "view 3 acknowledged" in out.stdout, out.stdout
            with tarfile.open(tmp_path / "carol.tgz") as tar:
                tar.extractall(tmp_path / "carol-host", filter="data")
            carol_cfg = cfgmod.load(tmp_path / "carol-host" / "cluster.toml")
            me = carol_cfg.client("carol")
            ring = KeyRing(
                Identity.load(me.id, carol_cfg.client_key_path("carol")),
                carol_cfg.node_public_keys(),
            )
            with pytest.raises(IdentityRefused, match="revoked in view 3"):
                trio.run(check_identity, carol_cfg, ring)

        def replace_node() -> None:
            (port,) = local.cluster_ports(tmp_path / "newcomer", 1)
            out = bftfs_cli(
                home, "node", "replace", str(REPLACED), "--address", f"127.0.0.1:{port}"
            )
            assert "view 4 acknowledged by 5 of 6" in out.stdout, out.stdout
            cfg = cfgmod.load(home / "cluster.toml")
            local.start_node(cfg, REPLACED, LIAR)
            started.append(REPLACED)
            local.wait_ready(cfg, nodes=[REPLACED])
            done = wait_caught_up(cfg, REPLACED, seconds=120.0)
            assert not done["qu.catchup"]["failed"], done

        changes: dict[int, consistency.Change] = {
            10: ("client carol added, mounted, written", add_and_use_carol),
            40: ("client carol revoked", revoke_carol),
            60: (f"node {REPLACED} replaced", replace_node),
        }
        try:
            with registers.running(dirs, seed=11) as concurrent:
                report = consistency.run(pc, dirs, seed=11, ops=150, faults=0, changes=changes)
            print(report.text())
            print(concurrent.history.text())
            assert concurrent.own_and_others()["other"] > 20, concurrent.own_and_others()
            assert [e for e in report.schedule if e.endswith("done")] == [
                "op 40: client carol added, mounted, written done",
                "op 60: client carol revoked done",
                f"end: node {REPLACED} replaced done",
            ], report.schedule
            assert report.steps == 150 and sum(report.ops.values()) > 100
            # What carol wrote stays, and stays hers.
            rows = bftfs_cli(home, "log", "fs:/by-carol", "--json").stdout
            assert '"carol (removed)"' in rows, rows
            # The laptop's configuration is three views behind and names node 3's old
            # address and key: its mount learns view 4 from the nodes it reaches and
            # reads what the others wrote, the checker's directory included.
            with tarfile.open(tmp_path / "laptop.tgz") as tar:
                tar.extractall(tmp_path / "laptop", filter="data")
            stale = cfgmod.load(tmp_path / "laptop" / "cluster.toml")
            assert stale.node(REPLACED).port != cfgmod.load(home / "cluster.toml").node(3).port
            names = sorted(p.name for p in dirs[0].iterdir())
            with Mount(stale, tmp_path / "laptop-mnt", client="client1") as laptop:
                assert (laptop.mountpoint / "by-carol").read_bytes() == b"carol was here"
                work = laptop.mountpoint / dirs[0].name
                assert sorted(p.name for p in work.iterdir()) == names
                for name in names:
                    assert (work / name).read_bytes() == (dirs[0] / name).read_bytes()
        finally:
            cfg = cfgmod.load(home / "cluster.toml")
            for node in started:
                local.stop_node(cfg, node)
