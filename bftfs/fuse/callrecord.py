"""What a mount's handlers answered and how long they took (``bftfs status``, the mount's
metrics, the statistics logged at unmount), and whether a hard mount is waiting for its
cluster.  The handler wrapper (``fuse/handler.py``) counts every call here."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from bftfs.metrics import Histogram
from bftfs.taskstacks import coro_frames, task_stacks

# The handlers' own logger: an operator greps a mount's log for "bftfs.fuse.operations".
log = logging.getLogger("bftfs.fuse.operations")


#: Seconds a request may be in flight before it is logged at WARNING (again at each
#: doubling): a hard mount on a live cluster waits, never fails (slow is not unavailable),
#: so a request that never ends would otherwise show nowhere but in the program stuck on
#: it (an ``unlink`` waited more than 10 minutes, its daemon idle, once in a benchmark).
LONG_REQUEST = 60.0


@dataclass
class _InFlight:
    """A request being answered: its handler, when it began (``time.perf_counter``), what
    it is about (called only when it is logged), the handler's coroutine once it runs
    (whose await stack says what it waits on: pyfuse3's compiled coroutines above it hide
    it from the task's), and the age at which it is logged next."""

    name: str
    start: float
    what: Callable[[], str]
    coro: Any = None
    warn_at: float = LONG_REQUEST

    def stack(self) -> str:
        """What the request waits on: its handler's await stack."""
        return "" if self.coro is None else coro_frames(self.coro)


class CallRecord:
    """Calls, seconds, EIO and ESTALE answers per handler; a hard mount's wait."""

    def __init__(self) -> None:
        #: Answers other than success by handler and error type (EIO, ESTALE).
        self.errors: Counter[str] = Counter()
        #: EIO answers by handler, and the latest: (wall time, handler, cause).
        self.eio: Counter[str] = Counter()
        self.last_eio: tuple[float, str, str] | None = None
        #: Since when (wall time) a hard mount has been waiting for the cluster, if it is.
        self.unavailable_since: float | None = None
        #: Requests served and seconds spent per handler (logged at unmount: where a
        #: workload's time goes, see :meth:`statistics`).
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        #: The same requests' durations in buckets (the mount's latency histogram).
        self.durations: defaultdict[str, Histogram] = defaultdict(Histogram)
        #: Bytes the kernel's reads were answered and its writes took (the workload's
        #: volume, per mount: JuiceFS exports the same pair).
        self.read_bytes = 0
        self.written_bytes = 0
        #: The requests being answered now, by a number of their own (:meth:`begin`), and
        #: the trio time the latest one ended: whether the mount is quiet (:meth:`quiet`).
        self._in_flight: dict[int, _InFlight] = {}
        self._numbers = itertools.count()
        self.last_done = float("-inf")

    @property
    def inflight(self) -> int:
        """How many requests are being answered now."""
        return len(self._in_flight)

    def begin(self, name: str, start: float, what: Callable[[], str]) -> int:
        """A request of handler ``name`` began at ``start`` (``time.perf_counter``); its
        number, for :meth:`end`."""
        number = next(self._numbers)
        self._in_flight[number] = _InFlight(name, start, what)
        return number

    def awaiting(self, number: int, coro: Any) -> None:
        """Request ``number``'s handler runs as coroutine ``coro`` (its stack: pyfuse3's
        compiled coroutines hide it from the task's)."""
        r = self._in_flight.get(number)
        if r is not None:
            r.coro = coro

    def end(self, number: int) -> None:
        """Request ``number`` was answered (or failed)."""
        self._in_flight.pop(number, None)

    def oldest(self, now: float) -> tuple[str, float] | None:
        """The handler of the request in flight longest and its age in seconds at ``now``
        (``time.perf_counter``), or None when none is (``bftfs status``)."""
        if not self._in_flight:
            return None
        first = min(self._in_flight.values(), key=lambda r: r.start)
        return first.name, now - first.start

    def log_long(self, now: float) -> int:
        """Log at WARNING each request in flight past :data:`LONG_REQUEST` seconds at
        ``now``, once per doubling of its age, with what its handler waits on; when any is,
        every task of the daemon too (what it waits on may be another task that waits in
        turn); how many were logged."""
        logged = 0
        for r in self._in_flight.values():
            age = now - r.start
            if age < r.warn_at:
                continue
            while r.warn_at <= age:
                r.warn_at *= 2
            logged += 1
            log.warning(
                "%s of %s has been waiting %.0fs for the cluster (still waiting) in %s",
                r.name,
                r.what(),
                age,
                r.stack() or "(no frames of bftfs)",
            )
        if not logged:
            return 0
        # Every request's handler too: pyfuse3's tasks show none of their frames.
        handlers = [
            f"{r.name} ({now - r.start:.1f}s): {r.stack()}" for r in self._in_flight.values()
        ]
        tasks = handlers + _every_task()
        if tasks:
            log.warning("the daemon's tasks:\n  %s", "\n  ".join(tasks))
        return logged

    def quiet(self, now: float, seconds: float) -> bool:
        """Whether no request has been in flight for ``seconds`` at trio time ``now``
        (when background work of the daemon's own, ``fuse/gcpace.py``, disturbs nobody)."""
        return self.inflight == 0 and now - self.last_done >= seconds

    def answered_eio(self, name: str, what: str, cause: str, start: float) -> None:
        """Count and log one EIO answer (every one: a program just saw an I/O error);
        ``what``: the path it was about (``fuse/paths.py``)."""
        self.eio[name] += 1
        self.last_eio = (time.time(), name, cause)
        log.warning(
            "%s of %s answered EIO after %.1fs: %s",
            name,
            what,
            time.perf_counter() - start,
            cause,
        )

    def unavailable(self, name: str, e: Exception, waited: float) -> None:
        """A hard mount's call found the cluster unavailable and will try again."""
        if self.unavailable_since is None:
            self.unavailable_since = time.time()
            log.warning(
                "%s: cluster unavailable (%s); hard mount: waiting for it (%.1fs so far)",
                name,
                e,
                waited,
            )

    def available_again(self) -> None:
        """A call succeeded: a hard mount's wait, if any, is over."""
        since = self.unavailable_since
        self.unavailable_since = None
        if since is not None:
            log.warning("the cluster answers again after %.1fs", time.time() - since)

    def statistics(self) -> str:
        """One line per handler: requests, total and mean milliseconds, busiest first."""
        lines = ["handler         calls    total ms   mean ms"]
        for name, secs in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            n = self.calls[name]
            lines.append(f"{name:<14} {n:>6} {secs * 1e3:>11.1f} {secs * 1e3 / n:>9.2f}")
        return "\n".join(lines)


def _every_task() -> list[str]:
    """Every task's await stack of the running trio loop (this package's frames), each
    distinct stack once; empty outside trio."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return []
    return task_stacks(root) if root is not None else []
