"""Per-view keys and their forgetting with real node processes (issue 35; seed 000's
forgetting protocol; docs/membership.md, "Per-view keys"): once a node took view 2, nothing
on its disk proves view 1 any more, so the nodes of view 1 replaying it, all six together,
get no session from a client that never heard of view 2; a client of view 1 that meets the
nodes of view 2 takes their view and works."""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from t4_views import OPTIONS, bftfs

from bftfs import bundle, local
from bftfs import config as cfgmod
from bftfs.config import ClusterConfig
from bftfs.connect import client_identity, open_client
from bftfs.crypto import AdminKey, Identity, KeyRing, derive
from bftfs.fs.files import Attr
from bftfs.fs.session import open_session
from bftfs.fsobjects.limits import ROOT
from bftfs.ids import NodeId
from bftfs.membership import admin
from bftfs.membership.client import ClientViews, ViewUnproven
from bftfs.membership.configview import view_of, write_signed
from bftfs.membership.view import sign
from bftfs.membership.viewkeys import ADMIN_CHAINS, NODE_CHAIN, Chain, load_node_chain
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.server import Server
from bftfs.testing.mounts import Mount, fsync_paths, fuse_available
from bftfs.testing.processes import ProcessCluster


def client_machine(cfg: ClusterConfig, name: str, where: Path) -> ClusterConfig:
    """Client ``name``'s bundle, made now, unpacked at ``where`` (its own machine)."""
    out = where.with_suffix(".tar.gz")
    bundle.write(out, bundle.members(cfg, client=name))
    with tarfile.open(out) as tar:
        tar.extractall(where, filter="data")
    return cfgmod.load(where / "cluster.toml")


async def ping_as_client(
    cfg: ClusterConfig, name: str, only: list[int] | None = None
) -> tuple[dict[int, Any], int]:
    """``ping`` to every node (or those ``only`` names) as client ``name`` with a view
    tracker (what a mount runs): each reply or exception, and the view the client holds
    afterwards."""
    views = ClientViews(cfg)
    ring = KeyRing(client_identity(cfg, name), cfg.node_public_keys())
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    out: dict[int, Any] = {}
    async with open_endpoint(ring, addresses, timeout=5.0, resend_after=0.2) as ep:
        views.attach(ep)

        async def one(node: NodeId) -> None:
            try:
                out[node] = await ep.call(node, "ping", b"", timeout=3.0)
            except (TransportError, RemoteError) as e:
                out[node] = e

        async with trio.open_nursery() as nursery:
            for node in cfg.node_ids:
                if node in (only or [node]):
                    nursery.start_soon(one, node)
    return out, views.number


async def look_up_f(cfg: ClusterConfig) -> object:
    """``/f`` looked up in the file system as ``cfg``'s client0 sees it: its attributes,
    the error, or a note that nothing came within 10 s."""
    with trio.move_on_after(10):
        try:
            async with open_session(cfg, "client0") as s:
                return await s.fs.lookup(ROOT, b"f")
        except Exception as e:  # ClusterUnavailable, or a group of them
            return e
    return "nothing within 10 s"


def files_holding(root: Path, secrets: list[bytes]) -> list[str]:
    """The files under ``root`` holding any of ``secrets``, raw or in hex."""
    needles = [s for secret in secrets for s in (secret, secret.hex().encode())]
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]


async def answering(cfg: ClusterConfig, only: list[int] | None = None) -> None:
    """Wait (at most 60 s) until every node answers a bare endpoint: one that checks no
    view proof (``local.wait_ready`` asks through a client that does)."""
    me = Identity.load(cfg.client("client1").id, cfg.client_key_path("client1"))
    addresses = {s.id: (s.host, s.port) for s in cfg.nodes}
    async with open_endpoint(KeyRing(me, cfg.node_public_keys()), addresses, timeout=2.0) as ep:
        with trio.fail_after(60):
            for node in only or cfg.node_ids:
                while True:
                    try:
                        await ep.call(node, "ping", b"")
                        break
                    except TransportError:
                        await trio.sleep(0.2)


def old_machines(
    cfg: ClusterConfig, view1: bytes, where: Path, only: list[int] | None = None
) -> ClusterConfig:
    """Copies of every node's data directory (or those ``only`` names) as it is now, each
    run as a node holding view 1 (its view files put back to view 1: what the machines of an
    ended view, all Byzantine, can do with everything they kept), at ``cfg``'s addresses."""
    nodes = []
    for spec in cfg.nodes:
        if spec.id not in (only or [spec.id]):
            nodes.append(spec)
            continue
        copy = where / f"node{spec.id}"
        shutil.copytree(spec.data_dir, copy, ignore=shutil.ignore_patterns("*.pid", "*.sock"))
        (copy / "view.signed").write_bytes(view1)
        nodes.append(replace(spec, data_dir=copy))
    moved = replace(cfg, home=where, nodes=tuple(nodes))
    shutil.copytree(cfg.home / "clients", where / "clients")  # (to ask them their status)
    cfgmod.save(moved, where / "cluster.toml")
    (where / "view.signed").write_bytes(view1)
    return cfgmod.load(where / "cluster.toml")


@pytest.mark.slow  # over 20 s: the slow suite (make test stays under 10 minutes)
def test_the_nodes_of_an_ended_view_cannot_prove_it_to_a_client_that_knows_no_newer(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        view1 = pc.config.view_path.read_bytes()
        # Client 0's machine, set up in view 1; it will hear of nothing newer.
        laptop = client_machine(pc.config, "client0", tmp_path / "laptop")
        chains1: dict[int, Chain] = {}
        for spec in pc.config.nodes:
            chain = load_node_chain(spec.data_dir)
            assert chain is not None and chain.number == 1
            chains1[spec.id] = chain
        replies, held = trio.run(ping_as_client, laptop, "client0")
        assert held == 1 and all(isinstance(r, dict) for r in replies.values()), replies
        if fuse_available():
            with Mount(laptop, tmp_path / "m1", client="client0") as m:
                (m.mountpoint / "f").write_bytes(b"written in view 1")
                fsync_paths(m.mountpoint / "f")

        got = bftfs(home, "client", "add", "frank", "-o", str(tmp_path / "frank.tar.gz"))
        assert "view 2 acknowledged by 6 of 6" in got.stdout, got.stdout
        # Each node moved its chain to view 2 on disk: view 1's chain secret and the view-1
        # private key it derives are in no file of its data directory any more.
        for spec in pc.config.nodes:
            chain = load_node_chain(spec.data_dir)
            assert chain is not None and chain.number == 2
            old = chains1[spec.id]
            seed1 = derive(old.secret, b"bftfs-viewkey", (1).to_bytes(8, "big"))
            assert files_holding(spec.data_dir, [old.secret, seed1]) == [], spec.id

        # A client of view 1 meeting the nodes of view 2 takes their view and is served.
        replies, held = trio.run(ping_as_client, laptop, "client0")
        assert held == 2 and all(isinstance(r, dict) for r in replies.values()), replies

        # The machines of view 1, every one of them, replay view 1 from all they kept.
        local.stop_nodes(pc.config)
        old = old_machines(pc.config, view1, tmp_path / "decommissioned")
    try:
        local.start_nodes(old)
        trio.run(answering, old)
        replies, held = trio.run(ping_as_client, laptop, "client0")
        # No session: no request of the client reaches them, so no stale state either.
        assert held == 1
        assert all(
            isinstance(r, TransportError) and "does not prove it holds view 1" in str(r)
            for r in replies.values()
        ), replies
        # The file system of view 1, opened on them, finds nothing, not even the root.
        found = trio.run(look_up_f, laptop)
        assert not isinstance(found, Attr), found
        # The best an impostor can do with node 0's disk: its long-term key and the chain
        # at view 2, signing for view 1 with the only view key it can compute.
        local.stop_node(old, 0)
        replies = trio.run(impostor_of_node_0, old, laptop)
        assert isinstance(replies[0], ViewUnproven), replies  # (a call resends: not here)
    finally:
        local.stop_nodes(old)


async def impostor_of_node_0(old: ClusterConfig, laptop: ClusterConfig) -> dict[int, Any]:
    spec = old.node(0)
    me = Identity.load(NodeId(0), spec.key_path)
    chain = load_node_chain(spec.data_dir)
    assert chain is not None and chain.number == 2
    key = chain.signing_key()
    fake: Server[None] = Server(
        KeyRing(me, old.public_keys()), context=lambda _sender: None, name="impostor"
    )
    fake.view_number = 1
    fake.prove = lambda number, message: bytes(key.sign(message).signature)

    async def ping(ctx: None, payload: Any) -> Any:
        return {"node": 0, "stale": True}

    fake.register("ping", ping)
    listeners = await trio.open_tcp_listeners(spec.port, host=spec.host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, fake.serve, listeners)
        async with open_client(laptop, "client0", timeout=3.0) as ep:
            try:  # (the handshake itself, without the resends of a call)
                out: dict[int, Any] = {0: await ep.pool.get(NodeId(0))}
            except TransportError as e:
                out = {0: e}
        nursery.cancel_scope.cancel()
    return out


@pytest.mark.slow
def test_a_replaced_machine_forgets_the_view_it_was_replaced_in_and_cannot_replay_it(
    tmp_path: Path,
) -> None:
    """Node 5 is replaced by a new machine; the old machine, still running, is sent the view
    by the nodes that took it and forgets its key of view 1.  Later, replaying view 1 from
    all it kept, it gets no session from a client that reaches only it."""
    home = tmp_path / "c"
    with ProcessCluster(home, **OPTIONS) as pc:
        view1_cfg = pc.config
        view1 = view1_cfg.view_path.read_bytes()
        laptop = client_machine(view1_cfg, "client0", tmp_path / "laptop")
        old_dir = view1_cfg.node(5).data_dir
        chain1 = load_node_chain(old_dir)
        assert chain1 is not None and chain1.number == 1
        (port,) = local.cluster_ports(tmp_path / "newcomer", 1)
        got = bftfs(home, "node", "replace", "5", "--address", f"127.0.0.1:{port}")
        assert "view 2 acknowledged by 5 of 6" in got.stdout, got.stdout
        trio.run(chain_reaches, old_dir, 2)  # the old machine took view 2 from its peers
        assert files_holding(old_dir, [chain1.secret]) == []
        assert (old_dir / "view.signed").read_bytes() == pc.config.view_path.read_bytes()
        local.stop_node(view1_cfg, 5)  # (the old machine's process, started from view 1)
        old = old_machines(view1_cfg, view1, tmp_path / "decommissioned", only=[5])
        try:
            local.start_node(old, 5)
            trio.run(answering, old, [5])
            replies, held = trio.run(ping_as_client, laptop, "client0", [5])
            assert held == 1
            assert isinstance(replies[5], TransportError), replies
            assert "node 5 does not prove it holds view 1" in str(replies[5])
        finally:
            local.stop_node(old, 5)


async def chain_reaches(data_dir: Path, number: int) -> None:
    """Wait (at most 30 s) until the chain in ``data_dir`` is at view ``number``."""
    with trio.fail_after(30):
        while True:
            chain = load_node_chain(data_dir)
            if chain is not None and chain.number >= number:
                return
            await trio.sleep(0.1)


def made_before_per_view_keys(cfg: ClusterConfig) -> None:
    """Make ``cfg``'s cluster (its nodes not started yet) what one made before per-view keys
    is: view 1 without node keys (format 1), no chain anywhere."""
    (cfg.admin_key_path.parent / ADMIN_CHAINS).unlink()
    for spec in cfg.nodes:
        (spec.data_dir / NODE_CHAIN).unlink()
    write_signed(cfg.view_path, sign(view_of(cfg, 1), AdminKey.load(cfg.admin_key_path)))


def test_a_cluster_made_before_per_view_keys_works_as_before_and_gets_them_online(
    tmp_path: Path,
) -> None:
    home = tmp_path / "c"
    pc = ProcessCluster(home, **OPTIONS)
    made_before_per_view_keys(pc.config)
    with pc:
        pids = [pc.pid(i) for i in pc.config.node_ids]
        laptop = client_machine(pc.config, "client0", tmp_path / "laptop")
        replies, held = trio.run(ping_as_client, laptop, "client0")
        assert held == 1 and all(isinstance(r, dict) for r in replies.values()), replies
        got = bftfs(home, "view", "keys")
        assert "view 2: every node has a key for this view only" in got.stdout, got.stdout
        assert "view 2 acknowledged by 6 of 6" in got.stdout, got.stdout
        cfg = cfgmod.load(home / "cluster.toml")
        view, _ = admin.current(cfg)
        assert view.has_view_keys
        for spec, node in zip(cfg.nodes, view.nodes, strict=True):
            chain = load_node_chain(spec.data_dir)
            assert chain is not None and chain.number == 2 and chain.public() == node.view_key
        # The client of view 1 (no keys) meets nodes of view 2: it takes the view, and from
        # then on each node proves it holds view 2 (running nodes loaded their chains).
        replies, held = trio.run(ping_as_client, laptop, "client0")
        assert held == 2 and all(isinstance(r, dict) for r in replies.values()), replies
        again = bftfs(home, "view", "keys")
        assert "view 2 has per-view node keys already: pushing it again" in again.stdout
        assert [pc.pid(i) for i in pc.config.node_ids] == pids  # no node restarted
