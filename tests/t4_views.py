"""Views with real node processes (issue 35; docs/membership.md): clients added, revoked and
rekeyed while the nodes run; forged, replayed and Byzantine views refused; a node that was
down learns the view from its peers.  No node is restarted for a change."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import bundle, local
from bftfs import config as cfgmod
from bftfs.config import ClusterConfig
from bftfs.connect import IdentityRefused, check_identity, open_client
from bftfs.crypto import AdminKey, Identity, KeyRing
from bftfs.ids import NodeId
from bftfs.membership import admin
from bftfs.membership.view import sign
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import Server
from bftfs.net.session import SessionRefused
from bftfs.testing.clis import bftfs_cli
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

OPTIONS: dict[str, Any] = {"clients": 2, "durable": False, "map_size": 1 << 28}


def bftfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bftfs_cli(home, *args, timeout=120.0)


def views_held(cfg: ClusterConfig, nodes: list[int] | None = None) -> dict[int, int]:
    """Each answering node's view number (``stats``; what ``bftfs status`` shows), asked
    as client0 through a bare endpoint: no view tracker that would tell nodes behind."""
    me = Identity.load(cfg.client("client0").id, cfg.client_key_path("client0"))
    replies = trio.run(ask_each, cfg, ring_of(cfg, me), "stats", None, nodes)
    return {n: r["view"] for n, r in replies.items() if isinstance(r, dict)}


def ring_of(cfg: ClusterConfig, ident: Identity) -> KeyRing:
    return KeyRing(ident, cfg.node_public_keys())


async def ask_each(
    cfg: ClusterConfig, ring: KeyRing, kind: str, payload: Any, only: list[int] | None = None
) -> dict[int, Any]:
    """``kind`` to every node (or those ``only`` names) as ``ring``'s principal: each
    reply, or the exception."""
    out: dict[int, Any] = {}
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    async with open_endpoint(ring, addresses, timeout=10.0, resend_after=0.2) as ep:

        async def one(node: NodeId) -> None:
            try:
                out[node] = await ep.call(node, kind, payload)
            except (RemoteError, TransportError) as e:  # SessionRefused among them
                out[node] = e

        async with trio.open_nursery() as nursery:
            for node in cfg.node_ids:
                if ring.key(node) is not None and node != ring.me.pid and node in (only or [node]):
                    nursery.start_soon(one, node)
    return out


def codes(replies: dict[int, Any]) -> dict[int, Any]:
    """Each node's refusal code (or its reply, when it did not refuse)."""
    return {n: getattr(r, "code", r) for n, r in replies.items()}


def authors(home: Path, path: str) -> list[str]:
    rows = json.loads(bftfs(home, "log", path, "--json").stdout)["versions"]
    return [r["client"] for r in rows]


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
@pytest.mark.slow
def test_a_client_added_online_mounts_and_a_revoked_one_is_refused_by_every_node(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        pids = [pc.pid(i) for i in pc.config.node_ids]
        out = bftfs(home, "client", "add", "bob", "-o", str(tmp_path / "bob.tar.gz"))
        assert "view 2 acknowledged by 6 of 6" in out.stdout
        cfg = cfgmod.load(home / "cluster.toml")
        with (
            Mount(cfg, tmp_path / "mb", client="bob") as mb,
            Mount(cfg, tmp_path / "m0", client="client0") as m0,
        ):
            (mb.mountpoint / "by-bob").write_bytes(b"written by a client added online")
            assert (m0.mountpoint / "by-bob").read_bytes() == b"written by a client added online"
        assert set(authors(home, "fs:/by-bob")) == {"bob"}
        bob = Identity.load(cfg.client("bob").id, cfg.client_key_path("bob"))

        async def revoke_while_bob_is_connected() -> dict[int, Any]:
            addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
            async with open_endpoint(ring_of(cfg, bob), addresses, timeout=10.0) as ep:
                for node in cfg.node_ids:  # a session open at every node
                    assert (await ep.call(node, "ping", b""))["node"] == node
                await trio.to_thread.run_sync(bftfs, home, "client", "revoke", "bob")
                after: dict[int, Any] = {}
                for node in cfg.node_ids:
                    with pytest.raises(SessionRefused) as refused:
                        await ep.call(node, "ping", b"")
                    after[node] = str(refused.value)
                return after

        refusals = trio.run(revoke_while_bob_is_connected)
        assert all("revoked in view 3" in why for why in refusals.values()), refusals
        # Every node ended the session bob had open with it, and holds view 3.
        statuses = trio.run(local.query_status, pc.config)
        assert [s.stats["requests"].get("sessions_ended", 0) >= 1 for s in statuses] == [True] * 6
        assert views_held(pc.config) == dict.fromkeys(range(6), 3)
        # A mount (or any client) of the revoked key is told why, at once.
        bob_host = tmp_path / "bob-host"
        with tarfile.open(tmp_path / "bob.tar.gz") as tar:
            tar.extractall(bob_host, filter="data")
        bob_cfg = cfgmod.load(bob_host / "cluster.toml")
        with pytest.raises(IdentityRefused, match="revoked in view 3"):
            trio.run(check_identity, bob_cfg, ring_of(bob_cfg, bob))
        # A node restarted since still holds view 3 and still tells bob why.
        pc.stop(0)
        pc.start(0)
        assert views_held(pc.config, [0]) == {0: 3}
        after_restart = trio.run(ask_each, cfg, ring_of(cfg, bob), "ping", b"", [0])
        assert "revoked (not a client of view 3)" in str(after_restart[0])
        assert isinstance(after_restart[0], SessionRefused)
        # Another client keeps working; what bob wrote is still bob's.
        cfg = cfgmod.load(home / "cluster.toml")
        with Mount(cfg, tmp_path / "m0", client="client0") as m0:
            (m0.mountpoint / "after").write_bytes(b"after the revocation")
            assert (m0.mountpoint / "by-bob").read_bytes() == b"written by a client added online"
        assert set(authors(home, "fs:/by-bob")) == {"bob (removed)"}
        # No node restarted for a change (node 0 only when the test restarted it).
        assert [pc.pid(i) for i in pc.config.node_ids][1:] == pids[1:]


@pytest.mark.slow
def test_a_rotated_key_replaces_the_old_one_online(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        old = Identity.load(pc.config.client("client1").id, pc.config.client_key_path("client1"))
        before = trio.run(ask_each, pc.config, ring_of(pc.config, old), "ping", b"")
        assert sorted(n for n, r in before.items() if isinstance(r, dict)) == list(range(6))
        bftfs(home, "client", "rotate", "client1", "-o", str(tmp_path / "c1.tar.gz"))
        cfg = cfgmod.load(home / "cluster.toml")
        new = Identity.load(cfg.client("client1").id, cfg.client_key_path("client1"))
        assert new.public != old.public
        replies = trio.run(ask_each, cfg, ring_of(cfg, new), "ping", b"")
        assert sorted(n for n, r in replies.items() if isinstance(r, dict)) == list(range(6))
        refused = trio.run(ask_each, cfg, ring_of(cfg, old), "ping", b"")
        assert all(
            isinstance(r, SessionRefused) and "key was replaced in view 2" in str(r)
            for r in refused.values()
        ), refused
        # A revoke killed after its view was written, before any node heard of it
        # (--offline stops there), run again: the same view is pushed, not a second one.
        bftfs(home, "client", "revoke", "client1", "--offline")
        assert views_held(cfg) == dict.fromkeys(range(6), 2)
        again = bftfs(home, "client", "revoke", "client1")
        assert "revoked in view 3 already: pushing it again" in again.stdout
        assert "view 3 acknowledged by 6 of 6" in again.stdout
        assert views_held(cfg) == dict.fromkeys(range(6), 3)
        assert bftfs(home, "view", "push").stdout.count("acknowledged by 6 of 6") == 1
        assert json.loads(bftfs(home, "view", "--json").stdout)["revoked"] == [
            {"id": 1, "name": "client1"}
        ]


def test_forged_replayed_and_byzantine_views_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        v1 = pc.config.view_path.read_bytes()
        bftfs(home, "client", "add", "carol", "-o", str(tmp_path / "carol.tar.gz"))
        cfg = cfgmod.load(home / "cluster.toml")
        v2_view, _ = admin.current(cfg)
        me = Identity.load(cfg.client("client0").id, cfg.client_key_path("client0"))
        client0 = ring_of(cfg, me)
        # A view signed by another key, numbered far ahead, naming an intruder.
        intruder = admin.with_client(v2_view, "intruder", b"\x07" * 32, 9)
        forged = sign(replace(intruder, number=50), AdminKey.generate())
        replies = trio.run(ask_each, cfg, client0, "view.install", forged)
        assert codes(replies) == dict.fromkeys(range(6), "bad_view")
        # The administrator's own view 1, replayed.
        replies = trio.run(ask_each, cfg, client0, "view.install", v1)
        assert codes(replies) == dict.fromkeys(range(6), "stale_view")
        # Junk a peer might send: refused, never a crash.
        for junk in (None, 7, "x", b"", b"\x93\x01\x02", [b"a"] * 4):
            replies = trio.run(ask_each, cfg, client0, "view.install", junk)
            assert codes(replies) == dict.fromkeys(range(6), "bad_view")
        # Node 5 turns Byzantine: it pushes the forged and the old view to the others...
        node5 = ring_of(cfg, Identity.load(NodeId(5), cfg.node(5).key_path))
        for blob, code in ((forged, "bad_view"), (v1, "stale_view")):
            replies = trio.run(ask_each, cfg, node5, "view.install", blob)
            assert codes(replies) == dict.fromkeys(range(5), code)
        # ... and, in place of the real node 5, claims view 99 in every handshake and hands
        # out the forged view to whoever fetches it.
        pc.stop(5)

        async def impostor() -> int:
            fake: Server[None] = Server(node5, context=lambda _sender: None, name="impostor")
            fake.view_number = 99
            asked = trio.Event()

            async def give_forged(ctx: None, payload: Any) -> Any:
                asked.set()
                return forged

            fake.register("view.get", give_forged)
            spec = cfg.node(5)
            listeners = await trio.open_tcp_listeners(spec.port, host=spec.host)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, fake.serve, listeners)
                with trio.fail_after(30):  # the nodes' heartbeats reach node 5 every 2 s
                    await asked.wait()
                    # Serve on until the asker has judged the answer (refusing it counts
                    # as a failed fetch), so that the reply is not cut off in flight.
                    while True:
                        if await fetches_failed() >= 1:
                            break
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
            return fake.stats["req.view.get"]

        async def fetches_failed() -> int:
            statuses = await local.query_status(cfg)
            return sum(s.stats["requests"].get("view_fetch_failed", 0) for s in statuses if s.up)

        assert trio.run(impostor) >= 1
        assert views_held(cfg, list(range(5))) == dict.fromkeys(range(5), 2)


def test_a_node_down_during_the_change_learns_the_view_from_its_peers(tmp_path: Path) -> None:
    """Node 4 runs from its own bundle (as on its own machine), made at view 1; it is down
    while client dave is added (a quorum of five acknowledges), and takes view 2 from a
    peer when it comes back: dave is then admitted by it too."""
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        machine = tmp_path / "machine4"
        out = tmp_path / "node4.tar.gz"
        bundle.write(out, bundle.members(pc.config, node=4))
        with tarfile.open(out) as tar:
            tar.extractall(machine, filter="data")
        mine = cfgmod.load(machine / "cluster.toml")
        pc.stop(4)
        got = bftfs(home, "client", "add", "dave", "-o", str(tmp_path / "dave.tar.gz"))
        assert "view 2 acknowledged by 5 of 6" in got.stdout, got.stdout
        cfg = cfgmod.load(home / "cluster.toml")
        # Asked through a bare endpoint (no view tracker): no client tells node 4 the view.
        me = ring_of(cfg, Identity.load(cfg.client("client0").id, cfg.client_key_path("client0")))
        try:
            local.start_node(mine, 4)
            trio.run(_wait_view, cfg, me, 4, 2)  # learnt at its first handshake with a peer
            dave = Identity.load(cfg.client("dave").id, cfg.client_key_path("dave"))
            replies = trio.run(ask_each, cfg, ring_of(cfg, dave), "ping", b"")
            assert replies[4]["node"] == 4
            assert (machine / "node4" / "view.signed").read_bytes() == cfg.view_path.read_bytes()
        finally:
            local.stop_node(mine, 4)


async def _wait_view(cfg: ClusterConfig, ring: KeyRing, node: NodeId, number: int) -> None:
    """Poll ``node``'s view (its ``stats``) until it is ``number``, for at most 30 s."""
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    async with open_endpoint(ring, addresses, timeout=2.0, resend_after=0.2) as ep:
        with trio.fail_after(30):
            while True:
                with contextlib.suppress(TransportError):
                    if (await ep.call(node, "stats", None))["view"] == number:
                        return
                await trio.sleep(0.2)


def test_nodes_that_missed_a_view_learn_it_from_a_client_that_holds_it(tmp_path: Path) -> None:
    """The view is issued without a push (as if the administrator's machine lost the network
    right after writing it): no node has it.  A client started from the new configuration
    meets nodes behind it at its handshakes and hands them its view."""
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS):
        bftfs(home, "client", "add", "erin", "--offline", "-o", str(tmp_path / "erin.tar.gz"))
        cfg = cfgmod.load(home / "cluster.toml")
        assert views_held(cfg) == dict.fromkeys(range(6), 1)

        async def as_a_client_of_view_2() -> None:
            async with open_client(cfg, "client0", timeout=5.0) as ep:
                for node in cfg.node_ids:  # a handshake with every node
                    await ep.call(node, "ping", b"")
                me = Identity.load(cfg.client("client0").id, cfg.client_key_path("client0"))
                for node in cfg.node_ids:
                    await _wait_view(cfg, ring_of(cfg, me), node, 2)

        trio.run(as_a_client_of_view_2)
        assert views_held(cfg) == dict.fromkeys(range(6), 2)
        cmd = [
            sys.executable,
            "-m",
            "bftfs",
            "status",
            "-v",
            "--config",
            str(home / "cluster.toml"),
        ]
        status = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert "view 2 on every node that is up" in status.stdout, status.stdout
        erin = Identity.load(cfg.client("erin").id, cfg.client_key_path("erin"))
        replies = trio.run(ask_each, cfg, ring_of(cfg, erin), "ping", b"")
        assert sorted(n for n, r in replies.items() if isinstance(r, dict)) == list(range(6))


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")
@pytest.mark.slow
def test_a_revoked_clients_mount_answers_eacces_and_no_node_is_blamed(tmp_path: Path) -> None:
    """Issue 60 item 17: with a revoked client's mount still up, ``bftfs status`` said
    DEGRADED, ``node N caught misbehaving by the mounts (refused 13)`` for all six nodes.
    A node refusing a revoked key is correct: the mount, refused by ``b + 1`` nodes as
    revoked, says so in its status, answers EACCES, and no node is blamed."""
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        cfg = pc.config
        with Mount(cfg, tmp_path / "m1", client="client1", options="timeo=3") as m1:
            (m1.mountpoint / "before").write_bytes(b"written before the revocation")
            out = bftfs(home, "client", "revoke", "client1")
            assert "acknowledged by 6 of 6" in out.stdout, out.stdout
            deadline = time.monotonic() + 60.0
            answers: list[str] = []
            for k in itertools.count():  # new names each time: no kernel cache answers
                try:
                    os.stat(m1.mountpoint / f"probe{k}")
                    answers.append("found")
                except PermissionError:
                    break
                except OSError as e:  # EIO or ENOENT before it knows
                    answers.append(errno.errorcode.get(e.errno or 0, str(e.errno)))
                assert time.monotonic() < deadline, f"never EACCES: {answers}"
            with pytest.raises(PermissionError):
                (m1.mountpoint / "after").write_bytes(b"refused")
            with pytest.raises(PermissionError):
                os.listdir(m1.mountpoint)

            def published() -> dict[str, Any]:
                doc = json.loads(bftfs(home, "status", "--json").stdout)
                assert isinstance(doc, dict)
                return doc

            doc = published()
            while not any(m.get("revoked_in") for m in doc["mounts"]):
                assert time.monotonic() < deadline, doc["mounts"]
                time.sleep(0.5)  # the mount publishes its status every 2 s
                doc = published()
        assert [m["revoked_in"] for m in doc["mounts"]] == [2]
        assert not [p for p in doc["problems"] if "misbehaving" in p], doc["problems"]
        assert any("client client1 revoked in view 2" in p for p in doc["problems"])
        assert doc["health"] == "healthy", doc["problems"]
