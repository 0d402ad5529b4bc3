"""Nodes on several machines (issue 21): six network namespaces stand for six hosts.

The cluster is made as an operator would: ``bftfs init --nodes HOST:PORT,...`` on an admin
machine, one ``bftfs bundle`` per node unpacked on its host (the configuration and that
node's private key only), each node started with the command line of
``bftfs/systemd/bftfs-node@.service``, and a mount on the root namespace from a client
bundle.  Then one host drops off the network while files are written, comes back, and
another host drops off: every file reads back byte for byte throughout.

Ports: each namespace is a fresh network stack with nothing listening, so the nodes use
one fixed port there; nothing in the root namespace is bound.
"""

from __future__ import annotations

import configparser
import json
import os
import random
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from bftfs.testing import netns
from bftfs.testing.mounts import fuse_available

REPO = Path(__file__).resolve().parent.parent
NODE_UNIT = REPO / "bftfs" / "systemd" / "bftfs-node@.service"
MOUNT_UNIT = REPO / "bftfs" / "systemd" / "mnt-bftfs.mount"
PORT = 7000
HOSTS = 6

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(not netns.available(), reason="needs root and ip netns with bridges"),
    pytest.mark.slow,
]

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def bftfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "bftfs", *args], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def node_command(home: Path, node: int) -> list[str]:
    """The unit's ExecStart for ``node`` with the bundle in ``home`` instead of
    /var/lib/bftfs, and this checkout's bftfs instead of /usr/local/bin/bftfs."""
    line = unit(NODE_UNIT)["Service"]["ExecStart"]
    line = line.replace("/var/lib/bftfs", str(home)).replace("%i", str(node))
    argv = shlex.split(line)
    assert argv[0] == "/usr/local/bin/bftfs"
    return [sys.executable, "-m", "bftfs", *argv[1:]]


def unpack(bundle: Path, into: Path) -> None:
    into.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")


@contextmanager
def nodes_on_hosts(hosts: netns.Hosts, homes: list[Path]) -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    try:
        for i, home in enumerate(homes):
            procs.append(hosts.spawn(i, node_command(home, i), home / "node.log", env=ENV))
        yield procs
    finally:
        netns.stop_all(procs)


@contextmanager
def mounted(config: Path, mnt: Path, options: str) -> Iterator[Path]:
    mnt.mkdir()
    r = bftfs("mount", "--config", str(config), "-o", options, str(mnt), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield mnt
    finally:
        bftfs("umount", str(mnt), check=False)


def rejoin_of(hosts: netns.Hosts, config: Path) -> dict[str, Any]:
    """Node 3's view of its peers, asked from host 3 (where it answers even when cut off)."""
    r = subprocess.run(
        hosts.command(
            3, [sys.executable, "-m", "bftfs", "status", "--config", str(config), "--json"]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    node = json.loads(r.stdout)["nodes"][3]
    return ((node.get("stats") or {}).get("progress") or {}).get("rejoin", {})


def write_tree(root: Path, rng: random.Random, files: int) -> dict[Path, bytes]:
    """``files`` files of seeded bytes in three directories, of 100 B, 5 kB and 150 kB in
    turn."""
    out = {}
    for k in range(files):
        d = root / f"d{k % 3}"
        d.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes((100, 5_000, 150_000)[k % 3])
        (d / f"f{k}").write_bytes(data)
        out[d / f"f{k}"] = data
    return out


def check_tree(tree: dict[Path, bytes]) -> None:
    for path, data in tree.items():
        assert path.read_bytes() == data, path


@dataclass
class Cluster:
    """Six nodes on hosts 0-5 as an operator makes them (:func:`cluster_on_hosts`)."""

    admin: Path
    homes: list[Path]
    #: The client bundle's configuration (the laptop's).
    config: Path
    procs: list[subprocess.Popen]


def cluster_on_hosts(stack: ExitStack, hosts: netns.Hosts, tmp_path: Path) -> Cluster:
    """``bftfs init --nodes`` on an admin machine, one bundle per host unpacked there (the
    configuration and that node's key, nothing else), a client bundle on a laptop, and
    the nodes started with the unit's command line and answering."""
    admin = tmp_path / "admin"
    addresses = ",".join(f"{hosts.address(i)}:{PORT}" for i in range(HOSTS))
    out = bftfs(
        "init", "--dir", str(admin), "--nodes", addresses, "--map-size", "256M", "--no-durable"
    ).stdout
    assert f"created a cluster of {HOSTS} nodes" in out
    homes = []
    for i in range(HOSTS):
        bundle = tmp_path / f"node{i}.tar.gz"
        bftfs("bundle", "--dir", str(admin), "--node", str(i), "-o", str(bundle))
        assert bundle.stat().st_mode & 0o077 == 0
        home = tmp_path / f"host{i}" / "var-lib-bftfs"
        unpack(bundle, home)
        keys = sorted(p.relative_to(home) for p in home.rglob("key"))
        assert keys == [Path(f"node{i}/private/key")]
        homes.append(home)
    bftfs("bundle", "--dir", str(admin), "--client", "client0", "-o", str(tmp_path / "c.tgz"))
    unpack(tmp_path / "c.tgz", tmp_path / "laptop")
    config = tmp_path / "laptop" / "cluster.toml"
    procs = stack.enter_context(nodes_on_hosts(hosts, homes))
    wait_for(
        "every node to answer",
        lambda: bftfs("status", "--config", str(config), check=False).returncode == 0,
    )
    return Cluster(admin, homes, config, procs)


def test_nodes_on_six_hosts_serve_a_mount_through_a_host_outage(tmp_path: Path) -> None:
    rng = random.Random(21)
    with ExitStack() as stack:
        hosts = stack.enter_context(netns.Hosts(HOSTS, seed=21))
        config = cluster_on_hosts(stack, hosts, tmp_path).config
        # Mounted with the mount unit's options (plus a short patience for the outage).
        options = unit(MOUNT_UNIT)["Mount"]["Options"] + ",timeo=30"
        with mounted(config, tmp_path / "m", options) as mnt:
            before = write_tree(mnt / "before", rng, 6)
            hosts.cut(3)
            during = write_tree(mnt / "during", rng, 6)
            status = bftfs("status", "--config", str(config), check=False)
            assert status.returncode == 1, status.stdout  # degraded: node 3 does not answer
            # On host 3 itself, node 3 answers and knows it is cut off from its peers.
            wait_for(
                "node 3 to see itself cut off",
                lambda: rejoin_of(hosts, config)["state"] == "cut off",
            )

        hosts.restore(3)
        wait_for(
            "node 3 to answer again",
            lambda: bftfs("status", "--config", str(config), check=False).returncode == 0,
        )
        # Back on the network, node 3 runs its catch-ups again (node/rejoin.py).
        wait_for("node 3 to rejoin", lambda: rejoin_of(hosts, config).get("rejoins", 0) >= 1)
        hosts.cut(0)
        # A fresh mount (nothing in the kernel's cache) reads everything from the nodes
        # that answer now, node 3 among them.
        with mounted(config, tmp_path / "m2", options) as mnt2:
            for tree in (before, during):
                check_tree({mnt2 / p.relative_to(tmp_path / "m"): d for p, d in tree.items()})
            after = write_tree(mnt2 / "after", rng, 3)
            check_tree(after)
        hosts.restore(0)


def test_node_3_replaced_by_a_new_host_with_a_new_key_while_a_mount_runs(tmp_path: Path) -> None:
    """Issue 35 on machines: seven network namespaces, six nodes on hosts 0-5, host 6 a new
    machine.  ``bftfs node replace 3 --address HOST6:PORT`` on the admin machine makes a
    new key and issues the view; the newcomer's bundle is unpacked on host 6 and its node
    started; host 3's node is switched off.  The running mount follows to the new address,
    the newcomer catches up, what was written before and after reads back, and a fresh
    mount from the client bundle of view 1 (naming host 3 and the old key) learns the new
    view from the others and reads everything with host 0 off the network too, so that
    the newcomer is part of every quorum."""
    from bftfs import config as cfgmod
    from bftfs.testing.processes import wait_caught_up

    rng = random.Random(35)
    with ExitStack() as stack:
        hosts = stack.enter_context(netns.Hosts(HOSTS + 1, seed=35))
        cluster = cluster_on_hosts(stack, hosts, tmp_path)
        admin, homes, config, old = cluster.admin, cluster.homes, cluster.config, cluster.procs
        options = unit(MOUNT_UNIT)["Mount"]["Options"] + ",timeo=30"
        with mounted(config, tmp_path / "m", options) as mnt:
            before = write_tree(mnt / "before", rng, 6)
            new_address = f"{hosts.address(HOSTS)}:{PORT}"
            out = bftfs("node", "replace", "3", "--address", new_address, "--dir", str(admin))
            assert "view 2 acknowledged" in out.stdout, out.stdout
            # The new machine gets its bundle: the configuration of view 2 and its new key.
            bundle = tmp_path / "node3-new.tar.gz"
            bftfs("bundle", "--dir", str(admin), "--node", "3", "-o", str(bundle))
            home = tmp_path / f"host{HOSTS}" / "var-lib-bftfs"
            unpack(bundle, home)
            (key,) = list(home.rglob("key"))
            assert key.read_bytes() != next(homes[3].rglob("key")).read_bytes()
            newcomer = hosts.spawn(HOSTS, node_command(home, 3), home / "node.log", env=ENV)
            stack.callback(newcomer.wait, 20)
            stack.callback(newcomer.terminate)
            old[3].terminate()  # the old machine is switched off
            old[3].wait(timeout=20)
            done = wait_caught_up(cfgmod.load(admin / "cluster.toml"), 3, seconds=180.0)
            assert not done["qu.catchup"].get("failed"), done
            after = write_tree(mnt / "after", rng, 3)
            check_tree(before)
            check_tree(after)
            # No fsync: the unmount sends what the mount held back (its leases' write-back)
            # and `bftfs umount` returns once the daemon has.
        # The laptop's bundle is of view 1: host 3's old address and key.  With host 0 off
        # the network too, a quorum needs the newcomer on host 6: the mount reaches it.
        hosts.cut(0)
        try:
            with mounted(config, tmp_path / "m2", options) as mnt2:
                for tree in (before, after):
                    check_tree({mnt2 / p.relative_to(tmp_path / "m"): d for p, d in tree.items()})
        finally:
            hosts.restore(0)
