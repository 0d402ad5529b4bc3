"""Framing: the message encoding, and length-prefixed frames on a byte stream.

A frame on the wire is ``u32 big-endian length || body``; what a body holds (a MAC'd
handshake message, or a sealed session message) is ``session.py``'s business.  Reading and
writing here are tuned for the small-request case: a frame the kernel takes whole costs one
system call and no task switch (see :class:`FrameWriter`, :meth:`FrameReader._receive`).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import trio

from bftfs.buffers import unfilled
from bftfs.net.errors import FrameError

#: Largest frame accepted by default (a 4 MiB block plus headroom).
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
#: The length prefix of every frame.
LENGTH = struct.Struct(">I")
#: Frames at least this long are read into a buffer of their own (``FrameReader.read``).
DIRECT_FRAME = 64 * 1024

#: Message types and reply statuses (the first and third fields of a session message).
REQUEST = 0
REPLY = 1
#: A message a node sends a client unasked (a lease recall, issue 33), sealed like a reply.
PUSH = 2
STATUS_OK = 0
STATUS_ERROR = 1


def pack(obj: Any) -> bytes:
    """The compact binary encoding of a message (msgpack, bytes kept as bytes)."""
    return msgpack.packb(obj, use_bin_type=True)


_packers = threading.local()


@contextlib.contextmanager
def packed(obj: Any) -> Iterator[memoryview]:
    """:func:`pack` of ``obj`` as a view of this thread's packer's buffer, valid inside the
    ``with`` only: for a message sealed into a frame at once (``Session.seal``).

    ``msgpack.packb`` packs into a fresh buffer that grows as it fills and then copies it
    into a new bytes object: 4 ms for a batch of sixteen 1 MiB blocks' fragments (5.6 MB),
    against 0.4 ms packed into a buffer kept from the message before and read in place
    (issue 34; the sender's CPU per GiB written fell by about a sixth).  The buffer keeps
    the size of the largest message this thread sent (a few MiB)."""
    if getattr(_packers, "busy", False):  # a use inside another (none today): a copy
        with memoryview(pack(obj)) as view:
            yield view
        return
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    _packers.busy = True
    try:
        packer.pack(obj)
        with packer.getbuffer() as view:
            yield view
    finally:
        packer.reset()
        _packers.busy = False


def unpack(data: bytes | bytearray | memoryview) -> Any:
    """Decode :func:`pack` output. Raises ``FrameError('malformed')`` on anything else."""
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise FrameError("malformed", type(e).__name__) from None


class FrameReader:
    """Splits a byte stream into length-prefixed frames, refusing oversized ones early."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_frame: int) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.max_frame = max_frame
        #: A socket stream is read through its file descriptor (see :meth:`_receive`).
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None

    async def read(self) -> bytes | memoryview | None:
        """The next frame, or None at a clean end of stream.

        A big frame (a batch of fragments) is read straight into a buffer of its own once a
        quarter of it has arrived (so a peer's length prefix alone never makes us allocate
        more than four times what it sent): no appending to the stream buffer, no copy of
        the frame out of it, no shifting of what follows (issue 34).  It is returned as a
        writable view, which the caller decrypts in place (``Session.open``).  The buffer
        is not kept for the next frame: a kept one would hold up to ``max_frame`` per
        connection for as long as it lives, past the bound docs/buffers.md gives a node
        that floods its clients (``t4_buffers``).

        Raises:
            FrameError: ``oversized`` (the length prefix exceeds the limit: the stream cannot
                be resynchronised, so the caller closes it) or ``truncated``.
        """
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = LENGTH.unpack_from(buf)
                if n > self.max_frame:
                    raise FrameError("oversized", f"{n} > {self.max_frame} bytes")
                if len(buf) >= 4 + n:
                    with memoryview(buf) as view:  # one copy (a bytearray slice is two)
                        frame = bytes(view[4 : 4 + n])
                    del buf[: 4 + n]
                    return frame
                if n >= DIRECT_FRAME and self._fd is not None and len(buf) - 4 >= n // 4:
                    return await self._read_rest(n)
            data = await self._receive()
            if not data:
                if buf:
                    raise FrameError("truncated")
                return None
            buf += data

    async def _read_rest(self, n: int) -> memoryview:
        """The frame of ``n`` bytes whose start is buffered, the rest read into it (a
        buffer not zeroed first: every byte is written before the frame is used)."""
        frame = memoryview(unfilled(n))
        buf = self._buf
        have = len(buf) - 4
        frame[:have] = memoryview(buf)[4:]
        buf.clear()
        while have < n:
            got = await self._receive_into(frame[have:])
            if not got:
                raise FrameError("truncated")
            have += got
        return frame

    async def _receive_into(self, into: memoryview) -> int:
        """Read into ``into`` (at most its size; 0 at the end of the stream), as
        :meth:`_receive` reads: one yield per chunk."""
        fd = self._fd
        assert fd is not None
        sock = self._stream.socket  # type: ignore[attr-defined]
        waited = False
        while True:
            if sock.fileno() != fd:
                raise trio.ClosedResourceError
            try:
                got = os.readv(fd, [into])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                waited = True
                continue
            if not waited:
                await trio.lowlevel.checkpoint()
            return got

    async def _receive(self) -> bytes | bytearray:
        """Up to 256 KiB from the stream (b"" at its end).

        On a socket: ``os.read`` of the descriptor, and ``wait_readable`` when nothing is
        there yet.  ``SocketStream.receive_some`` does the same through two context
        managers and yields twice per chunk (once waiting, once more after reading); here a
        chunk costs one yield: the wait, or an explicit checkpoint when data was already
        there, so a connection that is never idle still lets other tasks run.

        Raises:
            OSError: the connection failed (callers treat it like a broken stream).
            trio.ClosedResourceError: the socket was closed while waiting.
        """
        fd = self._fd
        if fd is None:
            return await self._stream.receive_some(262144)
        sock = self._stream.socket  # type: ignore[attr-defined]
        waited = False
        while True:
            if sock.fileno() != fd:  # closed by another task (the number may be reused)
                raise trio.ClosedResourceError
            try:
                data = os.read(fd, 262144)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                waited = True
                continue
            if not waited:
                await trio.lowlevel.checkpoint()
            return data


class FrameWriter:
    """Writes frames to a socket: straight to the kernel when idle, via a task when backed up.

    A write that the socket takes whole costs one system call and no task switch, which is
    most of the latency of a small request on loopback.  Whatever the kernel does not take
    goes to a backlog that :meth:`run` (a background task) drains with ``send_all``; while
    anything is queued or being sent, new frames queue behind it, so order is kept.

    :meth:`write` never blocks, so the backlog is as large as what the peer leaves unread:
    :attr:`pending` counts it and :meth:`wait_below` lets a caller that produces frames
    for the peer (a server answering requests it reads) wait until the peer has taken
    enough (docs/buffers.md: a peer that never reads must not grow us).
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._backlog: list[bytes | bytearray | memoryview] = []
        self._busy = False
        self._wake = trio.Event()
        #: Set (and replaced) each time the backlog shrinks: :meth:`wait_below` waits on it.
        self._drained = trio.Event()
        #: Bytes written to this writer that the kernel has not taken yet.
        self.pending = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (one or more whole frames) or queue it; never blocks.

        Raises:
            trio.ClosedResourceError: the connection is closed.
        """
        if self.closed:
            raise trio.ClosedResourceError
        if not self._backlog and not self._busy:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close()
                raise trio.ClosedResourceError from None
            if n == len(data):
                return
            data = memoryview(data)[n:]  # the rest, without copying it
        self._backlog.append(data)
        self.pending += len(data)
        self._wake.set()

    async def wait_below(self, limit: int) -> None:
        """Return once at most ``limit`` bytes are pending (or the writer closed)."""
        while self.pending > limit and not self.closed:
            await self._drained.wait()

    async def run(self) -> None:
        """Drain the backlog until the connection closes."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._backlog:
                    backlog = self._backlog
                    chunk = backlog[0] if len(backlog) == 1 else b"".join(backlog)
                    self._backlog = []
                    del backlog  # the frames joined into ``chunk`` go now, not after it
                    self._busy = True
                    try:
                        await self._stream.send_all(chunk)
                    finally:
                        self._busy = False
                    self.pending = max(0, self.pending - len(chunk))
                    self._drained.set()
                    self._drained = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close()

    def close(self) -> None:
        self.closed = True
        self._backlog.clear()
        self.pending = 0
        self._wake.set()
        self._drained.set()
