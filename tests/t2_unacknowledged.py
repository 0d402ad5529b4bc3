"""Tier 2: bytes the kernel took but the peer has not acknowledged (``FrameWriter.unacknowledged``,
Linux ``SIOCOUTQ``), on a real TCP connection over loopback whose receiver stops reading with
a small receive buffer: a request among them has not arrived, so the connection's resend
(``Connection.resend_nowait``) holds back a copy that would only queue behind it on a slow
link (docs/wan.md: resends multiplied what a 20 Mbit/s link carried)."""

from __future__ import annotations

import socket

import trio

from bftfs.net.frames import FrameWriter

CHUNK = 48 * 1024


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    assert isinstance(listener, trio.SocketListener)
    # Inherited by the accepted socket: the receiver's window stays far below CHUNK.
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.socket.getsockname()[1]
    raw = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * CHUNK)
    await raw.connect(("127.0.0.1", port))
    sender = trio.SocketStream(raw)
    receiver = await listener.accept()
    assert isinstance(receiver, trio.SocketStream)
    return sender, receiver, listener


async def test_bytes_the_peer_has_not_acknowledged_are_counted_until_it_reads_them() -> None:
    sender, receiver, listener = await _pair()
    writer = FrameWriter(sender)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            assert writer.unacknowledged() == 0
            writer.write(b"x" * 100)
            first = writer.written
            writer.write(b"x" * CHUNK)  # more than the receiver's window: some wait
            assert writer.unacknowledged() > 0
            assert not writer.arrived(writer.written)  # the last frame has not arrived
            assert writer.arrived(0)
            got = 0
            with trio.fail_after(30):
                while got < CHUNK + 100:
                    got += len(await receiver.receive_some(65536))
                while writer.pending or writer.unacknowledged():  # noqa: ASYNC110 (no event for an ACK)
                    await trio.sleep(0.005)
            assert got == CHUNK + 100
            assert writer.arrived(first) and writer.arrived(writer.written)
            writer.close()
    finally:
        writer.close()
        await sender.aclose()
        await receiver.aclose()
        await listener.aclose()


async def test_a_closed_writer_has_nothing_unacknowledged() -> None:
    sender, receiver, listener = await _pair()
    writer = FrameWriter(sender)
    writer.close()
    try:
        assert writer.unacknowledged() == 0
    finally:
        await sender.aclose()
        await receiver.aclose()
        await listener.aclose()
