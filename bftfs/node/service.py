"""A storage node: the trio listener, authenticated dispatch, built-in handlers.

The node owns one LMDB :class:`~bftfs.node.store.Store`, one listening socket and an
:class:`~bftfs.transport.Endpoint` for node-to-node calls.  Protocol modules register their
handlers (``bftfs/node/protocols.py``).  For each connection the node runs the server half
of the handshake (``transport.server_handshake``) and then reads frames: a frame that fails
authentication is dropped and counted by reason, never parsed further; each authenticated
request runs in its own task so that slow requests (a durable write) do not hold up others,
unless its handler never waits (``inline``) or answers it synchronously (``fast``: a Q/U
request that needs no fsync and no object sync), which saves the task and its switches.
Handlers refuse with :class:`HandlerError`; any other exception is logged (rate-limited),
counted and answered as ``internal`` — nothing a peer sends can stop the node.

Fault injection (tests only) hooks in at three points: the raw frame (corruption), the
authenticated request (drop, duplicate, delay, reorder), and the reply (drop).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bftfs import WIRE_VERSION, __version__
from bftfs.config import ClusterConfig
from bftfs.crypto import Identity, KeyRing
from bftfs.ids import PrincipalId, is_node
from bftfs.node.protocols import register_all
from bftfs.node.store import Store
from bftfs.transport import (
    DEFAULT_MAX_FRAME,
    REPLY,
    REQUEST,
    STATUS_ERROR,
    STATUS_OK,
    Endpoint,
    FrameError,
    FrameReader,
    FrameWriter,
    Session,
    open_endpoint,
    server_handshake,
)

if TYPE_CHECKING:
    from bftfs.node.rw_verifier import Verifier

log = logging.getLogger(__name__)

#: How long a new connection may take to say hello before it is closed.
HANDSHAKE_TIMEOUT = 5.0


class HandlerError(Exception):
    """A handler refuses a request; the caller gets ``RemoteError(code, message)``."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RequestContext:
    """Who sent a request (authenticated) and which node is handling it."""

    sender: PrincipalId
    node: Node


Handler = Callable[[RequestContext, Any], Awaitable[Any]]
#: A synchronous first try at a request (see :meth:`Node.register`): the reply, or
#: :data:`DEFER` to hand the request to the (asynchronous) handler.
FastHandler = Callable[[RequestContext, Any], Any]


class _Defer:
    """The type of :data:`DEFER`."""

    def __repr__(self) -> str:
        return "DEFER"


#: What a fast handler returns when the request needs the full handler (it must wait).
DEFER: Any = _Defer()


class FaultHooks(Protocol):
    """What a fault injector must offer the node (see ``bftfs.testing.faults``)."""

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes: ...

    def plan(self, sender: PrincipalId) -> list[float]: ...

    def drop_reply(self, sender: PrincipalId) -> bool: ...

    def handler(
        self, kind: str
    ) -> Callable[[RequestContext, Any, Handler], Awaitable[Any]] | None: ...


class Node:
    """One storage node. Run with :meth:`run`; protocol modules call :meth:`register`."""

    def __init__(
        self,
        config: ClusterConfig,
        identity: Identity,
        *,
        listeners: list[trio.SocketListener] | None = None,
        faults: FaultHooks | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        endpoint_options: dict[str, Any] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        object_types: Sequence[Any] | None = None,
    ) -> None:
        self.config = config
        self.id = identity.pid
        self.spec = config.node(self.id)
        self.keyring = KeyRing(identity, config.public_keys())
        self.log = logging.getLogger(f"bftfs.node.{self.id}")
        self.faults = faults
        self.now_ns = clock_ns
        self.max_frame = max_frame
        #: The Q/U object types served (None: the file system's, ``node/protocols.py``).
        self.object_types = object_types
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._handlers: dict[str, Handler] = {}
        self._inline: set[str] = set()
        self._fast: dict[str, FastHandler] = {}
        self._listeners = listeners
        self._endpoint_options = endpoint_options or {}
        self._nursery: trio.Nursery | None = None
        self.store: Store = None  # type: ignore[assignment]  # set in run()
        self.endpoint: Endpoint = None  # type: ignore[assignment]  # set in run()
        self.started = time.time()
        self.protocols: list[str] = []
        #: Progress of background work by name (``qu.catchup``, ``rw.catchup``): plain
        #: values a protocol module keeps current, shown by ``bftfs status``.
        self.progress: dict[str, dict[str, Any]] = {}
        #: Set when the background work of the same name has finished (tests wait on it).
        self.finished: dict[str, trio.Event] = {}
        self._logged_internal: set[str] = set()
        #: trio time of the latest request from a client (not a node): background work
        #: (lazy verification) runs when this is old enough.
        self.last_client_request = 0.0
        #: The lazy-verification task (node/rw_verifier.py), when the policy runs one.
        self.verifier: Verifier | None = None
        self.register("ping", _ping, inline=True)
        self.register("stats", _stats, inline=True)

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        inline: bool = False,
        fast: FastHandler | None = None,
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
        """
        if kind in self._handlers and kind not in ("ping", "stats"):
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

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background for the node's lifetime."""
        assert self._nursery is not None, "node not running"
        self._nursery.start_soon(fn, *args)

    @property
    def lmdb_path(self) -> Path:
        return self.spec.data_dir / "lmdb"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        self.store = Store(
            self.lmdb_path, map_size=self.config.map_size, durable=self.config.durable
        )
        try:
            addresses = {s.id: (s.host, s.port) for s in self.config.nodes}
            async with open_endpoint(self.keyring, addresses, **self._endpoint_options) as ep:
                self.endpoint = ep
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.store.committer)
                    self.protocols = register_all(self, self.object_types)
                    listeners = self._listeners
                    if listeners is None:
                        listeners = await trio.open_tcp_listeners(
                            self.spec.port, host=self.spec.host
                        )
                    self._listeners = None  # a restarted node binds afresh
                    port = listeners[0].socket.getsockname()[1]
                    await nursery.start(trio.serve_listeners, self._serve, listeners)
                    self.log.info("node %s listening on %s:%s", self.id, self.spec.host, port)
                    task_status.started(port)
        finally:
            self._nursery = None
            self.store.close()

    # Connections ---------------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.stats["connections"] += 1
        reader = FrameReader(stream, self.max_frame)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                sender, session = await server_handshake(stream, reader, self.keyring)
        except FrameError as e:
            self.rejected[e.reason] += 1
            await stream.aclose()
            return
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.rejected["handshake_failed"] += 1
            await stream.aclose()
            return
        conn = _ServerConnection(self, stream, session, sender)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.writer.run)
                await self._read_loop(conn, reader, nursery)
                nursery.cancel_scope.cancel()
        finally:
            conn.close()
            await stream.aclose()

    async def _read_loop(
        self, conn: _ServerConnection, reader: FrameReader, nursery: trio.Nursery
    ) -> None:
        sender = conn.sender
        faults = self.faults
        while True:
            try:
                frame = await reader.read()
            except FrameError as e:  # oversized or truncated: the stream cannot be trusted
                self.rejected[e.reason] += 1
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if frame is None:
                return
            if faults is not None:
                frame = faults.on_frame(sender, frame)
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
            if sender is not None and not is_node(sender):
                self.last_client_request = trio.current_time()  # background work yields
            if faults is None:
                if kind in self._inline:
                    await self._dispatch(conn, req_id, kind, payload, 0.0)
                    continue
                fast = self._fast.get(kind)
                if fast is None or not self._dispatch_fast(conn, req_id, kind, payload, fast):
                    nursery.start_soon(self._dispatch, conn, req_id, kind, payload, 0.0)
                continue
            for delay in faults.plan(sender):
                nursery.start_soon(self._dispatch, conn, req_id, kind, payload, delay)

    def _dispatch_fast(
        self, conn: _ServerConnection, req_id: int, kind: str, payload: Any, fast: FastHandler
    ) -> bool:
        """Try ``fast`` (see :meth:`register`); whether it answered the request."""
        try:
            reply = fast(RequestContext(conn.sender, self), payload)
            if reply is DEFER:
                return False
            msg = [REPLY, req_id, STATUS_OK, reply]
        except HandlerError as e:
            self.stats["refused"] += 1
            msg = [REPLY, req_id, STATUS_ERROR, [e.code, e.message]]
        except Exception as e:
            msg = self._internal(kind, e, req_id)
        self.stats[f"req.{kind}"] += 1
        conn.send(msg)
        return True

    def _internal(self, kind: str, e: Exception, req_id: int) -> list[Any]:
        """Count and log (once per kind of failure) a handler's unexpected exception; the
        error reply."""
        self.stats["internal_errors"] += 1
        key = f"{kind}:{type(e).__name__}"
        if key not in self._logged_internal:  # log each kind of failure once
            self._logged_internal.add(key)
            self.log.exception("node %s: handler %s failed", self.id, kind[:64])
        return [REPLY, req_id, STATUS_ERROR, ["internal", type(e).__name__]]

    async def _dispatch(
        self, conn: _ServerConnection, req_id: int, kind: str, payload: Any, delay: float
    ) -> None:
        if delay:
            await trio.sleep(delay)
        self.stats[f"req.{kind}" if kind in self._handlers else "req.unknown"] += 1
        ctx = RequestContext(conn.sender, self)
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                raise HandlerError("unknown_kind", f"no handler for {kind[:64]!r}")
            override = None if self.faults is None else self.faults.handler(kind)
            if override is not None:
                reply = await override(ctx, payload, handler)
            else:
                reply = await handler(ctx, payload)
            msg = [REPLY, req_id, STATUS_OK, reply]
        except HandlerError as e:
            self.stats["refused"] += 1
            msg = [REPLY, req_id, STATUS_ERROR, [e.code, e.message]]
        except Exception as e:
            msg = self._internal(kind, e, req_id)
        if self.faults is not None and self.faults.drop_reply(conn.sender):
            return
        conn.send(msg)

    def statistics(self) -> dict[str, Any]:
        """Counters and sizes for ``bftfs status`` (plain values, ready for the wire)."""
        return {
            "node": self.id,
            "version": __version__,
            "wire": WIRE_VERSION,
            "address": self.spec.address,
            "uptime_s": round(time.time() - self.started, 1),
            "lmdb_bytes": self.store.size_bytes() if self.store is not None else 0,
            "commits": self.store.commits if self.store is not None else 0,
            "requests": dict(self.stats),
            "rejected": dict(self.rejected),
            "protocols": self.protocols,
            "progress": {k: dict(v) for k, v in self.progress.items()},
        }


class _ServerConnection:
    """The sending half of one accepted connection."""

    def __init__(
        self, node: Node, stream: trio.SocketStream, session: Session, sender: PrincipalId
    ) -> None:
        self.node = node
        self.session = session
        self.sender = sender
        self.writer = FrameWriter(stream)

    def send(self, msg: list[Any]) -> None:
        if self.writer.closed:
            return  # the connection is gone; the client will resend
        try:  # noqa: SIM105  (hot path: try/except is cheaper than contextlib.suppress)
            self.writer.write(self.session.seal(msg))
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        self.writer.close()


async def _ping(ctx: RequestContext, payload: Any) -> Any:
    return {"node": ctx.node.id, "time_ns": ctx.node.now_ns(), "echo": payload}


async def _stats(ctx: RequestContext, payload: Any) -> Any:
    return ctx.node.statistics()
