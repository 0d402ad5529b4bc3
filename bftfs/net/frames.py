"""Framing: the message encoding, and length-prefixed frames on a byte stream.

A frame on the wire is ``u32 big-endian length || body``; what a body holds (a MAC'd
handshake message, or a sealed session message) is ``session.py``'s business.  Reading and
writing here are tuned for the small-request case: a frame the kernel takes whole costs one
system call and no task switch (see :class:`FrameWriter`, :meth:`FrameReader._receive_into`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import termios
import threading
from collections.abc import Callable, Iterator
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
#: A big frame gets its buffer once this much of it (or a quarter of it) has arrived.
BIG_FRAME_START = DIRECT_FRAME // 2
#: The most one read of a stream takes outside a big frame.
STREAM_READ = DIRECT_FRAME
#: A reader's stream buffer: a small frame's start (under ``DIRECT_FRAME + 4`` bytes) and
#: one read after it.
_AREA = DIRECT_FRAME + 4 + STREAM_READ

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
    """Splits a byte stream into length-prefixed frames, refusing oversized ones early.

    The stream is read into a buffer of its own (:attr:`_area`, allocated once), at most
    :data:`STREAM_READ` bytes at a time, so a small frame is copied once (out of the area)
    and a big one (:data:`DIRECT_FRAME` bytes or more) is read straight into a buffer of
    its own after at most one read's worth of its start (see :meth:`read`).
    """

    def __init__(self, stream: trio.abc.ReceiveStream, max_frame: int) -> None:
        self._stream = stream
        self._area = bytearray(_AREA)
        self._view = memoryview(self._area)  # never resized, so the view may stay
        #: The unread bytes are ``_area[_start:_end]``.
        self._start = 0
        self._end = 0
        self.max_frame = max_frame
        #: A socket stream is read through its file descriptor (see :meth:`_receive_into`).
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        #: Called at each chunk of a big frame that arrives, with its bytes and those of the
        #: frame still to come: on a slow link a frame takes seconds (docs/wan.md), and a
        #: server counts a client's as activity, a client a reply arriving (``rtt.Arrival``).
        self.on_progress: Callable[[int, int], None] | None = None

    async def read(self) -> bytes | memoryview | None:
        """The next frame, or None at a clean end of stream.

        A big frame (a batch of fragments) gets a buffer of its own once
        :data:`BIG_FRAME_START` bytes of it (or a quarter, if less) have arrived, so a
        peer's length prefix alone never makes us allocate; what arrived is copied there,
        the rest read straight into it: no appending to a stream buffer, no copy of the
        frame out of one (issue 34).  Reads outside a big frame take at most
        :data:`STREAM_READ` bytes, which bounds that first copy; they used to take 256 KiB,
        most of a 1 MiB block's fragment, which was then copied twice more.  A big frame is
        returned as a writable view, which the caller decrypts in place (``Session.open``).
        Its buffer is not kept for the next frame: a kept one would hold up to
        ``max_frame`` per connection for as long as it lives, past the bound
        docs/buffers.md gives a node that floods its clients (``t4_buffers``).

        Raises:
            FrameError: ``oversized`` (the length prefix exceeds the limit: the stream cannot
                be resynchronised, so the caller closes it) or ``truncated``.
        """
        while True:
            have = self._end - self._start
            if have >= 4:
                (n,) = LENGTH.unpack_from(self._area, self._start)
                if n > self.max_frame:
                    raise FrameError("oversized", f"{n} > {self.max_frame} bytes")
                if n >= DIRECT_FRAME:
                    if have - 4 >= min(n // 4, BIG_FRAME_START):
                        return await self._read_rest(n)
                elif have >= 4 + n:
                    at = self._start + 4
                    frame = bytes(self._view[at : at + n])
                    self._consumed(4 + n)
                    return frame
            got = await self._receive_into(self._room())
            if not got:
                if have:
                    raise FrameError("truncated")
                return None
            self._end += got

    def _room(self) -> memoryview:
        """Where the next read of the stream goes: :data:`STREAM_READ` bytes after the
        unread ones, which are moved to the front first when that room is not left (they
        are at most a small frame's start and its length prefix)."""
        if len(self._area) - self._end < STREAM_READ:
            have = self._end - self._start
            self._view[:have] = self._view[self._start : self._end]
            self._start, self._end = 0, have
        return self._view[self._end : self._end + STREAM_READ]

    def _consumed(self, n: int) -> None:
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0

    async def _read_rest(self, n: int) -> memoryview:
        """The frame of ``n`` bytes whose start is buffered, the rest read into it (a
        buffer not zeroed first: every byte is written before the frame is used)."""
        frame = memoryview(unfilled(n))
        at = self._start + 4
        have = min(self._end - at, n)
        frame[:have] = self._view[at : at + have]
        self._consumed(4 + have)
        while have < n:
            got = await self._receive_into(frame[have:])
            if not got:
                raise FrameError("truncated")
            have += got
            if self.on_progress is not None:
                self.on_progress(got, n - have)
        return frame

    async def _receive_into(self, into: memoryview) -> int:
        """Read into ``into`` (at most its size; 0 at the end of the stream).

        On a socket: ``os.readv`` of the descriptor, and ``wait_readable`` when nothing is
        there yet.  ``SocketStream.receive_some`` does the same through two context
        managers, yields twice per chunk (once waiting, once more after reading) and
        returns a fresh bytes object; here a chunk costs one yield (the wait, or an
        explicit checkpoint when data was already there, so a connection that is never
        idle still lets other tasks run) and lands where it is wanted.

        Raises:
            OSError: the connection failed (callers treat it like a broken stream).
            trio.ClosedResourceError: the socket was closed while waiting.
        """
        fd = self._fd
        if fd is None:
            data = await self._stream.receive_some(len(into))
            into[: len(data)] = data
            return len(data)
        sock = self._stream.socket  # type: ignore[attr-defined]
        waited = False
        while True:
            if sock.fileno() != fd:  # closed by another task (the number may be reused)
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
        #: Bytes written to this writer in all: the end of the last frame written.
        self.written = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (one or more whole frames) or queue it; never blocks.

        Raises:
            trio.ClosedResourceError: the connection is closed.
        """
        if self.closed:
            raise trio.ClosedResourceError
        self.written += len(data)
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

    def arrived(self, upto: int) -> bool:
        """Whether the peer's kernel acknowledged every byte up to ``upto`` (a frame's end,
        :attr:`written` after it was written); True where the kernel cannot say.

        A request not yet acknowledged has not reached the peer, so sending it again only
        adds to what a slow link must carry before the first copy (docs/wan.md)."""
        return upto <= self.written - self.pending - self.unacknowledged()

    def unacknowledged(self) -> int:
        """Bytes the kernel took but the peer has not acknowledged yet (Linux ``SIOCOUTQ``
        on TCP: ``write_seq - snd_una``); 0 where the kernel cannot say."""
        if self.closed:
            return 0
        buf = bytearray(4)
        try:
            fcntl.ioctl(self._fd, termios.TIOCOUTQ, buf)
        except OSError:
            return 0
        return int.from_bytes(buf, sys.byteorder, signed=True)

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
