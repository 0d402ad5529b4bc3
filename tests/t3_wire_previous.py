"""Two wire versions talk for the length of a rolling upgrade, and not three (issue 67;
``net/wires.py``, docs/operations.md): each check runs the other side's real code, the
release v0.1.0 (wire 5) or the last commit of wire 4, built from this clone's history
(``testing/releases.py``) and run as a process of its own.

- a node of this version answers a wire-5 hello in wire 5, serves its requests, and knows
  that client runs 0.1.0;
- a client of this version, whose wire-6 hello a 0.1.0 node closes, says it again in
  wire 5 and is served;
- a wire-4 client is refused with an error naming both versions;
- two speakers of this version learn each other's package version, and a hello of a
  newer version is refused in ours, so that its speaker can fall back."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import WIRE_VERSION, __version__
from bftfs.crypto import MAC_SIZE, Identity, KeyRing, mac_ok
from bftfs.ids import NodeId, client_id
from bftfs.net.endpoint import open_endpoint
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader, pack, unpack
from bftfs.net.server import Server
from bftfs.net.session import frame_bytes
from bftfs.testing import releases

NODE = Identity(NodeId(0), bytes(range(32)))
ALICE = Identity(client_id(0), bytes(range(1, 33)))

#: The other side's programs (run by that version's python); the keys as above.
_PRELUDE = """
import sys, trio
from bftfs.crypto import MAC_SIZE, Identity, KeyRing, mac_ok
from bftfs.ids import NodeId, client_id
NODE = Identity(NodeId(0), bytes(range(32)))
ALICE = Identity(client_id(0), bytes(range(1, 33)))
"""
OLD_NODE = (
    _PRELUDE
    + """
from bftfs.net.server import Server
from bftfs.net.session import frame_bytes
async def main():
    server = Server(KeyRing(NODE, {ALICE.pid: ALICE.public}), context=lambda sender: sender)
    async def ping(ctx, payload):
        return payload
    server.register("ping", ping)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.serve, listeners)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes stdin
        print(dict(server.rejected), flush=True)
        nursery.cancel_scope.cancel()
trio.run(main)
"""
)
OLD_CLIENT = (
    _PRELUDE
    + """
from bftfs.net.endpoint import open_endpoint
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader, pack, unpack
from bftfs.net.errors import TransportError
async def main():
    ring = KeyRing(ALICE, {NODE.pid: NODE.public})
    async with open_endpoint(ring, {NODE.pid: ("127.0.0.1", int(sys.argv[1]))}, timeout=10) as ep:
        print(await ep.call(NODE.pid, "ping", "from the old client"), flush=True)
        sys.stdin.read()  # the test reads the node's sessions meanwhile
trio.run(main)
"""
)
WIRE4_CLIENT = (
    _PRELUDE
    + """
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader
from bftfs.net.session import SessionRefused, client_handshake
async def main():
    stream = await trio.open_tcp_stream("127.0.0.1", int(sys.argv[1]))
    ring = KeyRing(ALICE, {NODE.pid: NODE.public})
    try:
        await client_handshake(stream, FrameReader(stream, DEFAULT_MAX_FRAME), ring, NODE.pid)
    except SessionRefused as e:
        print("refused:", e, flush=True)
trio.run(main)
"""
)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of v0.1.0's virtualenv."""
    commit, why = releases.commit_of("0.1.0")
    if commit is None:
        pytest.skip(why)
    return releases.build(commit, tmp_path_factory.mktemp("v0.1.0"))


def _spawn(python: Path, program: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(python), "-P", "-c", program, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server[Any], int]]:
    """A server of this version on loopback answering ``ping``."""
    server: Server[Any] = Server(
        KeyRing(NODE, {ALICE.pid: ALICE.public}), context=lambda sender: sender
    )

    async def ping(ctx: Any, payload: Any) -> Any:
        return payload

    server.register("ping", ping)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve, listeners)
        yield server, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def _ended(child: subprocess.Popen[str]) -> Iterator[str]:
    """Close the child's stdin and wait; its remaining output lines."""
    try:
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    yield from out.splitlines()


async def test_a_node_answers_a_wire_5_client_in_wire_5(release: Path) -> None:
    async with serving() as (server, port):
        child = _spawn(release, OLD_CLIENT, str(port))
        try:
            line = await trio.to_thread.run_sync(child.stdout.readline)  # type: ignore[union-attr]
            assert line.strip() == "from the old client", child.stderr.read()  # type: ignore[union-attr]
            sessions = server.sessions()
        finally:
            list(_ended(child))
    assert [(s["client"], s["version"], s["wire"]) for s in sessions] == [
        (int(ALICE.pid), "0.1.0", WIRE_VERSION - 1)
    ]


async def test_a_client_speaks_wire_5_to_a_node_of_0_1_0(release: Path) -> None:
    child = _spawn(release, OLD_NODE)
    try:
        port = int(await trio.to_thread.run_sync(child.stdout.readline))  # type: ignore[union-attr]
        ring = KeyRing(ALICE, {NODE.pid: NODE.public})
        async with open_endpoint(ring, {NODE.pid: ("127.0.0.1", port)}, timeout=10) as ep:
            assert await ep.call(NODE.pid, "ping", "to the old node") == "to the old node"
            conn = ep.pool.open_to(NODE.pid)
            assert conn is not None
            assert (conn.session.wire, conn.session.peer_version) == (WIRE_VERSION - 1, None)
    finally:
        rejected = list(_ended(child))
    # The node of 0.1.0 could not parse our first hello (a wire-6 hello is one item longer).
    assert rejected == ["{'malformed': 1}"]


def test_a_wire_4_client_is_refused_naming_both_versions(tmp_path: Path) -> None:
    if not releases.has_commit(releases.WIRE4_COMMIT):
        pytest.skip(f"commit {releases.WIRE4_COMMIT} (wire 4) not in this clone's history")
    python = releases.build(releases.WIRE4_COMMIT, tmp_path / "wire4")

    async def main() -> tuple[list[str], dict[str, int]]:
        async with serving() as (server, port):
            child = _spawn(python, WIRE4_CLIENT, str(port))
            lines = await trio.to_thread.run_sync(lambda: list(_ended(child)))
            return lines, dict(server.rejected)

    lines, rejected = trio.run(main)
    assert len(lines) == 1 and lines[0].startswith("refused: "), lines
    assert f"wire version 4, this node speaks {WIRE_VERSION} (and {WIRE_VERSION - 1})" in lines[0]
    assert f"bftfs {__version__}" in lines[0]
    assert rejected == {"version": 1}


async def test_both_sides_of_this_version_learn_the_others_package_version() -> None:
    async with serving() as (server, port):
        ring = KeyRing(ALICE, {NODE.pid: NODE.public})
        async with open_endpoint(ring, {NODE.pid: ("127.0.0.1", port)}, timeout=10) as ep:
            assert await ep.call(NODE.pid, "ping", 1) == 1
            conn = ep.pool.open_to(NODE.pid)
            assert conn is not None
            assert (conn.session.wire, conn.session.peer_version) == (WIRE_VERSION, __version__)
            sessions = server.sessions()
    assert [(s["version"], s["wire"]) for s in sessions] == [(__version__, WIRE_VERSION)]
    assert server.rejected == {}  # no hello said twice


async def test_a_newer_hello_is_refused_in_our_version_so_its_speaker_can_fall_back() -> None:
    """A hello of wire 7 (a release that does not exist yet), whose first five items keep
    their places: the refusal is a wire-6 message, MACed under the pairwise key."""
    pair = KeyRing(ALICE, {NODE.pid: NODE.public}).key(NODE.pid)
    assert pair is not None
    nonce = bytes(range(16))
    hello = pack([WIRE_VERSION + 1, "hello", ALICE.pid, NODE.pid, nonce, 0, "9.0.0", "more"])
    async with serving() as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(frame_bytes(hello, pair))
            frame = bytes(await FrameReader(stream, DEFAULT_MAX_FRAME).read() or b"")
    assert mac_ok(pair, frame[:-MAC_SIZE], frame[-MAC_SIZE:])
    said, word, node, client, echoed, reason = unpack(frame[:-MAC_SIZE])
    assert (said, word, node, client, echoed) == (
        WIRE_VERSION,
        "hello-refused",
        NODE.pid,
        ALICE.pid,
        nonce,
    )
    assert f"wire version {WIRE_VERSION + 1}, this node speaks {WIRE_VERSION}" in reason
    assert server.rejected == {"version": 1}
