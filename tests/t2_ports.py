"""A local cluster's ports (issue 31, item 13): chosen outside the ephemeral range, so no
outgoing connection can hold one when the node starts, free and unclaimed by another
cluster at ``init``; and a node that cannot bind names the port and its holder."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from bftfs import local


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A port-claim registry of this test's own (the real one is shared by every run)."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_init_ports_are_outside_the_ephemeral_range_and_free(tmp_path: Path) -> None:
    lo, hi = local.ephemeral_range()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        assert (lo, hi) == tuple(int(x) for x in f.read().split())
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    ports = [s.port for s in cfg.nodes]
    assert len(set(ports)) == len(ports) == 6
    assert all(1024 <= p < 65536 and not lo <= p <= hi for p in ports), (ports, lo, hi)
    for p in ports:  # free: a node can bind each
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_or_claimed_is_skipped(tmp_path: Path, registry: Path) -> None:
    """The search starts where the cluster directory says; a port some process holds, and
    one another cluster claimed (the same directory again, within the grace period), are
    passed over."""
    home = tmp_path / "c"
    first = local.cluster_ports(home, 6)
    again = local.cluster_ports(home, 6)  # same start, every port of `first` claimed
    assert not set(first) & set(again)
    for claim in registry.glob("bftfs-ports-*/[0-9]*"):
        claim.unlink()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first[0]))
        holder.listen()
        third = local.cluster_ports(home, 6)
    assert first[0] not in third and third[0] == first[1]


def test_clusters_created_at_once_get_disjoint_ports(tmp_path: Path, registry: Path) -> None:
    """Concurrent test runs create clusters at the same moment: never the same port, even
    from directories whose searches start at the same place."""
    got: dict[int, list[int]] = {}

    def create(i: int) -> None:
        got[i] = local.cluster_ports(tmp_path / "same", 6)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [p for ports in got.values() for p in ports]
    assert len(got) == 8 and len(every) == len(set(every)) == 48


def test_a_node_whose_port_is_held_names_the_port_and_the_holder(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    port = cfg.node(2).port
    code = (
        "import socket, sys\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        r = subprocess.run(
            [sys.executable, "-m", "bftfs", "node", "--config", str(cfg.home / "cluster.toml")]
            + ["--id", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.communicate(timeout=10)  # closes its stdin: it exits
    assert r.returncode == 4, r.stderr
    assert f"node 2: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert f"port {port} is held by pid {holder.pid} (" in r.stderr
    assert f"{sys.executable} -c import socket" in r.stderr and "Traceback" not in r.stderr


def test_up_warns_of_an_old_clusters_ports_in_the_ephemeral_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bftfs.cli.cluster import _warn_ephemeral_ports
    from bftfs.config import ClusterConfig, with_ports

    lo, _hi = local.ephemeral_range()
    cfg = ClusterConfig.for_test()
    _warn_ephemeral_ports(with_ports(cfg, {i: lo - 10 - i for i in cfg.node_ids}))
    assert capsys.readouterr().err == ""
    _warn_ephemeral_ports(with_ports(cfg, {i: lo + i for i in cfg.node_ids}))
    assert (
        "node(s) 0, 1, 2, 3, 4, 5 listen on ports in the ephemeral range" in capsys.readouterr().err
    )
