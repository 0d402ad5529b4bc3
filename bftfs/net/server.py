"""The answering side of a connection: handshake, then dispatch of requests to handlers.

What a node runs for each accepted connection, kept here (not in the node) so that the
transport's two halves live together and a node is an ordinary client of the others through
``net/endpoint.py``.  :class:`Server` runs the server half of the handshake
(``session.server_handshake``) and then reads frames: a frame that fails authentication is
dropped and counted by reason, never parsed further; each authenticated request runs in its
own task so that slow requests (a durable write) do not hold up others, unless its handler
never waits (``inline``) or answers it synchronously (``fast``), which saves the task and
its switches.  Handlers refuse with :class:`HandlerError`; any other exception is logged
(once per kind of failure), counted and answered as ``internal`` - nothing a peer sends can
stop the server.  A message of any kind but a request (a client has no business sending a
push) is dropped and counted (``rejected["malformed"]``).

Pushes (issue 33: a lease recall): the server keeps each authenticated principal's open
connections, and :meth:`Server.push` seals a message to every one of them, unasked; it never
waits and never fails for a connection that is gone, so request handlers may call it.

Admission (``net/admission.py``): a server given an :class:`~bftfs.net.admission.Admission`
makes each limited principal's request wait, unread further, for its rate tokens and an
in-flight slot before it is dispatched; the slot is given back when the reply is sent.

Replies and pushes wait in a connection's :class:`~bftfs.net.frames.FrameWriter` until the
peer's TCP window takes them.  A peer that never reads (seed 002 L14-19: a Byzantine
principal's network stack may withhold its acknowledgements) must not make that backlog
grow: once it holds more than :data:`REPLY_BACKLOG` bytes the read loop stops reading that
connection's requests until the peer has taken enough (TCP then pushes back on the
sender), and :meth:`Server.push` drops pushes to it (a push is never confirmed anyway).
docs/buffers.md has the bound this gives.

Fault injection (tests only) hooks in at three points (:class:`FaultHooks`): the raw frame
(corruption), the authenticated request (drop, duplicate, delay, reorder), and the reply
(drop).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import trio

from bftfs.crypto import KeyRing
from bftfs.ids import PrincipalId, is_node
from bftfs.metrics import Histogram
from bftfs.net.admission import Admission
from bftfs.net.errors import FrameError
from bftfs.net.frames import (
    DEFAULT_MAX_FRAME,
    PUSH,
    REPLY,
    REQUEST,
    STATUS_ERROR,
    STATUS_OK,
    FrameReader,
    FrameWriter,
    pack,
    packed,
)
from bftfs.net.session import Prover, Session, server_handshake
from bftfs.net.wires import versions

#: How long a new connection may take to say hello before it is closed.
HANDSHAKE_TIMEOUT = 5.0
#: Bytes of replies and pushes a connection may hold unsent before its requests are no
#: longer read (and pushes to it are dropped): one largest frame.
REPLY_BACKLOG = DEFAULT_MAX_FRAME

#: What handlers are given with each request (the node's ``RequestContext``).
Ctx = TypeVar("Ctx")

Handler = Callable[[Any, Any], Awaitable[Any]]
#: A synchronous first try at a request (see :meth:`Server.register`): the reply, or
#: :data:`DEFER` to hand the request to the (asynchronous) handler.
FastHandler = Callable[[Any, Any], Any]


class HandlerError(Exception):
    """A handler refuses a request; the caller gets ``RemoteError(code, message)``."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Defer:
    """The type of :data:`DEFER`."""

    def __repr__(self) -> str:
        return "DEFER"


#: What a fast handler returns when the request needs the full handler (it must wait).
DEFER: Any = _Defer()


class FaultHooks(Protocol):
    """What a fault injector must offer the server (see ``bftfs.testing.faults``)."""

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes: ...

    def plan(self, sender: PrincipalId) -> list[float]: ...

    def drop_reply(self, sender: PrincipalId) -> bool: ...

    def handler(self, kind: str) -> Callable[[Any, Any, Handler], Awaitable[Any]] | None: ...


class Server(Generic[Ctx]):
    """Serves accepted connections (:meth:`serve`) with the registered handlers.

    Args:
        keyring: our identity and the keys of the principals allowed to connect.
        context: builds, once per connection, what handlers receive about the sender.
        faults: fault injection (tests only).
        admission: per-principal rate and in-flight limits (None: none).
        log: where handler failures are logged; ``name`` prefixes those lines.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        context: Callable[[PrincipalId], Ctx],
        max_frame: int = DEFAULT_MAX_FRAME,
        faults: FaultHooks | None = None,
        admission: Admission | None = None,
        log: logging.Logger | None = None,
        name: str = "server",
    ) -> None:
        self.keyring = keyring
        self.max_frame = max_frame
        self.faults = faults
        self.admission = admission
        self.log = log or logging.getLogger(__name__)
        self.name = name
        self._context = context
        #: Requests by kind and outcome (the node's ``stats``; handlers add their own).
        self.stats: Counter[str] = Counter()
        #: Frames and connections refused, by reason.
        self.rejected: Counter[str] = Counter()
        #: Frames and bytes received and sent after the handshake (``frames_in``,
        #: ``bytes_in``, ``frames_out``, ``bytes_out``): what the benchmarks' per-node
        #: message and byte counts are made of.
        self.traffic: Counter[str] = Counter()
        #: Seconds spent answering requests, by kind (with ``stats["req.KIND"]``, the mean
        #: latency; Prometheus metrics).
        self.seconds: defaultdict[str, float] = defaultdict(float)
        #: The same requests' durations in buckets (the node's latency histogram).
        self.durations: defaultdict[str, Histogram] = defaultdict(Histogram)
        self._handlers: dict[str, Handler] = {}
        self._inline: set[str] = set()
        self._fast: dict[str, FastHandler] = {}
        self._logged_internal: set[str] = set()
        #: trio times of a client's (not a node's) latest request or big frame's bytes
        #: arriving (:meth:`client_active`) and of the start of their run, which a gap of
        #: ``busy_gap`` ends: background work yields to them (``rw/lazy.stream_state``).
        self.last_client_request = self.client_busy_since = 0.0
        self.busy_gap = 0.5
        #: Client requests being answered now, from their frame's read (past admission) to
        #: their reply: the node's background work yields while any are (node/yielding.py).
        self.client_inflight = 0
        #: Request kinds that are not client activity (status polls: ``ping``, ``stats``):
        #: they move neither clock above, so a monitor does not hold verification back.
        self.monitoring: set[str] = set()
        #: The open connections of each authenticated principal (what :meth:`push` reaches).
        self._open: dict[PrincipalId, list[_ServerConnection[Ctx]]] = {}
        #: The number of the view this server holds, told to every caller in the
        #: handshake (docs/membership.md; 0: no views).
        self.view_number = 0
        #: Principals refused with a reason, each with the pairwise key of its old key
        #: (``session.server_handshake``); the node's view keeps it (node/views.py).
        self.refused: dict[PrincipalId, tuple[bytes, str]] = {}
        #: Signs the handshake's proof that this server holds its view (its key for that
        #: view: ``node/views.py``); None: no per-view keys.
        self.prove: Prover | None = None
        #: Called with each caller and the view number its hello carried, after the
        #: handshake (a node behind fetches the newer view; one ahead sends its own).
        self.on_peer_view: Callable[[PrincipalId, int], None] | None = None

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        inline: bool = False,
        fast: FastHandler | None = None,
        replace: bool = False,
    ) -> None:
        """Route requests of ``kind`` to ``handler`` (one handler per kind).

        Args:
            inline: the handler never waits (no store write, no network call): it runs in
                the connection's read loop instead of a task of its own, which saves a task
                switch per request. A handler that does wait must not be inline: it would
                hold up every later request on its connection.
            fast: for a handler that waits only sometimes: a synchronous function tried
                first, in the read loop, that answers the request itself or returns
                :data:`DEFER`, and then ``handler`` runs in a task as usual.  A request
                answered this way costs no task, no task switch and no wake-up of the
                store's committer (a Q/U query, or a Q/U update on a store that does not
                fsync, is one synchronous LMDB transaction).  It must not have changed
                anything when it defers.  Fault injection always takes the task path.
            replace: allow replacing an earlier handler of ``kind``.

        Raises:
            ValueError: ``kind`` has a handler already and ``replace`` is false.
        """
        if kind in self._handlers and not replace:
            raise ValueError(f"handler for {kind!r} registered twice")
        self._handlers[kind] = handler
        if inline:
            self._inline.add(kind)
        else:
            self._inline.discard(kind)
        if fast is not None and not inline:
            self._fast[kind] = fast
        else:
            self._fast.pop(kind, None)

    def handler(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def push(self, principal: PrincipalId, body: Any) -> int:
        """Send ``body`` (any msgpack value) unasked to ``principal`` on each of its open
        connections; how many that was (0: it has none open).

        Never waits (the frames are written or queued, as replies are) and never raises for
        a connection that is gone, so request handlers may call it.  A connection holding
        more than :data:`REPLY_BACKLOG` bytes unsent gets none (counted ``pushes_dropped``):
        its principal does not read, and queueing for it would grow without bound.  Delivery is not
        confirmed: a connection that breaks now loses the push, so a caller must not
        depend on its arrival (a lease recall is also a lease's expiry, issue 33).

        Raises:
            TypeError: ``body`` cannot be encoded (a caller's mistake, found at once).
        """
        conns = self._open.get(principal)
        if not conns:
            return 0
        message = pack([PUSH, 0, 0, body])  # sealed once per connection, packed once
        sent = 0
        for conn in conns:
            if conn.writer.pending > REPLY_BACKLOG:  # the principal does not read
                self.stats["pushes_dropped"] += 1
                continue
            if conn.send_packed(message):
                sent += 1
        self.stats["pushes"] += sent
        return sent

    def end_sessions(self, principals: set[int]) -> int:
        """End every open connection of ``principals`` now (a view revoked them or replaced
        their keys): requests in flight on them are cancelled unanswered, and a new
        connection must pass the handshake under the current keys.  How many ended."""
        ended = 0
        for pid in principals:
            for conn in list(self._open.get(PrincipalId(pid), ())):
                conn.scope.cancel()
                ended += 1
        self.stats["sessions_ended"] += ended
        return ended

    def sessions(self) -> list[dict[str, Any]]:
        """The open connections of clients: who, from where, since when, how many
        requests, what bftfs and wire each speaks (plain values, for ``bftfs status``)."""
        return [
            {
                "client": int(pid),
                "address": conn.address,
                "since": round(conn.since, 1),
                "requests": conn.requests,
                **versions(conn.session),
            }
            for pid, conns in sorted(self._open.items())
            if not is_node(pid)
            for conn in conns
        ]

    def peers(self) -> dict[str, dict[str, Any]]:
        """What bftfs and wire each node connected here speaks (its latest connection)."""
        return {
            str(int(pid)): versions(conns[-1].session)
            for pid, conns in sorted(self._open.items())
            if is_node(pid) and conns
        }

    def connected(self, principal: PrincipalId) -> int:
        """How many connections of ``principal`` are open (those :meth:`push` would use)."""
        return len(self._open.get(principal, ()))

    async def serve(self, stream: trio.SocketStream) -> None:
        """Handshake, then answer requests until the connection ends (for
        ``trio.serve_listeners``)."""
        self.stats["connections"] += 1
        reader = FrameReader(stream, self.max_frame)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                sender, session = await server_handshake(
                    stream, reader, self.keyring, self.view_number, self.refused, self.prove
                )
        except FrameError as e:
            if e.reason == "probe":  # connected and closed, nothing sent: not a refusal
                self.stats["probes"] += 1
            else:
                self.rejected[e.reason] += 1
            await stream.aclose()
            return
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.rejected["handshake_failed"] += 1
            await stream.aclose()
            return
        conn = _ServerConnection(stream, session, sender, self._context(sender), self.traffic)
        self._open.setdefault(sender, []).append(conn)
        if self.on_peer_view is not None and session.peer_view != self.view_number:
            self.on_peer_view(sender, session.peer_view)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.writer.run)
                    await self._read_loop(conn, reader, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            self._forget(conn)
            conn.close()
            await stream.aclose()

    def _forget(self, conn: _ServerConnection[Ctx]) -> None:
        """Take a closing connection out of its principal's open ones."""
        conns = self._open.get(conn.sender)
        if conns is None:
            return
        conns.remove(conn)
        if not conns:
            del self._open[conn.sender]

    async def _read_loop(
        self, conn: _ServerConnection[Ctx], reader: FrameReader, nursery: trio.Nursery
    ) -> None:
        sender = conn.sender
        faults = self.faults
        traffic = self.traffic
        writer = conn.writer
        if sender is not None and not is_node(sender):
            reader.on_progress = lambda _got, _left: self.client_active(trio.current_time())
        while True:
            if writer.pending > REPLY_BACKLOG:
                # The sender does not take its replies: read nothing more from it until it
                # does (module docstring), so that its requests wait in its own socket.
                self.stats["backlog_waits"] += 1
                await writer.wait_below(REPLY_BACKLOG)
            try:
                frame = await reader.read()
            except FrameError as e:  # oversized or truncated: the stream cannot be trusted
                self.rejected[e.reason] += 1
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if frame is None:
                return
            traffic["frames_in"] += 1
            traffic["bytes_in"] += len(frame)
            if faults is not None:
                frame = faults.on_frame(sender, bytes(frame))
            try:
                _seq, typ, req_id, kind, payload = conn.session.open(frame)
            except FrameError as e:
                self.rejected[e.reason] += 1
                if e.reason == "bad_mac":
                    continue  # framing is intact; drop this frame only
                return
            if typ != REQUEST or not isinstance(kind, str):
                self.rejected["malformed"] += 1
                continue
            conn.requests += 1
            client = sender is not None and not is_node(sender) and kind not in self.monitoring
            if client:
                self.client_active(trio.current_time())
            admission = self.admission
            done: Callable[[], None] | None = None
            if admission is not None and admission.limited(sender):
                # Backpressure: this connection is not read again until the sender may
                # have this request answered (net/admission.py).
                await admission.admit(sender, _items(kind, payload), len(frame))
                done = _releaser(admission, sender)
            if client:
                self.client_inflight += 1
                done = self._client_done if done is None else _both(done, self._client_done)
            if faults is None:
                if kind in self._inline:
                    await self._dispatch(conn, req_id, kind, payload, 0.0, done)
                    continue
                fast = self._fast.get(kind)
                if fast is not None and self._dispatch_fast(conn, req_id, kind, payload, fast):
                    if done is not None:
                        done()
                    continue
                nursery.start_soon(self._dispatch, conn, req_id, kind, payload, 0.0, done)
                continue
            plan = faults.plan(sender)
            if done is not None:
                done = _countdown(done, len(plan))
            for delay in plan:
                nursery.start_soon(self._dispatch, conn, req_id, kind, payload, delay, done)

    def client_active(self, now: float) -> None:
        """A client request, or a chunk of a client's big frame, arrived at ``now``."""
        if now - self.last_client_request >= self.busy_gap:
            self.client_busy_since = now
        self.last_client_request = now

    def _client_done(self) -> None:
        self.client_inflight -= 1

    def _dispatch_fast(
        self,
        conn: _ServerConnection[Ctx],
        req_id: int,
        kind: str,
        payload: Any,
        fast: FastHandler,
    ) -> bool:
        """Try ``fast`` (see :meth:`register`); whether it answered the request."""
        start = time.perf_counter()
        try:
            reply = fast(conn.context, payload)
            if reply is DEFER:
                return False
            msg = [REPLY, req_id, STATUS_OK, reply]
        except HandlerError as e:
            self.stats["refused"] += 1
            msg = [REPLY, req_id, STATUS_ERROR, [e.code, e.message]]
        except Exception as e:
            msg = self._internal(kind, e, req_id)
        self.stats[f"req.{kind}"] += 1
        took = time.perf_counter() - start
        self.seconds[kind] += took
        self.durations[kind].observe(took)
        conn.send(msg)
        return True

    def _internal(self, kind: str, e: Exception, req_id: int) -> list[Any]:
        """Count and log (once per kind of failure) a handler's unexpected exception; the
        error reply."""
        self.stats["internal_errors"] += 1
        key = f"{kind}:{type(e).__name__}"
        if key not in self._logged_internal:  # log each kind of failure once
            self._logged_internal.add(key)
            self.log.exception("%s: handler %s failed", self.name, kind[:64])
        return [REPLY, req_id, STATUS_ERROR, ["internal", type(e).__name__]]

    async def _dispatch(
        self,
        conn: _ServerConnection[Ctx],
        req_id: int,
        kind: str,
        payload: Any,
        delay: float,
        done: Callable[[], None] | None = None,
    ) -> None:
        try:
            if delay:
                await trio.sleep(delay)
            known = kind in self._handlers
            self.stats[f"req.{kind}" if known else "req.unknown"] += 1
            start = time.perf_counter()
            try:
                handler = self._handlers.get(kind)
                if handler is None:
                    raise HandlerError("unknown_kind", f"no handler for {kind[:64]!r}")
                override = None if self.faults is None else self.faults.handler(kind)
                if override is not None:
                    reply = await override(conn.context, payload, handler)
                else:
                    reply = await handler(conn.context, payload)
                msg = [REPLY, req_id, STATUS_OK, reply]
            except HandlerError as e:
                self.stats["refused"] += 1
                msg = [REPLY, req_id, STATUS_ERROR, [e.code, e.message]]
            except Exception as e:
                msg = self._internal(kind, e, req_id)
            took = time.perf_counter() - start
            self.seconds[kind if known else "unknown"] += took
            self.durations[kind if known else "unknown"].observe(took)
            if self.faults is not None and self.faults.drop_reply(conn.sender):
                return
            conn.send(msg)
        finally:
            if done is not None:
                done()  # the sender's in-flight slot, however the answer ended


def _peer_address(stream: trio.SocketStream) -> str:
    """``host:port`` of the other end of ``stream`` ("?" when the socket cannot say)."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError, TypeError):
        return "?"
    return f"{host}:{port}"


def _items(kind: str, payload: Any) -> int:
    """How many requests a frame counts for admission: a batch (``*.batch``, a list of
    ``[kind, payload]`` items) one per item, anything else one."""
    if kind.endswith(".batch") and isinstance(payload, list):
        return max(1, len(payload))
    return 1


def _both(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        then()

    return both


def _releaser(admission: Admission, sender: PrincipalId) -> Callable[[], None]:
    return lambda: admission.release(sender)


def _countdown(done: Callable[[], None], copies: int) -> Callable[[], None]:
    """``done`` called once the last of ``copies`` calls arrives (a request the fault hooks
    duplicated holds one slot until every copy is answered; dropped: released now)."""
    if copies == 0:
        done()
        return lambda: None
    left = [copies]

    def one() -> None:
        left[0] -= 1
        if left[0] == 0:
            done()

    return one


class _ServerConnection(Generic[Ctx]):
    """The sending half of one accepted connection, and who is on the other end."""

    __slots__ = (
        "session",
        "sender",
        "context",
        "writer",
        "traffic",
        "scope",
        "address",
        "since",
        "requests",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        session: Session,
        sender: PrincipalId,
        context: Ctx,
        traffic: Counter[str],
    ) -> None:
        self.session = session
        self.sender = sender
        #: What handlers receive about the sender (built once per connection).
        self.context = context
        self.writer = FrameWriter(stream)
        #: The server's frame and byte counters (``Server.traffic``).
        self.traffic = traffic
        #: Cancelled to end the session (``Server.end_sessions``).
        self.scope = trio.CancelScope()
        #: Where the peer connects from (``host:port``), since when (Unix time), and how
        #: many requests it sent: ``bftfs status`` lists the sessions of every node.
        self.address = _peer_address(stream)
        self.since = time.time()
        self.requests = 0

    def send(self, msg: list[Any]) -> None:
        with packed(msg) as body:
            self.send_packed(body)

    def send_packed(self, body: bytes | memoryview) -> bool:
        """Seal and send (or queue) one packed message; False if the connection is gone
        (a reply's client will resend; a push is lost with the connection)."""
        if self.writer.closed:
            return False
        frame = self.session.seal_body(body)
        traffic = self.traffic
        traffic["frames_out"] += 1
        traffic["bytes_out"] += len(frame)
        try:
            self.writer.write(frame)
        except trio.ClosedResourceError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()
