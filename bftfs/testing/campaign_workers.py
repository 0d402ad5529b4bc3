"""Run independent, CPU-bound test jobs (campaign schedules, fault-matrix slices) on worker
processes, as if they ran in this one.

The slow suite runs serially on a 2-core machine, and the campaign's schedules and the
PASIS placement matrix each keep one core busy in one process (an in-process cluster: every
node in the test's trio loop).  Each job is independent and seeded, so running them on
spawned processes changes nothing they check - provided nothing a job reports is lost on
the way back.  What the test process would have seen is carried back with each result:

- log records of level WARNING or higher (``tests/checklogs.py`` fails a test on any it
  did not declare), re-emitted here on the same logger, in job order;
- Python warnings, under this process's filters (pytest's ``filterwarnings = error`` makes
  them exceptions, which a job reports as it would here);
- unraisable exceptions and exceptions escaping threads, which pytest turns into failures
  in its own process: re-emitted as ERROR records of this module's logger.

A job's INFO records are not carried (too many); :func:`recent_info` keeps the last of the
protocol's own (why a read widened, asked silent nodes again, backed off) for a job to put
in its failure's text: a hang that a replay does not reproduce is then still explained.

Workers are started with ``spawn`` (never ``fork``: trio and threads), and are killed, not
waited for, when the caller stops early (a finding, an exception, a test's timeout).  A job
that raises re-raises here with the job's remote traceback; a worker that dies (killed,
out of memory) raises :class:`~concurrent.futures.process.BrokenProcessPool`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Environment variable: how many worker processes the long campaigns and matrices use
#: (1: run in the test process, as before; unset: each test's own number).
WORKERS_ENV = "BFTFS_TEST_WORKERS"

log = logging.getLogger(__name__)
#: Loggers whose INFO records :func:`recent_info` keeps: the protocol's decisions.
PROTOCOL_LOGGERS = ("bftfs.rw", "bftfs.qu", "bftfs.fs")
#: How many of the last such records it keeps.
RECENT = 400


def default_workers(fallback: int) -> int:
    """:data:`WORKERS_ENV` if set, else ``fallback``."""
    return max(1, int(os.environ.get(WORKERS_ENV, fallback)))


@dataclass
class Carried(Generic[T]):
    """A job's result and what it would have reported in the calling process."""

    value: T
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def replay(self) -> T:
        """Re-emit the job's records and errors here; return its value."""
        for d in self.records:
            record = logging.makeLogRecord(d)
            logging.getLogger(record.name).handle(record)
        for text in self.errors:
            log.error("in a worker process: %s", text)
        return self.value


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        d = dict(record.__dict__)
        d["msg"], d["args"] = record.getMessage(), None  # args may not pickle
        if record.exc_info:
            d["msg"] += "\n" + logging.Formatter().formatException(record.exc_info)
        d["exc_info"] = d["exc_text"] = None
        self.records.append(d)


class _Recent(logging.Handler):
    """The last ``keep`` records (formatted only when asked for)."""

    def __init__(self, keep: int) -> None:
        super().__init__(level=logging.INFO)
        self.records: deque[logging.LogRecord] = deque(maxlen=keep)
        self.setFormatter(logging.Formatter("%(relativeCreated)9.0f ms %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]


@contextmanager
def recent_info(
    loggers: Sequence[str] = PROTOCOL_LOGGERS, keep: int = RECENT
) -> Iterator[Callable[[], list[str]]]:
    """Within the block, keep the last ``keep`` INFO (or higher) records of ``loggers``
    (lowered to INFO for it, restored after); yields a function returning them as text."""
    handler = _Recent(keep)
    saved: dict[str, int] = {}
    for name in loggers:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for name, level in saved.items():
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(level)


_keep = _Keep()
_errors: list[str] = []


def _init(filters: list[Any]) -> None:
    """Worker start-up: the caller's warning filters; collect what must be carried back."""
    warnings.resetwarnings()
    for action, message, category, module, lineno in reversed(filters):  # first match first
        # Patterns, or plain strings in the interpreter's own defaults.
        text, where = (getattr(p, "pattern", p) or "" for p in (message, module))
        warnings.filterwarnings(action, text, category, where, lineno)
    logging.getLogger().addHandler(_keep)

    def unraisable(u: Any) -> None:
        _errors.append(
            f"unraisable exception in {u.object!r}: {u.exc_type.__name__}: {u.exc_value}"
        )

    def thread_died(a: Any) -> None:
        _errors.append(f"exception in thread {a.thread}: {a.exc_type.__name__}: {a.exc_value}")

    sys.unraisablehook = unraisable
    threading.excepthook = thread_died


def _call(fn: Callable[..., T], args: tuple[Any, ...]) -> Carried[T]:
    del _keep.records[:], _errors[:]
    value = fn(*args)
    carried = Carried(value, list(_keep.records), list(_errors))
    del _keep.records[:], _errors[:]
    return carried


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (a job may run for minutes)."""
    for p in list(getattr(pool, "_processes", {}).values()):  # no public way before 3.14
        p.kill()
    pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def in_workers(
    fn: Callable[..., T], jobs: Sequence[tuple[Any, ...]], workers: int
) -> Iterator[Iterator[Future[Carried[T]]]]:
    """``fn(*job)`` for every job on ``workers`` spawned processes, all submitted at once
    (in order: the workers take them in order); yields the futures in job order.  Leaving
    the block kills the workers and drops the jobs not started: a caller that stops early
    (or fails) does not wait for them.  ``fn`` must be importable (a module's function)."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(list(warnings.filters),),
    )
    try:
        yield iter([pool.submit(_call, fn, job) for job in jobs])
    finally:
        _kill(pool)


def run_all(fn: Callable[..., T], jobs: Sequence[tuple[Any, ...]], workers: int) -> list[T]:
    """``[fn(*job) for job in jobs]`` on ``workers`` processes (in this one for 1), what
    each job logged and warned re-emitted here in job order; the first job to fail (in job
    order) raises here, after the jobs before it were replayed."""
    if workers <= 1:
        return [fn(*job) for job in jobs]
    with in_workers(fn, jobs, workers) as futures:
        return [future.result().replay() for future in futures]
