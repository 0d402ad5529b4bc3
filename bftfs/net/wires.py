"""Which wire version to speak to a node: ours, or the previous one to a node of the
previous release, for the length of a rolling upgrade (issue 67, docs/operations.md).

The rule is etcd's (one minor version at a time): a release speaks its own wire version
and the one before it, no more.  A client says its hello in its own version first; a node
of the previous release closes such a connection without a word (it cannot parse the
hello), or a later one refuses it naming the version it speaks, and the client says it
again, on a new connection, in the previous version.  Nothing is remembered between
connections: a node restarted on the newer release is spoken to in the newer version at
the next connection, at the price of one closed connection per connection to a node not
yet upgraded.  Falling back is no downgrade of protection: the two versions differ only in
the package versions the hellos carry (``net/session.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bftfs import WIRE_VERSION
from bftfs.crypto import KeyRing
from bftfs.ids import PrincipalId
from bftfs.net.frames import FrameReader
from bftfs.net.session import (
    PREVIOUS_WIRE,
    HandshakeClosed,
    Session,
    WireRefused,
    client_handshake,
)

#: The package version of every speaker of a wire version before hellos carried it: the
#: package stayed 0.1.0 through wire version 5 (the first tagged release, v0.1.0).
RELEASE_OF_WIRE = {5: "0.1.0"}

#: Opens a new stream to the node (TCP, for the pool and ``connect.check_identity``).
Connect = Callable[[], Awaitable[trio.SocketStream]]


def version_of(session_version: str | None, wire: int) -> str | None:
    """The package version a peer runs: what its hello said, else the release that spoke
    its wire version (None: unknown)."""
    return session_version if session_version is not None else RELEASE_OF_WIRE.get(wire)


def versions(session: Session) -> dict[str, Any]:
    """The package version (:func:`version_of`) and the wire version a session's other
    side speaks, as a node's status lists them (``Server.sessions``, ``Server.peers``)."""
    return {"version": version_of(session.peer_version, session.wire), "wire": session.wire}


async def open_session(
    connect: Connect,
    keyring: KeyRing,
    server: PrincipalId,
    view: int,
    max_frame: int,
) -> tuple[trio.SocketStream, FrameReader, Session]:
    """A stream to ``server`` with its handshake done, in our wire version or, when the
    node does not speak it, in the previous one (module docstring).

    Raises:
        SessionRefused: the node refuses us (a view), or speaks neither version.
        HandshakeClosed: the node closed both hellos (it does not know our key).
        TransportError, OSError, trio.TooSlowError, trio.BrokenResourceError: as
            ``client_handshake`` and ``connect``.
    """
    wire = WIRE_VERSION
    while True:
        stream = await connect()
        try:
            reader = FrameReader(stream, max_frame)
            session = await client_handshake(stream, reader, keyring, server, view, wire)
            return stream, reader, session
        except HandshakeClosed:
            stream.socket.close()
            if wire != WIRE_VERSION:
                raise HandshakeClosed(
                    f"node {server} closed the connection during the handshake (to hellos "
                    f"of wire versions {WIRE_VERSION} and {PREVIOUS_WIRE})"
                ) from None
            wire = PREVIOUS_WIRE
        except WireRefused as e:
            stream.socket.close()
            if wire != WIRE_VERSION or e.wire != PREVIOUS_WIRE:
                raise
            wire = PREVIOUS_WIRE
        except BaseException:
            stream.socket.close()
            raise
