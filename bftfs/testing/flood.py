"""Flooding a node over real TCP, and the memory of real processes (issue 39, "bounded
buffers, shown"; docs/buffers.md).

A :class:`RawSession` is one authenticated connection to a node, as a configured client,
that sends requests and reads replies only when told to: what a Byzantine client can do
with its own key (send as fast as it likes, never read what it is answered).  The
endpoint (``net/endpoint.py``) would read every reply, so it cannot play that part.

Memory is read from ``/proc``: :func:`anon_rss` is a process's anonymous resident memory
(its heap: Python objects, buffers), which leaves out the LMDB map a node reads through
``mmap`` (file pages, reclaimable, and as large as the store); :func:`peak_rss` is its
high-water mark of all resident memory (``VmHWM``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import trio

from bftfs.config import ClusterConfig
from bftfs.connect import client_identity
from bftfs.crypto import KeyRing
from bftfs.ids import NodeId
from bftfs.net.frames import DEFAULT_MAX_FRAME, REQUEST, FrameReader
from bftfs.net.session import Session, client_handshake


def _status_kib(pid: int, field: str) -> int:
    """One ``kB`` field of ``/proc/PID/status``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def anon_rss(pid: int) -> int:
    """Bytes of anonymous resident memory of process ``pid`` (``RssAnon``)."""
    return _status_kib(pid, "RssAnon") * 1024


def peak_rss(pid: int) -> int:
    """Bytes of the peak resident memory of process ``pid`` (``VmHWM``)."""
    return _status_kib(pid, "VmHWM") * 1024


class RawSession:
    """One authenticated connection to a node that sends when asked and reads when asked
    (see the module docstring).  Use :func:`raw_session`."""

    def __init__(self, stream: trio.SocketStream, reader: FrameReader, session: Session) -> None:
        self.stream = stream
        self.reader = reader
        self.session = session
        self._ids = itertools.count(1)
        #: Requests sent, and replies read.
        self.sent = 0
        self.replies = 0

    async def send(self, kind: str, payload: Any) -> None:
        """Send one request; waits only while the kernel's send buffer is full (that is,
        while the node does not read this connection)."""
        frame = self.session.seal([REQUEST, next(self._ids), kind, payload])
        await self.stream.send_all(frame)
        self.sent += 1

    async def read_reply(self) -> list[Any] | None:
        """The next message from the node (``[seq, type, req_id, status, body]``), or None
        at the end of the stream."""
        frame = await self.reader.read()
        if frame is None:
            return None
        self.replies += 1
        return self.session.open(frame)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def raw_session(
    config: ClusterConfig, node: NodeId, client: str = "client0", max_frame: int = 64 << 20
) -> RawSession:
    """A :class:`RawSession` to ``node`` as the configured ``client``.  Its reader accepts
    frames up to ``max_frame`` (more than a node's limit: replies to a flooder's batches
    may be larger than any real client accepts)."""
    spec = config.node(int(node))
    ring = KeyRing(client_identity(config, client), config.node_public_keys())
    stream = await trio.open_tcp_stream(spec.host, spec.port)
    try:
        reader = FrameReader(stream, max(max_frame, DEFAULT_MAX_FRAME))
        session = await client_handshake(stream, reader, ring, node)
    except BaseException:
        await stream.aclose()
        raise
    return RawSession(stream, reader, session)
