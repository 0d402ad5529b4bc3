"""Metrics everywhere (issue 36): nodes and mounts of a local cluster serve Prometheus
metrics because the configuration says so (``[metrics]``), scraped over real HTTP from real
node processes, with the series an operator watches (catch-up, scrub, findings, quota,
peers, build info) present and sensible; ``bftfs node restart --metrics-port`` (silently
ignored before) and ``bftfs up --metrics-port``; a dead mount in ``bftfs status``'s exit
code.

Every wait polls a condition under a deadline; ports are the OS's (port 0); every process
a test starts is stopped, also when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

import bftfs
from bftfs import local, proc
from bftfs.config import MetricsConfig
from bftfs.fuse import control
from bftfs.policy import VerificationPolicy
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-P", "-m", "bftfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def exposition(address: str) -> str:
    """The text ``http://address/metrics`` answers."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def scrape(address: str) -> dict[str, float]:
    """``name{labels}`` -> value, from ``http://address/metrics``."""
    out = {}
    for line in exposition(address).splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def build_info() -> str:
    """The ``bftfs_build_info`` sample every bftfs program exports."""
    python = ".".join(str(x) for x in sys.version_info[:3])
    labels = f'python="{python}",version="{bftfs.__version__}",wire="{bftfs.WIRE_VERSION}"'
    return f"bftfs_build_info{{{labels}}}"


def status(home: Path) -> tuple[int, dict[str, Any]]:
    r = run("status", "--dir", str(home), "--json", check=False)
    assert r.returncode in (0, 1, 2), r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
@pytest.mark.slow
def test_nodes_and_mounts_serve_metrics_from_the_configuration(tmp_path: Path) -> None:
    home = tmp_path / "c"
    started = time.time()
    with ProcessCluster(
        home,
        map_size=1 << 28,
        durable=False,
        metrics=MetricsConfig(node_port=0, mount_port=0),
        verification=VerificationPolicy(scrub_seconds=2.0),
    ) as pc:
        cfg = pc.config
        # [metrics] node_port = 0: every node serves, on a port of its own, and says where.
        addresses = [local.metrics_address(s) for s in cfg.nodes]
        assert all(addresses) and len(set(addresses)) == cfg.n, addresses
        _, doc = status(home)
        assert [n["stats"]["metrics"] for n in doc["nodes"]] == addresses
        text = run("status", "-v", "--dir", str(home)).stdout
        assert f"metrics (node address): 0 {addresses[0]}, 1 {addresses[1]}," in text

        with Mount(cfg, tmp_path / "m") as m:
            # mount_port = 0: the mount serves too (bftfs status shows where).
            published = json.loads(control.status_file(cfg, m.mountpoint).read_text())
            mount = scrape(published["metrics"])
            assert mount[build_info()] == 1

            pc.stop(1)
            for i in range(20):
                (m.mountpoint / f"small{i}").write_bytes(b"x" * 100)  # Q/U objects
            (m.mountpoint / "big").write_bytes(os.urandom(300_000))  # PASIS blocks
            # on the nodes before node 1 is back, not held back by directory write-back
            fd = os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            pc.start(1)
            node1 = local.metrics_address(cfg.node(1))
            assert node1 is not None and node1 != addresses[1]  # a new process, a new port

            def caught_up() -> dict[str, float] | None:
                got = scrape(node1)
                done = all(
                    got[f'bftfs_node_catchup_state{{protocol="{p}",state="done"}}'] == 1
                    for p in ("qu", "rw")
                )
                return got if done else None

            got = wait_for("node 1's catch-ups to finish", caught_up, 60)
            for proto in ("qu", "rw"):
                total = got[f'bftfs_node_catchup_items{{count="total",protocol="{proto}"}}']
                checked = got[f'bftfs_node_catchup_items{{count="checked",protocol="{proto}"}}']
                done = got[f'bftfs_node_catchup_items{{count="done",protocol="{proto}"}}']
                assert 0 < done <= checked == total, (proto, got)
                assert got[f'bftfs_node_catchup_eta_seconds{{protocol="{proto}"}}'] == 0
                assert got[f'bftfs_node_catchup_items_per_second{{protocol="{proto}"}}'] > 0
            assert got['bftfs_node_catchup_items{count="failed",protocol="qu"}'] == 0
            # bftfs status --json: the same figures, per protocol.
            qu = status(home)[1]["nodes"][1]["catch_up"]["qu"]
            assert qu["state"] == "done" and qu["checked"] == qu["total"] > 0
            assert qu["rate_per_s"] > 0 and qu["eta_s"] is None

        node0 = addresses[0]
        assert node0 is not None

        def peers_and_scrub() -> dict[str, float] | None:
            got = scrape(node0)
            every_peer = all(got[f'bftfs_node_peer_up{{peer="{p}"}}'] == 1 for p in range(1, 6))
            # A pass over the data written finished and the next has not begun (its
            # counts start again from 0; a pass before the writes checked nothing).
            scrubbed = (
                got["bftfs_node_scrub_passes_total"] >= 1
                and got['bftfs_node_scrub_state{state="done"}'] == 1
                and got['bftfs_node_scrub_versions{count="checked"}'] > 0
            )
            return got if every_peer and scrubbed else None

        got = wait_for("node 0 to reach node 1 again and to scrub", peers_and_scrub, 60)
        assert got["bftfs_node_peers_reachable"] == 5 and got["bftfs_node_cut_off"] == 0
        for p in range(1, 6):
            heard = got[f'bftfs_node_peer_last_heard_timestamp_seconds{{peer="{p}"}}']
            assert started < heard <= time.time()
        assert started < got["bftfs_node_scrub_last_end_timestamp_seconds"] <= time.time()
        assert got['bftfs_node_scrub_versions{count="checked"}'] > 0
        assert got['bftfs_node_scrub_versions{count="damaged"}'] == 0
        assert got['bftfs_node_scrub_state{state="off"}'] == 0
        # No quota (quota_fraction = 1): a client may keep the whole map.
        assert got["bftfs_node_quota_bytes"] == cfg.map_size
        assert got['bftfs_node_stored_bytes{kind="blocks",principal="client0"}'] > 0
        assert got['bftfs_node_stored_bytes{kind="metadata",principal="client0"}'] > 0
        assert got['bftfs_node_limits_total{event="quota_refused"}'] == 0
        assert started - 60 < got["bftfs_node_start_time_seconds"] < time.time()
        assert got["process_resident_memory_bytes"] > 0
        assert got[build_info()] == 1
        # Findings: the family is there (none found against an honest cluster).
        assert "# TYPE bftfs_node_findings_total counter" in exposition(node0)


@pytest.mark.slow
def test_node_restart_and_up_take_a_metrics_port(tmp_path: Path) -> None:
    """``bftfs node restart I --metrics-port 0`` serves them (it was silently ignored); a
    restart without it serves none (nothing in the configuration); ``stop`` refuses it;
    ``bftfs up --metrics-port 0`` has every node serve them for that start."""
    home = tmp_path / "nodes"
    try:
        run("up", "--dir", str(home), "--no-mount", "--map-size", "64M", "--no-durable")
        cfg = local.load_cluster(home)
        assert "metrics" not in tomllib.loads((home / "cluster.toml").read_text())
        assert local.metrics_address(cfg.node(2)) is None

        out = run("node", "restart", "2", "--dir", str(home), "--metrics-port", "0").stdout
        address = local.metrics_address(cfg.node(2))
        assert address is not None and f"metrics: http://{address}/metrics" in out
        assert scrape(address)["bftfs_node_start_time_seconds"] > 0
        assert status(home)[1]["nodes"][2]["stats"]["metrics"] == address

        refused = run("node", "stop", "2", "--dir", str(home), "--metrics-port", "0", check=False)
        assert refused.returncode == 2 and "apply to start and restart" in refused.stderr
        assert local.running_pid(cfg.node(2)) is not None  # not stopped by a refused command
        running = run("node", "start", "2", "--dir", str(home), "--metrics-port", "0", check=False)
        assert running.returncode == 1 and "not applied" in running.stderr

        run("node", "restart", "2", "--dir", str(home))
        assert local.metrics_address(cfg.node(2)) is None
        assert status(home)[1]["nodes"][2]["stats"]["metrics"] is None

        run("down", "--dir", str(home))
        out = run("up", "--dir", str(home), "--no-mount", "--metrics-port", "0").stdout
        assert "metrics: nodes on 127.0.0.1, free ports" in out
        addresses = [local.metrics_address(s) for s in cfg.nodes]
        assert all(addresses), addresses
        assert all(scrape(a)["bftfs_node_peers_reachable"] >= 0 for a in addresses if a)

        # status --watch: a report per interval; with --json one document per line.
        watched = run("status", "--dir", str(home), "--watch", "0.1", "--count", "2", "--json")
        docs = [json.loads(line) for line in watched.stdout.splitlines()]
        assert len(docs) == 2 and docs[0]["time"] < docs[1]["time"]
        assert all(d["health"] == "healthy" for d in docs)
        text = run("status", "-v", "--dir", str(home), "--watch", "0.1", "--count", "2").stdout
        assert text.count("health: HEALTHY") == 2
    finally:
        local.stop_nodes(local.load_cluster(home), kill=True)

    # init writes [metrics]: nodes from the port given, mounts just above them.
    run("init", "--dir", str(tmp_path / "other"), "--map-size", "64M", "--metrics-port", "9250")
    written = tomllib.loads((tmp_path / "other" / "cluster.toml").read_text())["metrics"]
    assert written == {"address": "127.0.0.1", "node_port": 9250, "mount_port": 9256}


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
def test_a_dead_mount_makes_status_exit_degraded_until_unmounted(tmp_path: Path) -> None:
    """Issue 36: a mount whose daemon died was listed, yet ``bftfs status`` said HEALTHY
    and exited 0."""
    home = tmp_path / "c"
    mp = tmp_path / "m"
    with ProcessCluster(home, map_size=1 << 28, durable=False) as pc:
        try:
            run("mount", str(mp), "--dir", str(home))
            assert status(home)[0] == 0
            pid = next(p for p, point in control.known_mounts(pc.config) if point == mp.resolve())
            os.kill(pid, signal.SIGKILL)
            proc.wait_gone(pid, 10)
            code, doc = status(home)
            assert (code, doc["health"]) == (1, "degraded"), doc["problems"]
            assert any(f"mount {mp}: its daemon is gone" in p for p in doc["problems"])
            text = run("status", "-v", "--dir", str(home), check=False)
            assert text.returncode == 1 and "health: DEGRADED" in text.stdout
            run("umount", str(mp), "--dir", str(home))
            assert status(home)[0] == 0
        finally:
            proc.unmount(mp)
