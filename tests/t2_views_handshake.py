"""The handshake's part in views (issue 35; ``net/session.py``, ``net/server.py``) over real
loopback TCP: each side learns the other's view number; a key a view revoked is told why,
under that old key only (a stranger claiming its id learns nothing); ending a principal's
sessions closes them at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from bftfs.crypto import Identity, KeyRing, pairwise_key
from bftfs.ids import NodeId, PrincipalId, client_id
from bftfs.membership.viewkeys import Chain, proof_ok
from bftfs.net.endpoint import open_endpoint
from bftfs.net.errors import TransportError
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader
from bftfs.net.server import Server
from bftfs.net.session import SessionRefused, client_handshake

NODE = Identity(NodeId(0), bytes(range(32)))
ALICE = Identity(client_id(0), bytes(range(1, 33)))
BOB_OLD = Identity(client_id(1), bytes(range(2, 34)))  # revoked
STRANGER = Identity(client_id(1), bytes(range(3, 35)))  # claims bob's id


@asynccontextmanager
async def serving(server: Server[Any]) -> AsyncIterator[int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def node_server() -> tuple[Server[PrincipalId], list[tuple[int, int]]]:
    ring = KeyRing(NODE, {ALICE.pid: ALICE.public})  # bob is no longer in the view
    server: Server[PrincipalId] = Server(ring, context=lambda sender: sender)
    server.view_number = 7
    server.refused[BOB_OLD.pid] = (pairwise_key(NODE, BOB_OLD.public), "revoked in view 7")
    heard: list[tuple[int, int]] = []
    server.on_peer_view = lambda pid, number: heard.append((pid, number))

    async def ping(ctx: PrincipalId, payload: Any) -> Any:
        return payload

    server.register("ping", ping)
    return server, heard


async def handshake(port: int, me: Identity, view: int = 0) -> Any:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        ring = KeyRing(me, {NODE.pid: NODE.public})
        return await client_handshake(
            stream, FrameReader(stream, DEFAULT_MAX_FRAME), ring, NODE.pid, view
        )
    finally:
        await stream.aclose()


async def test_both_sides_learn_the_others_view_number() -> None:
    server, heard = node_server()
    async with serving(server) as port:
        session = await handshake(port, ALICE, view=5)
        assert session.peer_view == 7
        await trio.testing.wait_all_tasks_blocked()
    assert heard == [(ALICE.pid, 5)]


async def test_a_revoked_key_is_told_why_and_a_stranger_with_its_id_nothing() -> None:
    server, _ = node_server()
    async with serving(server) as port:
        with pytest.raises(SessionRefused, match="refuses principal 65537: revoked in view 7"):
            await handshake(port, BOB_OLD)
        with pytest.raises(TransportError) as stranger:
            await handshake(port, STRANGER)
        assert not isinstance(stranger.value, SessionRefused)
        assert "closed the connection" in str(stranger.value)
    assert server.rejected["refused"] == 1 and server.rejected["bad_mac"] == 0
    assert server.rejected["unknown_peer"] == 1


async def test_ending_a_principals_sessions_closes_them_and_others_stay() -> None:
    server, _ = node_server()
    async with serving(server) as port:
        ring = KeyRing(ALICE, {NODE.pid: NODE.public})
        async with open_endpoint(ring, {NODE.pid: ("127.0.0.1", port)}, timeout=5) as ep:
            assert await ep.call(NODE.pid, "ping", b"a") == b"a"
            assert server.connected(ALICE.pid) == 1
            assert server.end_sessions({int(client_id(9))}) == 0  # nobody of that id
            assert server.end_sessions({int(ALICE.pid)}) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert server.connected(ALICE.pid) == 0
            # Alice is still in the view: she reconnects and is answered.
            assert await ep.call(NODE.pid, "ping", b"b") == b"b"
    assert server.stats["sessions_ended"] == 1


async def test_the_acknowledgement_proves_the_view_under_its_key_for_this_caller_only() -> None:
    """Wire version 5: the node signs its view number, both ids and both nonces with its key
    for the view; without a key (``prove`` None or empty) the proof is empty."""
    key = Chain(1, bytes(range(32))).at(7)
    server, _ = node_server()
    async with serving(server) as port:
        unproven = await handshake(port, ALICE, view=7)
        assert unproven.peer_proof == b""
        server.prove = lambda number, message: bytes(key.signing_key().sign(message).signature)
        first = await handshake(port, ALICE, view=7)
        second = await handshake(port, ALICE, view=7)
    assert proof_ok(key.public(), first.proof_message, first.peer_proof)
    assert first.proof_message != second.proof_message  # fresh nonces: no replay
    assert not proof_ok(key.public(), second.proof_message, first.peer_proof)
    view6 = Chain(1, bytes(range(32))).at(6).public()  # the key of another view
    assert not proof_ok(view6, first.proof_message, first.peer_proof)
