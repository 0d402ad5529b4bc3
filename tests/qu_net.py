"""A seeded, timed network for the Q/U tests: :class:`MemCluster` replicas behind random
message delays on trio's mock clock (imported explicitly, not a conftest).

:class:`MemEndpoint` (``qu_helpers.py``) delivers one message at a time with no clock, so a
request never overtakes another and stragglers arrive at once.  The real transport does
neither: every request and reply takes its own time, a straggler of a finished quorum call
still arrives (after the client has moved on), and the endpoint *resends* a request
nobody answered, so a server may see it twice, long after.  :class:`DelayNet` models
that: each request and each reply sleeps a seeded random delay (more for slow servers) on
the run's clock, a request may be duplicated (a resend) with a seeded probability, and the
client side is the production :class:`~bftfs.net.quorum.QuorumEngine` as
``Endpoint.quorum_call`` drives it, with real timeouts and probes.  Run under
``trio.testing.MockClock(autojump_threshold=0)`` a run takes no wall time for its waits.

Determinism: the delays come from the net's own ``random.Random``; trio's scheduler
shuffles tasks woken together with a module-level generator, which :func:`seed_trio`
seeds, so one seed is one history.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio
from qu_helpers import MemCluster

from bftfs.ids import NodeId, client_id
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import QuorumEngine, QuorumResult, QuorumUnavailable, Verdict

#: ``(node, ok, value)``: a reply (ok) or a failure reason, as a quorum call records them.
Event = tuple[int, bool, Any]


def seed_trio(seed: int) -> None:
    """Seed the generator trio's scheduler shuffles woken tasks with (its run loop reads a
    module global; there is no public hook), so that a run under one seed repeats."""
    import trio._core._run as run_module  # noqa: PLC0415

    run_module._r.seed(seed)  # noqa: SLF001


class DelayNet:
    """The network between clients and a :class:`MemCluster`: seeded per-message delays.

    Args:
        cluster: the replicas (their ``down``/``byzantine`` sets apply as in ``handle``).
        nursery: where messages in flight live (they outlive the calls that sent them).
        seed: the delays' generator.
        mean: mean one-way delay, seconds (exponentially distributed).
        slow: extra one-way delay of the servers in ``cluster.slow``.
        duplicate: probability that a request is delivered a second time (a resend).
        fifo: deliver each client's requests to a server in the order sent (a TCP
            connection with one handler at a time) instead of independently.
    """

    def __init__(
        self,
        cluster: MemCluster,
        nursery: trio.Nursery,
        *,
        seed: int,
        mean: float = 0.005,
        slow: float = 0.02,
        duplicate: float = 0.0,
        fifo: bool = False,
    ) -> None:
        self.cluster = cluster
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.mean = mean
        self.slow = slow
        self.duplicate = duplicate
        self.fifo = fifo
        #: When the last request from ``(client, server)`` arrives (FIFO mode).
        self._last: dict[tuple[int, int], float] = {}
        #: Every delivery to a server, in arrival order: ``(time, client, server, kind)``.
        self.log: list[tuple[float, int, int, str]] = []

    def delay(self, node: int) -> float:
        d = self.rng.expovariate(1 / self.mean)
        return d + (self.slow if node in self.cluster.slow else 0.0)

    def endpoint(self, k: int, timeout: float = 1.0) -> DelayEndpoint:
        """Client ``k``'s endpoint (``timeout``: its calls' default)."""
        return DelayEndpoint(self, int(client_id(k)), timeout)

    def send(self, src: int, node: int, kind: str, payload: Any, reply_to: Any) -> None:
        """Put a request on the wire; its reply (or failure) goes to ``reply_to`` unless
        that is closed by then, as the transport drops a finished call's stragglers."""
        arrive = trio.current_time() + self.delay(node)
        if self.fifo:
            arrive = max(arrive, self._last.get((src, node), 0.0) + 1e-6)
            self._last[(src, node)] = arrive
        self.nursery.start_soon(self._deliver, src, node, kind, payload, reply_to, arrive)
        if self.rng.random() < self.duplicate:
            again = arrive + self.delay(node) + self.rng.expovariate(1 / (10 * self.mean))
            self.nursery.start_soon(self._deliver, src, node, kind, payload, reply_to, again)

    async def _deliver(
        self, src: int, node: int, kind: str, payload: Any, reply_to: Any, arrive: float
    ) -> None:
        await trio.sleep_until(arrive)
        self.log.append((arrive, src, node, kind))
        try:
            event: Event = (node, True, self.cluster.handle(node, src, kind, payload))
        except TransportError as e:
            if node not in self.cluster.down:
                return  # withheld: no reply ever comes (the call's timeout and probes)
            event = (node, False, str(e))
        except RemoteError as e:  # recorded as the endpoint does (net/errors.py)
            event = (node, False, f"refused: {e}")
        await trio.sleep(self.delay(node))
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            reply_to.send_nowait(event)


class DelayEndpoint:
    """``call`` and ``quorum_call`` of one client over a :class:`DelayNet` (the interface
    of ``bftfs.net.endpoint.Endpoint`` the Q/U client uses)."""

    def __init__(self, net: DelayNet, pid: int, timeout: float) -> None:
        self.net = net
        self.pid = pid
        self.timeout = timeout

    async def call(
        self, node: int, kind: str, payload: Any, *, timeout: float | None = None
    ) -> Any:
        send, recv = trio.open_memory_channel[Event](math.inf)
        self.net.send(self.pid, node, kind, payload, send)
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                _node, ok, value = await recv.receive()
        except trio.TooSlowError:
            raise TransportError(f"node {node}: timed out") from None
        finally:
            send.close()
        if not ok:
            if value.startswith("refused: "):
                code, _, message = value[len("refused: ") :].partition(": ")
                raise RemoteError(code, message)
            raise TransportError(value)
        return value

    async def quorum_call(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        *,
        enough: Callable[[Mapping[int, Any]], bool],
        accept: Callable[[int, Any], bool] | None = None,
        initial: int | None = None,
        probe_after: float = 0.5,
        timeout: float | None = None,
        batch: Any = None,
        renew_at: int | None = None,
    ) -> QuorumResult:
        """The production :class:`QuorumEngine` decides, on the run's clock (no resends by
        the engine: :class:`DelayNet` duplicates requests itself)."""
        engine = QuorumEngine(
            [NodeId(t) for t in targets],
            label=kind,
            enough=enough,
            accept=accept,
            initial=initial,
            probe_after=probe_after,
            resend_after=math.inf,
            timeout=self.timeout if timeout is None else timeout,
            now=trio.current_time(),
        )
        make = payload if callable(payload) else (lambda _n: payload)
        send, recv = trio.open_memory_channel[Event](math.inf)
        try:
            step = engine.start(trio.current_time())
            while step.verdict is Verdict.WAIT:
                for node in step.probe:
                    self.net.send(self.pid, int(node), kind, make(node), send)
                got: Event | None = None
                with trio.move_on_at(engine.wake_at()):
                    got = await recv.receive()
                now = trio.current_time()
                if got is None:
                    step = engine.on_tick(now)
                elif got[1]:
                    step = engine.on_reply(NodeId(got[0]), got[2], now)
                else:
                    step = engine.on_failure(NodeId(got[0]), got[2], now)
        finally:
            send.close()
        if step.verdict is Verdict.ENOUGH:
            return engine.result
        raise QuorumUnavailable(step.reason, engine.result)
