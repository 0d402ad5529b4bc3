"""The trio loop around a :class:`~bftfs.net.quorum.QuorumEngine`.

A transport (a :class:`Transmit`) sends requests and reports what comes back by calling
:meth:`QuorumDriver.reply`, :meth:`~QuorumDriver.failed`, :meth:`~QuorumDriver.trouble` or
:meth:`~QuorumDriver.lost` from whatever task sees it: a connection's reader task, a task
making one call, a batch flusher.  Each report is handed to the engine at once and its step
acted on right there (sends never block), so the caller's task sleeps until the verdict or
the engine's next timer, not once per reply.  The caller's task runs :meth:`run`: start,
then wake at :meth:`QuorumEngine.wake_at` for timers, until the verdict.

Reports may arrive while a step is being acted on (a send on a closed connection reports the
loss synchronously); they are queued and handled after it, so the engine sees one event at a
time.  An exception from the caller's predicates (``enough``, ``accept``) or payload
function ends the call and is raised in the caller's task, never in the reporting task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumEngine, QuorumResult, QuorumUnavailable, Step, Verdict
from bftfs.outcome import Patience, current_patience


class Transmit(Protocol):
    """How a driver reaches the nodes (``Endpoint`` connections, or a batcher)."""

    def send(self, node: NodeId) -> None:
        """Send the request to ``node``; report what happens to the driver. Never blocks."""

    def resend(self, node: NodeId) -> None:
        """Send the outstanding request to ``node`` again. Never blocks."""

    def settle(self, verdict: Verdict) -> None:
        """The call is over: let requests in flight finish in the background (``ENOUGH``),
        or drop them."""


class QuorumDriver:
    """Runs one quorum call: feeds reports to the engine and acts on its steps."""

    __slots__ = (
        "engine",
        "transmit",
        "_queue",
        "_busy",
        "_now",
        "_over",
        "_error",
        "_wakeup",
        "_patience",
        "_renew_at",
        "_heard",
    )

    def __init__(self, engine: QuorumEngine, *, renew_at: int | None = None) -> None:
        """``renew_at``: once this many nodes answered (replies or refusals, valid or not),
        every answer renews the caller's patience, however the call ends (None: only a
        completed call does, :func:`bftfs.outcome.progressed`)."""
        self.engine = engine
        #: The calling operation's patience (taken here, in the caller's task: reports
        #: arrive in other tasks, whose context holds another operation's or none).
        self._patience: Patience | None = current_patience() if renew_at is not None else None
        self._renew_at = renew_at or 0
        #: Nodes that answered this call.
        self._heard: set[NodeId] = set()
        self.transmit: Transmit | None = None
        self._queue: deque[tuple[Callable[..., Step], tuple[Any, ...]]] | None = None
        self._busy = False
        #: The time of the event being handled (sends made while acting on it are stamped
        #: with it, saving a clock read per send).
        self._now = 0.0
        self._over: Step | None = None
        self._error: Exception | None = None
        self._wakeup = trio.Event()

    # Reports (from any task) ---------------------------------------------------------------

    @property
    def over(self) -> bool:
        """Whether the call has ended (reports are ignored from then on)."""
        return self._over is not None or self._error is not None

    def reply(self, node: NodeId, value: Any) -> None:
        """``node`` answered ``value``."""
        self._answered(node)
        self._feed(self.engine.on_reply, (node, value))

    def failed(self, node: NodeId, reason: str, *, answered: bool = False) -> None:
        """``node`` will not answer (``reason`` is recorded in the result's errors);
        ``answered``: it said so itself (a refusal), which shows it is there."""
        if answered:
            self._answered(node)
        self._feed(self.engine.on_failure, (node, reason))

    def _answered(self, node: NodeId) -> None:
        """``node`` answered: once ``renew_at`` nodes have, the caller's patience starts
        again (``bftfs.outcome``), however this call ends - a quorum that answers a round
        the caller cuts short (contention: its outcome is clear before the slowest node
        answers) is progress all the same, while the answers of fewer nodes than a quorum
        do not keep an operation on an unavailable cluster waiting past its patience."""
        p = self._patience
        if p is None or self.over:
            return
        self._heard.add(node)
        if len(self._heard) >= self._renew_at:
            p.renew(trio.current_time())

    def trouble(self) -> None:
        """A target is unreachable or slow for now: probe another."""
        self._feed(self.engine.on_trouble, ())

    def lost(self, node: NodeId) -> None:
        """``node``'s connection broke; the transmitter retries it by other means."""
        self._feed(self.engine.on_lost, (node,))

    def watch(self, node: NodeId) -> None:
        """The transmitter resends to ``node`` when told to (:meth:`Transmit.resend`)."""
        self.engine.watch(node, self._now if self._busy else trio.current_time())

    # The caller's task ---------------------------------------------------------------------

    async def run(self, transmit: Transmit) -> QuorumResult:
        """Start the call and wait for its verdict.

        Raises:
            QuorumUnavailable: the engine gave up (its result is attached).
            Exception: whatever ``enough`` or ``accept`` raised.
        """
        self.transmit = transmit
        engine = self.engine
        try:
            self._feed(engine.start, ())
            while not self.over:
                with trio.move_on_at(engine.wake_at()):
                    await self._wakeup.wait()
                if not self.over:
                    self._feed(engine.on_tick, ())
        finally:
            if self._over is None and self._error is None:  # cancelled: drop the stragglers
                self._over = Step(Verdict.UNAVAILABLE, reason="cancelled")
                transmit.settle(Verdict.UNAVAILABLE)
        if self._error is not None:
            raise self._error
        assert self._over is not None
        if self._over.verdict is Verdict.ENOUGH:
            return engine.result
        raise QuorumUnavailable(self._over.reason, engine.result)

    # Internals -----------------------------------------------------------------------------

    def _feed(self, event: Callable[..., Step], args: tuple[Any, ...]) -> None:
        if self._over is not None or self._error is not None:
            return
        if self._busy:  # reported while acting on a step: handled right after it
            if self._queue is None:
                self._queue = deque()
            self._queue.append((event, args))
            return
        self._busy = True
        try:
            self._handle(event, args)
            queue = self._queue
            while queue and not self.over:
                self._handle(*queue.popleft())
        finally:
            self._busy = False
            if self.over and self._queue:
                self._queue.clear()

    def _handle(self, event: Callable[..., Step], args: tuple[Any, ...]) -> None:
        try:
            self._now = now = trio.current_time()
            step = event(*args, now)
            if step.verdict is Verdict.WAIT:
                if step.probe or step.resend:
                    self._act(step)  # a payload function may raise too
                return
        except Exception as e:  # raised in the caller's task, where it belongs
            self._end(None, e)
            return
        self._end(step, None)

    def _act(self, step: Step) -> None:
        transmit = self.transmit
        assert transmit is not None
        for node in step.resend:
            transmit.resend(node)
        for node in step.probe:
            transmit.send(node)

    def _end(self, step: Step | None, error: Exception | None) -> None:
        self._over, self._error = step, error
        self._wakeup.set()
        assert self.transmit is not None
        self.transmit.settle(
            step.verdict if step is not None and error is None else Verdict.UNAVAILABLE
        )
