"""A mount across a WAN (issue 65): six nodes each on its own host (network namespaces),
the client's mount in the root namespace, 25 ms one-way between the client and nodes 0-4
and 150 ms to node 5 (:mod:`bftfs.testing.wan`).

Files written and read back, a small tree copied and listed with ``ls -lR``: nothing may
fail, and the slow node must not be taken for a faulty or dead one by the mount (its
fault counters in ``bftfs status --json``) nor by ``bftfs status`` (it shows it up): Q/U
and PASIS tolerate a silent node, a slow one must cost nothing, certainly not a timeout on
the record against it.

``bftfs status`` with a node 300 ms away (three round trips of 0.6 s: TCP, handshake, the
call) shows it up: its timeouts stretch with the measured round trip (``net/rtt.py``).
The two-mount consistency checker (``bftfs.testing.consistency``: close-to-open, every
read checked on a model) runs once across the WAN, every node 25 ms away, one node killed
and restarted.  A reduced adversary campaign runs across the WAN too: node 0 (in every
quorum a client prefers) restarted as each of several ``bftfs node --byzantine`` profiles
in turn, a tree copied through one mount and read back through another.  And the quorum
operations' latency with node 5 at 150 ms against all at 25 ms is measured and printed
(docs/wan.md has the figures; no timed assert), the far node being the one the client
asks last.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from waiting import wait_for

from bftfs.testing import consistency, wan
from bftfs.testing.byzantine.profiles import PROFILES
from bftfs.testing.mounts import Mount, fuse_available

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import attack  # noqa: E402

SLOW_NODE = 5
LINKS = [wan.Link(25.0)] * 5 + [wan.Link(150.0)]

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(wan.skip_reason() is not None, reason=str(wan.skip_reason())),
    pytest.mark.slow,
]


def source_tree(root: Path, rng: random.Random) -> dict[str, bytes]:
    """A small tree on the local disk: 3 directories, 12 files of 100 B to 200 KB."""
    out = {}
    for k in range(12):
        rel = f"src/d{k % 3}/f{k}"
        data = rng.randbytes(rng.choice([100, 4_000, 60_000, 200_000]))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    return out


def test_a_mount_across_a_wan_with_one_node_at_150_ms(tmp_path: Path) -> None:
    rng = random.Random(65)
    local = tmp_path / "local"
    tree = source_tree(local, rng)
    with ExitStack() as stack:
        bed = stack.enter_context(wan.Wan(LINKS, seed=65))
        config = stack.enter_context(wan.cluster(bed, tmp_path / "admin"))
        rtts = [bed.connect_rtt(i, wan.NODE_PORT) for i in range(len(LINKS))]
        assert all(0.05 <= r < 0.3 for r in rtts[:SLOW_NODE]), rtts
        assert rtts[SLOW_NODE] >= 0.3, rtts
        mnt = tmp_path / "m"
        mnt.mkdir()
        wan.bftfs_cli("mount", "--config", str(config), "-o", "client=client0", str(mnt))
        stack.callback(wan.bftfs_cli, "umount", str(mnt), check=False)

        files = {f"w{k}": rng.randbytes(rng.choice([10, 5_000, 300_000])) for k in range(10)}
        for name, data in files.items():
            with open(mnt / name, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())  # to the nodes now, not held back by the mount
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data, name
        r = subprocess.run(["cp", "-r", str(local / "src"), str(mnt / "copy")], capture_output=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "f11" in r.stdout, r.stderr
        for rel, data in tree.items():
            with open(mnt / "copy" / rel.removeprefix("src/"), "rb") as f:
                assert f.read() == data, rel
                os.fsync(f.fileno())
        done = time.time()

        def report() -> tuple[int, dict[str, Any]] | None:
            """The status with the mount's report published after ``done``."""
            status = wan.bftfs_cli("status", "--config", str(config), "--json", check=False)
            mounts = json.loads(status.stdout).get("mounts", [])
            mine = [m for m in mounts if m.get("mountpoint") == str(mnt)]
            fresh = mine and mine[0].get("updated", 0) > done
            if not (fresh and status.returncode == 0):
                return None
            return status.returncode, mine[0], json.loads(status.stdout)["nodes"]

        _, mount, nodes = wait_for(
            "a healthy status with the mount's report after the work", report
        )
        assert [n["up"] for n in nodes] == [True] * len(LINKS), nodes
        assert mount.get("state") not in ("dead", "unresponsive"), mount
        assert not sum((mount.get("eio") or {}).values()), mount
        faults = {n: k for n, k in (mount.get("faults") or {}).items() if any(k.values())}
        assert str(SLOW_NODE) not in faults, faults  # no timeout against the slow node
        assert not faults, faults
        print(f"connect RTTs {[round(r, 3) for r in rtts]}; mount {json.dumps(mount)}")
    shutil.rmtree(local)


def mount_report(config: Path, mnt: Path, after: float) -> dict[str, Any] | None:
    """The mount's report in ``bftfs status --json``, once published after ``after``."""
    status = wan.bftfs_cli("status", "--config", str(config), "--json", check=False)
    for m in json.loads(status.stdout).get("mounts", []):
        if m.get("mountpoint") == str(mnt) and m.get("updated", 0) > after:
            return dict(m)
    return None


def test_a_cold_read_over_long_fat_links_widens_the_read_ahead_window(tmp_path: Path) -> None:
    """Read-ahead sized from the links (``fs/files/window.py``): at 100 ms one-way and
    200 Mbit/s a link a read's round carries about 15 MB, past the 8 MiB a LAN keeps; a
    fresh mount's cold read of a 24 MiB file measures the links on its own connections
    (the rate replies arrive at, the shortest round trip) and widens its window past
    8 MiB, and reads the same bytes."""
    data = random.Random(66).randbytes(24 << 20)
    with ExitStack() as stack:
        bed = stack.enter_context(wan.Wan([wan.Link(100.0, rate_mbit=200.0)] * 6, seed=66))
        config = stack.enter_context(wan.cluster(bed, tmp_path / "admin"))
        mounts = []
        for k in range(2):  # the second mount has none of the file cached
            mnt = tmp_path / f"m{k}"
            mnt.mkdir()
            wan.bftfs_cli("mount", "--config", str(config), "-o", "client=client0", str(mnt))
            stack.callback(wan.bftfs_cli, "umount", str(mnt), check=False)
            mounts.append(mnt)
            if k == 0:
                with open(mnt / "big", "wb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
                wan.bftfs_cli("umount", str(mnt))
        assert (mounts[1] / "big").read_bytes() == data
        done = time.time()
        report = wait_for("the reader's report", lambda: mount_report(config, mounts[1], done))
        streaming = report.get("streaming") or {}
        assert streaming.get("readahead-largest", 0) > 8 << 20, streaming
        assert not streaming.get("readahead-failures"), streaming


def status_nodes(config: Path) -> list[dict[str, Any]]:
    """``bftfs status --json``'s nodes (whatever its exit code)."""
    status = wan.bftfs_cli("status", "--config", str(config), "--json", check=False)
    nodes: list[dict[str, Any]] = json.loads(status.stdout)["nodes"]
    return nodes


def test_bftfs_status_shows_a_node_300_ms_away_up(tmp_path: Path) -> None:
    """Before issue 65 each node had 1 s in all, and node 5 needs 1.8 s: always down
    (``wan.cluster`` waits for a status where every node answers, so it timed out)."""
    links = [wan.Link(25.0)] * 5 + [wan.Link(300.0)]
    with wan.Wan(links, seed=65) as bed, wan.cluster(bed, tmp_path / "admin") as config:
        assert bed.connect_rtt(SLOW_NODE, wan.NODE_PORT) >= 0.6
        for _ in range(3):
            nodes = status_nodes(config)
            assert [n["up"] for n in nodes] == [True] * len(links), nodes
        started = time.monotonic()
        r = wan.bftfs_cli("status", "--config", str(config), check=False)
        print(f"bftfs status with a node 300 ms away: {time.monotonic() - started:.2f} s")
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_node_at_150_ms_costs_the_quorum_operations_nothing(tmp_path: Path) -> None:
    """Median latency of a Q/U update and query and a PASIS write and read, one node at
    150 ms against all at 25 ms (the bar of issue 65 is 1.1x; printed, not asserted: a
    loaded machine's times are not the code's).  What is asserted: the client asks the far
    node last, and not the near ones."""
    got = {}
    for name, links in (("all at 25 ms", [wan.Link(25.0)] * 6), ("node 5 at 150 ms", LINKS)):
        work = tmp_path / name.replace(" ", "_")
        with (
            wan.Wan(links, seed=65) as bed,
            wan.cluster(bed, work, node_args=("--test-objects",)) as config,
        ):
            got[name] = trio.run(functools.partial(wan.quorum_latencies, config, 30))
    (near, near_last), (far, far_last) = got["all at 25 ms"], got["node 5 at 150 ms"]
    assert near_last == [] and far_last == [SLOW_NODE], (near_last, far_last)
    ratios = {op: far[op] / near[op] for op in wan.QUORUM_OPS}
    print("median ms, all at 25 ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in near.items()))
    print("median ms, node 5 at 150: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in far.items()))
    print("ratio: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))


def test_two_mounts_close_to_open_across_the_wan_with_a_node_killed(tmp_path: Path) -> None:
    """Correctness unchanged over the WAN (issue 65): the checker's seeded operations from
    two mounts, each node 25 ms one-way away, node crashes included; a short run (the
    slow suite's time is near its bar)."""
    ops = 60
    with ExitStack() as stack:
        bed = stack.enter_context(wan.Wan([wan.Link(25.0)] * 6, seed=65))
        nodes = stack.enter_context(wan.nodes(bed, tmp_path / "admin"))
        points = [
            stack.enter_context(Mount(nodes.config, tmp_path / f"m{k}", client=f"client{k}"))
            for k in range(2)
        ]
        (points[0].mountpoint / "work").mkdir()
        dirs = [p.mountpoint / "work" for p in points]
        report = consistency.run(nodes, dirs, seed=65, ops=ops, faults=1)
    print(report.text())
    assert report.steps == ops and sum(report.ops.values()) > 40, report.text()
    assert len(report.schedule) == 2, report.schedule


#: The Byzantine node profiles run across the WAN: ``benchmarks/attack.py``'s but
#: ``listeners-liar`` (it lies on the listeners engine's requests, which this Q/U cluster
#: never sends).
WAN_PROFILES = tuple(p for p in attack.NODE_PROFILES if p != "listeners-liar")


def listening(bed: wan.Wan, i: int) -> bool:
    """Whether node ``i``'s port accepts connections (a Byzantine node may refuse status)."""
    try:
        bed.connect_rtt(i, wan.NODE_PORT)
    except OSError:
        return False
    return True


def test_byzantine_node_profiles_across_the_wan(tmp_path: Path) -> None:
    """Correctness unchanged over the WAN (issue 65), the adversary's side: the campaign
    (``t5_campaign``) runs its nodes in one process over loopback, which the bed cannot
    delay, so here the profiles run on real node processes on the bed's hosts, every node
    25 ms away, each profile on node 0 in turn; one mount copies a tree in, the other
    (whose cache never saw it) reads every file back."""
    assert set(WAN_PROFILES) <= set(PROFILES)
    rng = random.Random(65)
    with ExitStack() as stack:
        bed = stack.enter_context(wan.Wan([wan.Link(25.0)] * 6, seed=65))
        nodes = stack.enter_context(wan.nodes(bed, tmp_path / "admin"))
        writer, reader = (
            stack.enter_context(Mount(nodes.config, tmp_path / f"m{k}", client=f"client{k}"))
            for k in range(2)
        )
        for profile in WAN_PROFILES:
            nodes.kill(0)
            nodes.start(0, wait=False, extra=("--byzantine", profile))
            wait_for(f"node 0 as {profile} listening", functools.partial(listening, bed, 0))
            local = tmp_path / "local" / profile
            tree = source_tree(local, rng)
            r = subprocess.run(
                ["cp", "-r", str(local / "src"), str(writer.mountpoint / profile)],
                capture_output=True,
                timeout=300,
            )
            assert r.returncode == 0, (profile, r.stderr)
            for rel, data in tree.items():
                path = reader.mountpoint / profile / rel.removeprefix("src/")
                assert path.read_bytes() == data, (profile, rel)
            print(f"{profile}: {len(tree)} files copied and read back")
