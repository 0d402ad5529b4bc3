"""Authenticated request/reply transport over trio TCP, and the quorum-call primitive.

Wire format (version :data:`bftfs.WIRE_VERSION`)::

    handshake frame = u32 big-endian length || body || tag    (length = len(body) + 16)
    tag             = MAC(K_pair, body)                       (keyed BLAKE2b, 16 bytes)
    hello     body = msgpack [version, "hello", client_pid, server_pid, nonce_c]
    hello-ack body = msgpack [version, "hello-ack", server_pid, client_pid, nonce_c, nonce_s]

    session frame   = u32 length || u64 seq || AEAD(K_dir, nonce = 0^4 || seq, ad = seq, m)
    request   m = msgpack [0, req_id, kind, payload]                             K_dir = K_c2s
    reply     m = msgpack [1, req_id, status, payload | [code, message]]         K_dir = K_s2c

``K_pair`` is the Diffie-Hellman pairwise key of the two principals (``crypto.KeyRing``).
Each connection derives fresh session keys ``K_c2s``/``K_s2c`` from ``K_pair`` and both
16-byte nonces, and each direction numbers its frames with ``seq`` = 1, 2, 3, ...; the AEAD
is ChaCha20-Poly1305 (IETF), so contents are encrypted as well as authenticated.  A receiver
drops a frame that fails authentication and any frame whose ``seq`` is not above the last
one it accepted.  Together: a tampered frame fails authentication, a frame replayed inside
a connection fails the sequence check, and a frame replayed into another connection fails
authentication because the session keys differ.  A principal whose key is not in the
configuration cannot complete the handshake, so it never gets an answer.

Requests carry a ``req_id`` chosen by the caller; a resent request keeps its id, so a reply
to any copy completes the call.  The transport does not deduplicate: protocols are
idempotent (PASIS writes by timestamp, Q/U by stored answers), as their channel models
require (Q/U channels may drop and duplicate, L2115-2119).

``Endpoint.quorum_call`` is the primitive both protocols are built on: send to a set of
nodes, return as soon as a predicate holds over the *valid* replies, probe further nodes when
some are slow or dead, and let the stragglers finish in the background.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_decrypt as _aead_decrypt
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt as _aead_encrypt
from nacl.exceptions import CryptoError

from bftfs import WIRE_VERSION
from bftfs.crypto import MAC_SIZE, KeyRing, derive, mac, mac_ok
from bftfs.ids import NodeId, PrincipalId

log = logging.getLogger(__name__)

#: Largest frame accepted by default (a 4 MiB block plus headroom).
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
#: Largest hello frame: it is parsed before its MAC can be checked, so it is kept tiny.
MAX_HELLO = 256
NONCE_SIZE = 16
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_NONCE_PAD = bytes(4)

REQUEST = 0
REPLY = 1
STATUS_OK = 0
STATUS_ERROR = 1


class TransportError(Exception):
    """A node could not be reached, or did not answer in time."""


class RemoteError(Exception):
    """The remote handler refused the request (``HandlerError`` on the node)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FrameError(Exception):
    """A frame was rejected; ``reason`` is the counter it is recorded under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


class QuorumUnavailable(Exception):
    """Every target answered or failed and the quorum predicate still does not hold."""

    def __init__(self, message: str, result: QuorumResult) -> None:
        super().__init__(message)
        self.result = result


def pack(obj: Any) -> bytes:
    """The compact binary encoding of a message (msgpack, bytes kept as bytes)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
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

    async def read(self) -> bytes | None:
        """The next frame, or None at a clean end of stream.

        Raises:
            FrameError: ``oversized`` (the length prefix exceeds the limit: the stream cannot
                be resynchronised, so the caller closes it) or ``truncated``.
        """
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if n > self.max_frame:
                    raise FrameError("oversized", f"{n} > {self.max_frame} bytes")
                if len(buf) >= 4 + n:
                    frame = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    return frame
            data = await self._receive()
            if not data:
                if buf:
                    raise FrameError("truncated")
                return None
            buf += data

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


def frame_bytes(body: bytes, key: bytes) -> bytes:
    """Length prefix, body and MAC: one frame ready for the wire."""
    return _LEN.pack(len(body) + MAC_SIZE) + body + mac(key, body)


@dataclass
class Session:
    """One connection's keys and sequence numbers, for one side.

    Every frame after the handshake is encrypted and authenticated with
    ChaCha20-Poly1305 (IETF, libsodium through pynacl) under the direction's session key:
    ``u32 length || u64 seq || ciphertext || 16-byte tag``, the sequence number in the clear
    as the associated data and the nonce (zero-padded to 12 bytes; each direction has its
    own key and numbers its frames 1, 2, 3, ..., so no nonce repeats under a key).  File
    contents and names no longer cross the network in the clear (issue 18).
    """

    send_key: bytes
    recv_key: bytes
    send_seq: int = 0
    recv_seq: int = 0

    def seal(self, msg: list[Any]) -> bytes:
        """``msg`` (``[type, req_id, x, y]``) as the next frame of this direction."""
        return self.seal_body(pack(msg))

    def seal_body(self, body: bytes) -> bytes:
        """Any ``body`` bytes as the next frame (the fuzzer sends nonsense this way)."""
        self.send_seq += 1
        seq = _SEQ.pack(self.send_seq)
        ct = _aead_encrypt(body, seq, _NONCE_PAD + seq, self.send_key)
        return _LEN.pack(len(seq) + len(ct)) + seq + ct

    def open(self, frame: bytes | memoryview) -> list[Any]:
        """Authenticate, decrypt and decode one frame: ``[seq, type, req_id, x, y]``.

        Raises:
            FrameError: ``bad_mac`` (tampered, or under another key), ``malformed`` or
                ``replay``.
        """
        if len(frame) < _SEQ.size + MAC_SIZE:
            raise FrameError("malformed", "frame shorter than its sequence number and tag")
        frame = bytes(frame)
        seq_bytes = frame[: _SEQ.size]
        try:
            body = _aead_decrypt(
                frame[_SEQ.size :], seq_bytes, _NONCE_PAD + seq_bytes, self.recv_key
            )
        except CryptoError:
            raise FrameError("bad_mac") from None
        (seq,) = _SEQ.unpack(seq_bytes)
        if seq <= self.recv_seq:
            raise FrameError("replay", f"seq {seq} <= {self.recv_seq}")
        msg = unpack(body)
        if (
            not isinstance(msg, list)
            or len(msg) != 4
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in msg[:2])
        ):
            raise FrameError("malformed", "not [type, req_id, x, y]")
        self.recv_seq = seq
        return [seq, *msg]


def _session_keys(pair: bytes, nonce_c: bytes, nonce_s: bytes) -> tuple[bytes, bytes]:
    return derive(pair, b"bftfs-c2s", nonce_c, nonce_s), derive(
        pair, b"bftfs-s2c", nonce_c, nonce_s
    )


async def client_handshake(
    stream: trio.abc.Stream, reader: FrameReader, keyring: KeyRing, server: PrincipalId
) -> Session:
    """Run the client half of the handshake; the returned session is ready for requests.

    Raises:
        TransportError: the server is unknown to us, closed the connection (it does that to
            principals it does not know), or answered with a bad acknowledgement.
    """
    pair = keyring.key(server)
    if pair is None:
        raise TransportError(f"no key for node {server}")
    nonce_c = os.urandom(NONCE_SIZE)
    hello = pack([WIRE_VERSION, "hello", keyring.me.pid, server, nonce_c])
    await stream.send_all(frame_bytes(hello, pair))
    try:
        frame = await reader.read()
    except FrameError as e:
        raise TransportError(f"node {server}: bad handshake reply ({e})") from None
    if frame is None:
        raise TransportError(f"node {server} closed the connection during the handshake")
    if len(frame) > MAX_HELLO or not mac_ok(pair, frame[:-MAC_SIZE], frame[-MAC_SIZE:]):
        raise TransportError(f"node {server}: handshake reply failed authentication")
    try:
        ver, tag, s_pid, c_pid, echo, nonce_s = unpack(frame[:-MAC_SIZE])
    except (FrameError, ValueError, TypeError):
        raise TransportError(f"node {server}: malformed handshake reply") from None
    if (ver, tag, s_pid, c_pid, echo) != (
        WIRE_VERSION,
        "hello-ack",
        server,
        keyring.me.pid,
        nonce_c,
    ):
        raise TransportError(f"node {server}: handshake reply does not match our hello")
    if not isinstance(nonce_s, bytes) or len(nonce_s) != NONCE_SIZE:
        raise TransportError(f"node {server}: bad server nonce")
    c2s, s2c = _session_keys(pair, nonce_c, nonce_s)
    return Session(send_key=c2s, recv_key=s2c)


async def server_handshake(
    stream: trio.abc.Stream, reader: FrameReader, keyring: KeyRing
) -> tuple[PrincipalId, Session]:
    """Run the server half: authenticate the caller, answer, derive the session.

    Raises:
        FrameError: ``unknown_peer``, ``bad_mac``, ``malformed``, ``version`` or
            ``misdirected``; the caller closes the connection without answering.
    """
    frame = await reader.read()
    if frame is None:
        raise FrameError("malformed", "closed before hello")
    if len(frame) > MAX_HELLO or len(frame) <= MAC_SIZE:
        raise FrameError("malformed", "hello of wrong size")
    msg = unpack(frame[:-MAC_SIZE])
    if not isinstance(msg, list) or len(msg) != 5 or msg[1] != "hello":
        raise FrameError("malformed", "not a hello")
    ver, _, c_pid, s_pid, nonce_c = msg
    if ver != WIRE_VERSION:
        raise FrameError("version", f"wire version {ver!r}, we speak {WIRE_VERSION}")
    if not isinstance(c_pid, int) or isinstance(c_pid, bool):
        raise FrameError("malformed", "client id")
    pair = keyring.key(PrincipalId(c_pid))
    if pair is None or c_pid == keyring.me.pid:
        raise FrameError("unknown_peer", f"principal {c_pid!r}")
    if not mac_ok(pair, frame[:-MAC_SIZE], frame[-MAC_SIZE:]):
        raise FrameError("bad_mac", "hello")
    if s_pid != keyring.me.pid:
        raise FrameError("misdirected", f"hello for node {s_pid!r}")
    if not isinstance(nonce_c, bytes) or len(nonce_c) != NONCE_SIZE:
        raise FrameError("malformed", "client nonce")
    nonce_s = os.urandom(NONCE_SIZE)
    ack = pack([WIRE_VERSION, "hello-ack", keyring.me.pid, c_pid, nonce_c, nonce_s])
    await stream.send_all(frame_bytes(ack, pair))
    c2s, s2c = _session_keys(pair, nonce_c, nonce_s)
    return PrincipalId(c_pid), Session(send_key=s2c, recv_key=c2s)


class FrameWriter:
    """Writes frames to a socket: straight to the kernel when idle, via a task when backed up.

    A write that the socket takes whole costs one system call and no task switch, which is
    most of the latency of a small request on loopback.  Whatever the kernel does not take
    goes to a backlog that :meth:`run` (a background task) drains with ``send_all``; while
    anything is queued or being sent, new frames queue behind it, so order is kept.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._backlog: list[bytes] = []
        self._busy = False
        self._wake = trio.Event()
        self.closed = False

    def write(self, data: bytes) -> None:
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
            data = data[n:]
        self._backlog.append(data)
        self._wake.set()

    async def run(self) -> None:
        """Drain the backlog until the connection closes."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._backlog:
                    chunk = b"".join(self._backlog)
                    self._backlog.clear()
                    self._busy = True
                    try:
                        await self._stream.send_all(chunk)
                    finally:
                        self._busy = False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close()

    def close(self) -> None:
        self.closed = True
        self._backlog.clear()
        self._wake.set()


# Client side -----------------------------------------------------------------------------


class _Waiter:
    """Where a reply for one request id lands."""

    __slots__ = ("event", "status", "body", "lost", "notify")

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.event = trio.Event()
        self.status: int | None = None
        self.body: Any = None
        self.lost = False
        #: Called when the waiter resolves (quorum calls collect replies this way).
        self.notify = notify

    def resolve(self, status: int | None, body: Any, *, lost: bool = False) -> None:
        if self.event.is_set():
            return
        self.status, self.body, self.lost = status, body, lost
        self.event.set()
        if self.notify is not None:
            self.notify()

    def outcome(self) -> tuple[bool, Any]:
        """``(True, reply)`` or ``(False, reason)`` once resolved."""
        if self.lost:
            return False, "connection lost"
        if self.status == STATUS_OK:
            return True, self.body
        body = self.body
        if isinstance(body, list) and len(body) == 2:
            return False, f"refused: {body[0]}: {body[1]}"
        return False, "refused: malformed error reply"


class _Connection:
    """A client connection to one node: a writer task batching frames, a reader task."""

    def __init__(
        self, node: NodeId, stream: trio.SocketStream, reader: FrameReader, session: Session
    ) -> None:
        self.node = node
        self.stream = stream
        self.reader = reader
        self.session = session
        self.pending: dict[int, _Waiter] = {}
        self.closed = False
        self._writer = FrameWriter(stream)

    def send_nowait(self, msg: list[Any]) -> None:
        """Send (or queue) a message without blocking."""
        if self.closed:
            raise trio.ClosedResourceError
        try:
            self._writer.write(self.session.seal(msg))
        except trio.ClosedResourceError:
            self._close()
            raise

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self._close()

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self.reader.read()
                if frame is None:
                    return
                try:
                    seq, kind, req_id, status, body = self.session.open(frame)
                except FrameError as e:
                    log.warning("node %s: dropped reply frame (%s)", self.node, e)
                    if e.reason == "bad_mac":
                        continue
                    return
                waiter = self.pending.pop(req_id, None)
                if kind == REPLY and waiter is not None:
                    waiter.resolve(status, body)
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        pending = list(self.pending.values())
        self.pending.clear()
        for w in pending:
            w.resolve(None, None, lost=True)
        self.stream.socket.close()


class _Done:
    """Quorum-call signal: ``enough`` holds."""


class _Look:
    """Quorum-call signal: every request in flight was answered; look at the state again."""


_LOOK = _Look()


class _Raise:
    """Quorum-call signal: a callback raised ``error`` in a connection's reader task."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


@dataclass
class QuorumResult:
    """The outcome of a quorum call: valid replies, and why other targets did not count."""

    replies: dict[NodeId, Any] = field(default_factory=dict)
    errors: dict[NodeId, str] = field(default_factory=dict)


class Endpoint:
    """The calling side of one principal: connections to nodes, calls, quorum calls.

    Create with :func:`open_endpoint`; calls may run concurrently from many tasks and share
    one connection per node (requests are multiplexed by id).
    """

    def __init__(
        self,
        keyring: KeyRing,
        addresses: Mapping[NodeId, tuple[str, int]],
        nursery: trio.Nursery,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        timeout: float = 10.0,
        resend_after: float = 1.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.keyring = keyring
        self.addresses = dict(addresses)
        self.max_frame = max_frame
        self.timeout = timeout
        self.resend_after = resend_after
        self.connect_timeout = connect_timeout
        self._nursery = nursery
        self._conns: dict[NodeId, _Connection] = {}
        self._locks: dict[NodeId, trio.Lock] = {}
        self._down_until: dict[NodeId, float] = {}
        self._down_backoff: dict[NodeId, float] = {}
        #: Nodes whose last connection attempt failed (cleared by the next success); quorum
        #: calls try them last.
        self._dead: set[NodeId] = set()
        self._ids = itertools.count(1)
        self.sent = 0
        self.resent = 0

    @property
    def pid(self) -> PrincipalId:
        return self.keyring.me.pid

    async def _connection(self, node: NodeId) -> _Connection:
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        if node not in self.addresses:
            raise TransportError(f"unknown node {node}")
        if trio.current_time() < self._down_until.get(node, 0.0):
            raise TransportError(f"node {node} unreachable (recently refused)")
        lock = self._locks.setdefault(node, trio.Lock())
        async with lock:
            conn = self._conns.get(node)
            if conn is not None and not conn.closed:
                return conn
            host, port = self.addresses[node]
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(host, port)
                    try:
                        reader = FrameReader(stream, self.max_frame)
                        session = await client_handshake(stream, reader, self.keyring, node)
                    except BaseException:
                        stream.socket.close()
                        raise
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                backoff = min(1.0, self._down_backoff.get(node, 0.01) * 2)
                self._down_backoff[node] = backoff
                self._down_until[node] = trio.current_time() + backoff
                self._dead.add(node)
                raise TransportError(f"node {node} at {host}:{port} unreachable: {e}") from None
            except TransportError:
                self._down_until[node] = trio.current_time() + 0.05
                raise
            self._down_backoff.pop(node, None)
            self._down_until.pop(node, None)
            self._dead.discard(node)
            conn = _Connection(node, stream, reader, session)
            self._conns[node] = conn
            self._nursery.start_soon(conn.run)
            return conn

    async def call(
        self,
        node: NodeId,
        kind: str,
        payload: Any,
        *,
        timeout: float | None = None,
        on_trouble: Callable[[], None] | None = None,
    ) -> Any:
        """Send one request to ``node`` and return its reply, resending on loss.

        Args:
            on_trouble: called (once) the first time the node cannot be reached or does not
                answer within the resend interval; quorum calls use it to probe another node
                early instead of waiting.

        Raises:
            TransportError: no reply within ``timeout`` (default: the endpoint's).
            RemoteError: the node's handler refused the request.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = trio.current_time() + timeout
        req_id = next(self._ids)
        interval = self.resend_after
        last_error = "no reply"
        first = True
        conn: _Connection | None = None
        waiter = _Waiter()
        try:
            while True:
                now = trio.current_time()
                if now >= deadline:
                    raise TransportError(f"node {node}: {last_error} within {timeout:g}s")
                if not first and on_trouble is not None:
                    on_trouble()
                    on_trouble = None
                try:
                    conn = await self._connection(node)
                    if waiter.event.is_set():  # lost with the previous connection
                        waiter = _Waiter()
                    conn.pending[req_id] = waiter
                    conn.send_nowait([REQUEST, req_id, kind, payload])
                except (TransportError, trio.ClosedResourceError) as e:
                    last_error = str(e) if isinstance(e, TransportError) else "connection closed"
                    first = False
                    if on_trouble is not None:  # unreachable: let a quorum call probe now
                        on_trouble()
                        on_trouble = None
                    await trio.sleep(min(interval, max(0.0, deadline - now)))
                    interval = min(interval * 2, 5.0)
                    continue
                if first:
                    self.sent += 1
                else:
                    self.resent += 1
                first = False
                with trio.move_on_at(min(deadline, now + interval)):
                    await waiter.event.wait()
                if waiter.event.is_set() and not waiter.lost:
                    if waiter.status == STATUS_OK:
                        return waiter.body
                    body = waiter.body
                    if isinstance(body, list) and len(body) == 2:
                        raise RemoteError(str(body[0]), str(body[1]))
                    raise RemoteError("malformed", "error reply of unknown shape")
                last_error = "connection lost" if waiter.lost else "no reply"
                interval = min(interval * 2, 5.0)
        finally:
            if conn is not None:
                conn.pending.pop(req_id, None)

    def _live_first(self, targets: list[NodeId]) -> list[NodeId]:
        """``targets`` with nodes that recently refused connections moved to the end.

        The caller's order (e.g. a preferred quorum) is kept otherwise; a node known to be
        down is still tried, but only after the others, so a dead node costs nothing while
        enough others answer.
        """
        now = trio.current_time()
        down = [n for n in targets if self._down_until.get(n, 0.0) > now or n in self._dead]
        if not down:
            return targets
        return [n for n in targets if n not in down] + down

    async def quorum_call(
        self,
        targets: Sequence[NodeId],
        kind: str,
        payload: Any | Callable[[NodeId], Any],
        *,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool] | None = None,
        initial: int | None = None,
        probe_after: float = 0.5,
        timeout: float | None = None,
    ) -> QuorumResult:
        """Send to ``targets`` and return once ``enough`` holds over the valid replies.

        Requests go to the first ``initial`` targets (all by default).  Another target is
        probed whenever one fails, refuses, sends an invalid reply, cannot be reached, or
        ``probe_after`` seconds pass without ``enough`` holding.  Requests still in flight
        when this returns keep running in the background (writes complete at the
        stragglers; their replies are dropped).

        Raises:
            QuorumUnavailable: every target answered or failed, or ``timeout`` passed, and
                ``enough`` never held. The exception carries the partial result.
        """
        targets = self._live_first(list(dict.fromkeys(targets)))
        timeout = self.timeout if timeout is None else timeout
        result = QuorumResult()
        if enough(result.replies):
            return result
        # One channel carries replies and "probe another node now" signals, so the wait below
        # is a single receive. It is unbounded: nothing may block on it after we return.
        #   (node, ok, value)  a finished target (slow path: a task running ``call``)
        #   (node, waiter)     a resolved fast-path waiter
        #   None               probe another target now
        #   _LOOK              nothing in flight any more: check whether to give up
        #   _Done()            ``enough`` holds (after replies taken in by ``on_reply``)
        #   _Raise(e)          ``accept`` or ``enough`` raised inside ``on_reply``
        send, recv = trio.open_memory_channel[Any](float("inf"))
        make = payload if callable(payload) else (lambda _n: payload)
        deadline = trio.current_time() + timeout
        # Fast path: on an open connection, send directly and let the connection's reader
        # push the reply into our channel; no task per target. Slow path (no connection
        # yet, or it broke): a task running ``call``, which connects and resends.
        fast: dict[NodeId, tuple[_Connection, int, _Waiter, Any, float]] = {}

        async def one(node: NodeId, value: Any) -> None:
            try:
                reply = await self.call(
                    node,
                    kind,
                    value,
                    timeout=max(0.0, deadline - trio.current_time()),
                    on_trouble=lambda: send.send_nowait(None),
                )
            except TransportError as e:
                send.send_nowait((node, False, str(e)))
            except RemoteError as e:
                send.send_nowait((node, False, f"refused: {e}"))
            else:
                send.send_nowait((node, True, reply))

        waiting = 0
        next_target = 0
        finished = False  # the call returned or raised: replies go nowhere
        satisfied = False  # ``enough`` held in ``on_reply``; the loop is about to return

        def on_reply(node: NodeId, waiter: _Waiter) -> None:
            """A fast-path reply, taken in by the connection's reader task.

            A valid reply that does not yet make ``enough`` hold is recorded here, so the
            caller's task is woken once per call instead of once per reply; anything else
            (failure, lost connection, stale waiter, past the deadline) goes to the loop
            below as before.  Called synchronously, so it never interleaves with the loop.
            """
            nonlocal waiting, satisfied
            if finished or satisfied:  # a reply after ``enough`` held is a straggler's
                return
            if (
                fast.get(node, (None, None, None))[2] is not waiter
                or waiter.lost
                or waiter.status != STATUS_OK
                or trio.current_time() >= deadline
            ):
                send.send_nowait((node, waiter))
                return
            del fast[node]
            waiting -= 1
            try:
                if accept is None or accept(node, waiter.body):
                    result.replies[node] = waiter.body
                    result.errors.pop(node, None)
                    if enough(result.replies):
                        satisfied = True
                        send.send_nowait(_Done())
                        return
                else:
                    result.errors[node] = "invalid reply"
                    start_next()
            except Exception as e:  # raised in the caller's task, where it belongs
                send.send_nowait(_Raise(e))
                return
            if waiting == 0:
                send.send_nowait(_LOOK)  # the loop decides whether anything is left to try

        def start(node: NodeId, value: Any) -> None:
            conn = self._conns.get(node)
            if conn is not None and not conn.closed:
                req_id = next(self._ids)
                waiter = _Waiter()
                waiter.notify = lambda: on_reply(node, waiter)
                conn.pending[req_id] = waiter
                try:
                    conn.send_nowait([REQUEST, req_id, kind, value])
                except trio.ClosedResourceError:
                    pass  # the waiter was resolved as lost: handled like any failure
                else:
                    self.sent += 1
                fast[node] = (conn, req_id, waiter, value, trio.current_time())
            else:
                self._nursery.start_soon(one, node, value)

        def start_next() -> None:
            nonlocal waiting, next_target
            if next_target < len(targets):
                node = targets[next_target]
                next_target += 1
                waiting += 1
                start(node, make(node))

        def resend_overdue(now: float) -> None:
            for node, (conn, req_id, waiter, value, sent_at) in list(fast.items()):
                if not waiter.event.is_set() and now - sent_at >= self.resend_after:
                    if conn.closed:
                        continue
                    try:
                        conn.send_nowait([REQUEST, req_id, kind, value])
                    except trio.ClosedResourceError:
                        continue
                    self.resent += 1
                    fast[node] = (conn, req_id, waiter, value, now)

        def finish_in_background() -> None:
            for node, (conn, req_id, waiter, value, _) in fast.items():
                if not waiter.event.is_set():
                    self._nursery.start_soon(
                        self._finish, node, kind, conn, req_id, waiter, value, deadline
                    )

        for _ in range(len(targets) if initial is None else max(1, initial)):
            start_next()
        try:
            while True:
                if waiting == 0 and next_target >= len(targets):
                    raise QuorumUnavailable(
                        f"{kind}: quorum not reached ({len(result.replies)} valid of "
                        f"{len(targets)}; errors: {result.errors})",
                        result,
                    )
                now = trio.current_time()
                if now >= deadline:
                    raise QuorumUnavailable(
                        f"{kind}: quorum not reached within {timeout:g}s", result
                    )
                more = next_target < len(targets)
                wake = min(deadline, now + (probe_after if more else self.resend_after))
                if fast:
                    wake = min(wake, now + self.resend_after)
                got: Any = None
                try:  # replies that are in already need no cancel scope and no task switch
                    got = recv.receive_nowait()
                    timed_out = False
                except trio.WouldBlock:
                    timed_out = True
                    with trio.move_on_at(wake):
                        got = await recv.receive()
                        timed_out = False
                if got is None:
                    now = trio.current_time()
                    resend_overdue(now)
                    if more and (not timed_out or now >= wake):
                        start_next()  # slow or troubled: probe one more
                    continue
                if got is _LOOK:
                    continue
                if isinstance(got, _Done):
                    finish_in_background()
                    fast.clear()
                    return result
                if isinstance(got, _Raise):
                    raise got.error
                if len(got) == 2:
                    node, waiter = got
                    entry = fast.pop(node, None)
                    if entry is not None and entry[2] is not waiter:
                        fast[node] = entry  # a stale waiter of an earlier attempt
                        continue
                    ok, value = waiter.outcome()
                    if waiter.lost:  # the connection broke: retry through the slow path
                        self._nursery.start_soon(one, node, entry[3] if entry else make(node))
                        if more:
                            start_next()
                        continue
                else:
                    node, ok, value = got
                waiting -= 1
                if ok and (accept is None or accept(node, value)):
                    result.replies[node] = value
                    result.errors.pop(node, None)
                    if enough(result.replies):
                        finish_in_background()
                        fast.clear()
                        return result
                else:
                    result.errors[node] = value if not ok else "invalid reply"
                    start_next()
        finally:
            finished = True
            for conn, req_id, _, _, _ in fast.values():
                conn.pending.pop(req_id, None)

    async def _finish(
        self,
        node: NodeId,
        kind: str,
        conn: _Connection,
        req_id: int,
        waiter: _Waiter,
        value: Any,
        deadline: float,
    ) -> None:
        """Let a straggler of a quorum call complete: resend until answered or timed out."""
        interval = self.resend_after
        try:
            while not waiter.event.is_set():
                now = trio.current_time()
                if now >= deadline:
                    return
                with trio.move_on_at(min(deadline, now + interval)):
                    await waiter.event.wait()
                if waiter.event.is_set() or conn.closed:
                    break
                with contextlib.suppress(trio.ClosedResourceError):
                    conn.send_nowait([REQUEST, req_id, kind, value])
                    self.resent += 1
                interval = min(interval * 2, 5.0)
            if waiter.lost and trio.current_time() < deadline:
                with contextlib.suppress(TransportError, RemoteError):
                    await self.call(
                        node, kind, value, timeout=max(0.0, deadline - trio.current_time())
                    )
        finally:
            conn.pending.pop(req_id, None)

    async def aclose(self) -> None:
        for conn in list(self._conns.values()):
            conn._close()
        self._conns.clear()


@asynccontextmanager
async def open_endpoint(
    keyring: KeyRing, addresses: Mapping[NodeId, tuple[str, int]], **kwargs: Any
):
    """An :class:`Endpoint` whose connections and stragglers live in their own nursery."""
    async with trio.open_nursery() as nursery:
        ep = Endpoint(keyring, addresses, nursery, **kwargs)
        try:
            yield ep
        finally:
            await ep.aclose()
            nursery.cancel_scope.cancel()
