"""The file system's background work, owned: read-ahead, write-behind, lease renewals and
releases, and write-back sweeps outlive the request that started them, so each runs in
one nursery that the running file system owns (:func:`bftfs.fs.filesystem.open_file_system`
opens it and cancels it at the end: the shutdown path), never as a trio system task that
no one owns and only the end of the run stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)


class NotRunning(RuntimeError):
    """Background work was started for a file system that is not running (built but not
    opened with :func:`~bftfs.fs.filesystem.open_file_system`, or already closed)."""


class Background:
    """Where a file system's long-lived tasks run: the nursery it was attached to.

    Each task must catch the errors it expects (a background flush that fails marks its
    file, it does not raise); one that escapes is logged here so that one failed task does
    not cancel the others and the mount's requests with them."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether tasks can start: attached and not yet closed."""
        return self._nursery is not None

    def attach(self, nursery: trio.Nursery) -> None:
        """Run tasks in ``nursery`` from now on (its owner cancels it to stop them)."""
        self._nursery = nursery

    def detach(self) -> None:
        """No more tasks start (the owner is about to cancel the nursery)."""
        self._nursery = None
        self._closing = True

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the background until it returns or the file system closes.  Once
        it closes, what a task still running asks to start is not started: a lease granted
        as the mount stopped started its session's renewals, and the ``NotRunning`` raised
        in that task, beside the nursery's cancellation, escaped as a group and failed the
        close."""
        if self._nursery is None:
            if self._closing:
                log.debug("not started, the file system is closing: %r", fn)
                return
            raise NotRunning("the file system is not running: open it with open_file_system")
        self._nursery.start_soon(self._guarded, fn)

    @staticmethod
    async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:  # a task's own bug: the mount goes on without that task
            log.exception("background task %r failed", fn)
