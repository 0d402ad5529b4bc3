"""Pushes: a node's messages to a connected principal, unasked (issue 33, lease recalls).

Real nodes of an in-process cluster on loopback TCP, real endpoints with the configured
client keys; each push is a sealed frame of the principal's own session.  Waits are on
conditions under deadlines (:func:`until`); the one timed window measures how often a
kept connection is retried while its node refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.crypto import Identity, KeyRing
from bftfs.ids import NodeId, PrincipalId, client_id
from bftfs.net.endpoint import Endpoint, open_endpoint
from bftfs.net.errors import TransportError
from bftfs.net.frames import PUSH, REQUEST, FrameReader
from bftfs.net.server import Server
from bftfs.net.session import Session, client_handshake
from bftfs.testing.cluster import TEST_ENDPOINT, Cluster, open_cluster

Pushed = list[tuple[NodeId, Any]]


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    """Return once ``cond()`` holds; fail after ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            if cond():
                return
            await trio.sleep(0.005)


def last_is(got: Pushed, push: tuple[NodeId, Any]) -> bool:
    return got[-1:] == [push]


@asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, t=0, b=0, n=2, clients=2) as cluster:
        yield cluster


@asynccontextmanager
async def client(
    cluster: Cluster, k: int, on_push: Callable[[NodeId, Any], None] | None
) -> AsyncIterator[Endpoint]:
    """An endpoint of configured client ``k`` (its own connections) receiving pushes."""
    ring = KeyRing(cluster.client_identity(k), cluster.config.node_public_keys())
    async with open_endpoint(ring, cluster.addresses, on_push=on_push, **TEST_ENDPOINT) as ep:
        yield ep


def server(cluster: Cluster, i: int) -> Server[Any]:
    return cluster.nodes[i].server


async def connected(cluster: Cluster, ep: Endpoint, i: int, count: int = 1) -> None:
    """Until node ``i`` holds ``count`` open connections of ``ep``'s principal (the client's
    handshake ends before the node has recorded the connection)."""
    await until(lambda: server(cluster, i).connected(ep.pid) == count)


async def test_a_push_reaches_the_principal_it_names_with_the_sending_nodes_id(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as cluster:
        got0: Pushed = []
        got1: Pushed = []
        async with (
            client(cluster, 0, lambda n, b: got0.append((n, b))) as ep0,
            client(cluster, 1, lambda n, b: got1.append((n, b))) as ep1,
        ):
            for ep in (ep0, ep1):
                ep.stay_connected([NodeId(0), NodeId(1)])
                for i in (0, 1):
                    await connected(cluster, ep, i)
            assert server(cluster, 1).push(ep0.pid, {"recall": b"lease-7"}) == 1
            await until(lambda: len(got0) == 1)
            assert got0 == [(NodeId(1), {"recall": b"lease-7"})]
            # Client 1's own push comes after anything sent on its connection before it.
            assert server(cluster, 1).push(ep1.pid, "marker") == 1
            await until(lambda: len(got1) == 1)
            assert got1 == [(NodeId(1), "marker")]
            assert got0 == [(NodeId(1), {"recall": b"lease-7"})]
            assert server(cluster, 1).stats["pushes"] == 2


async def test_push_counts_the_principals_open_connections(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as cluster:
        node = server(cluster, 0)
        pid = PrincipalId(int(cluster.config.clients[0].id))
        assert node.push(pid, "nobody listens") == 0
        got_a: Pushed = []
        got_b: Pushed = []
        async with client(cluster, 0, lambda n, b: got_a.append((n, b))) as a:
            await a.call(NodeId(0), "ping", None)
            await connected(cluster, a, 0)
            async with client(cluster, 0, lambda n, b: got_b.append((n, b))) as b:
                await b.call(NodeId(0), "ping", None)
                await connected(cluster, b, 0, count=2)
                assert node.push(pid, 1) == 2
                await until(lambda: len(got_a) == 1 and len(got_b) == 1)
                assert got_a == got_b == [(NodeId(0), 1)]
            await connected(cluster, a, 0, count=1)  # b's connection is forgotten
            assert node.push(pid, 2) == 1
            await until(lambda: len(got_a) == 2)
        await until(lambda: node.connected(pid) == 0)
        assert node.push(pid, 3) == 0
        assert got_a == [(NodeId(0), 1), (NodeId(0), 2)]


async def test_stay_connected_reconnects_after_the_node_restarts(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as cluster:
        got: Pushed = []
        async with client(cluster, 0, lambda n, b: got.append((n, b))) as ep:
            ep.stay_connected([NodeId(0)])
            await connected(cluster, ep, 0)  # without a single call
            assert server(cluster, 0).push(ep.pid, "before") == 1
            await until(lambda: got == [(NodeId(0), "before")])
            for restart in range(2):
                cluster.crash(0)
                await cluster.recover(0)
                await connected(cluster, ep, 0)
                assert server(cluster, 0).push(ep.pid, restart) == 1
                await until(functools.partial(last_is, got, (NodeId(0), restart)))
            assert [b for _, b in got] == ["before", 0, 1]
            assert (await ep.call(NodeId(0), "ping", b"x"))["echo"] == b"x"


async def test_stay_connected_backs_off_while_a_node_refuses() -> None:
    """A node that accepts and hangs up at once (a refused handshake) is tried a few times
    a second, not in a busy loop (thousands)."""
    node = Identity.generate(NodeId(0))
    me = Identity.generate(client_id(0))
    ring = KeyRing(me, {node.pid: node.public})
    accepts = 0

    async def hang_up(stream: trio.SocketStream) -> None:
        nonlocal accepts
        accepts += 1
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hang_up, listeners)
        async with open_endpoint(ring, {NodeId(0): ("127.0.0.1", port)}, **TEST_ENDPOINT) as ep:
            ep.stay_connected([NodeId(0)])
            await until(lambda: accepts >= 2)
            start = accepts
            await trio.sleep(1.0)  # a window to count attempts in, not a synchronisation
            tried = accepts - start
        nursery.cancel_scope.cancel()
    assert 1 <= tried <= 10, tried


async def test_a_corrupted_or_forged_push_is_dropped_and_counted(
    tmp_path: Path, expect_log: Any
) -> None:
    """A push tampered with on the way, and one sealed under a key that is not the
    session's (what anyone but the node at the other end, another client included, can
    at best make), are dropped and counted; the session goes on, pushes and replies."""
    async with two_nodes(tmp_path) as cluster:
        got: Pushed = []
        async with client(cluster, 0, lambda n, b: got.append((n, b))) as ep:
            await ep.call(NodeId(0), "ping", None)
            await connected(cluster, ep, 0)
            (conn,) = server(cluster, 0)._open[ep.pid]
            tampered = bytearray(conn.session.seal([PUSH, 0, 0, "tampered"]))
            tampered[-5] ^= 0x01
            stranger = Session(send_key=bytes(32), recv_key=bytes(32))
            stranger.send_seq = conn.session.send_seq  # a plausible next sequence number
            forged = stranger.seal([PUSH, 0, 0, "forged"])
            with expect_log("bftfs.net.connection", "WARNING", match="bad_mac", count=2):
                conn.writer.write(tampered)
                conn.writer.write(forged)
                await until(lambda: ep.faults[(0, "frame_bad_mac")] == 2)
            assert got == []
            assert server(cluster, 0).push(ep.pid, "genuine") == 1
            await until(lambda: got == [(NodeId(0), "genuine")])
            assert (await ep.call(NodeId(0), "ping", b"y"))["echo"] == b"y"


async def test_an_on_push_that_raises_does_not_stop_replies(
    tmp_path: Path, expect_log: Any
) -> None:
    async with two_nodes(tmp_path) as cluster:
        calls: list[Any] = []

        def broken(node: NodeId, body: Any) -> None:
            calls.append(body)
            raise RuntimeError("a callee's bug")

        async with client(cluster, 0, broken) as ep:
            await ep.call(NodeId(0), "ping", None)
            await connected(cluster, ep, 0)
            with expect_log("bftfs.net.connection", "ERROR", match="push handler", count=2):
                for body in ("one", "two"):
                    assert server(cluster, 0).push(ep.pid, body) == 1
                assert (await ep.call(NodeId(0), "ping", b"z"))["echo"] == b"z"
                await until(lambda: len(calls) == 2)
            assert calls == ["one", "two"]
            assert ep.faults[(0, "push_handler_failed")] == 2
            assert server(cluster, 0).connected(ep.pid) == 1  # the same connection


async def test_a_push_without_on_push_is_ignored_and_on_push_may_be_set_later(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as cluster, client(cluster, 0, None) as ep:
        await ep.call(NodeId(0), "ping", None)
        await connected(cluster, ep, 0)
        assert server(cluster, 0).push(ep.pid, "unheard") == 1
        assert (await ep.call(NodeId(0), "ping", b"w"))["echo"] == b"w"
        assert not ep.faults
        got: Pushed = []
        ep.on_push = lambda n, b: got.append((n, b))  # the open connection delivers to it
        assert server(cluster, 0).push(ep.pid, "heard") == 1
        await until(lambda: got == [(NodeId(0), "heard")])
        assert server(cluster, 0).connected(ep.pid) == 1


async def test_a_push_from_a_client_is_dropped_and_counted_by_the_node(tmp_path: Path) -> None:
    """Clients never push: a node drops a PUSH-kind message and answers the next request
    on the same connection."""
    async with two_nodes(tmp_path) as cluster:
        node = server(cluster, 0)
        spec = cluster.config.node(0)
        stream = await trio.open_tcp_stream(spec.host, spec.port)
        reader = FrameReader(stream, 1 << 20)
        ring = KeyRing(cluster.client_identity(0), cluster.config.node_public_keys())
        session = await client_handshake(stream, reader, ring, NodeId(0))
        before = node.rejected["malformed"]
        await stream.send_all(session.seal([PUSH, 0, 0, {"recall": "everything"}]))
        await stream.send_all(session.seal([REQUEST, 5, "ping", b"after"]))
        with trio.fail_after(5):
            frame = await reader.read()
        assert frame is not None
        _seq, _kind, req_id, _status, reply = session.open(frame)
        assert (req_id, reply["echo"]) == (5, b"after")
        assert node.rejected["malformed"] == before + 1
        await stream.aclose()


async def test_stay_connected_refuses_unknown_nodes() -> None:
    ring = KeyRing(Identity.generate(client_id(0)), {})
    async with open_endpoint(ring, {}) as ep:
        with pytest.raises(TransportError, match="unknown nodes"):
            ep.stay_connected([NodeId(3)])
