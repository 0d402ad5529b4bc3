"""The one decorator around every FUSE handler (STYLE.md section 3).

``FsError`` becomes ``FUSEError(its errno)``; any other ``Exception`` is logged once per
handler and error type, counted, and answered EIO, because pyfuse3 lets nothing but
``FUSEError`` out of a handler without ending the mount.  ``BaseException`` (trio's
``Cancelled``) is never caught.  A mount whose client was revoked (``b + 1`` nodes refuse
it as revoked by a view) answers EACCES to everything.  A ``hard`` mount retries a call
the cluster could not answer instead of answering EIO; a read-only mount refuses every
handler that writes."""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import pyfuse3
import trio

from bftfs.fs.errors import FsError, Unavailable
from bftfs.fuse.callrecord import CallRecord
from bftfs.fuse.errormap import unwrap
from bftfs.fuse.kernelheld import KernelHeld
from bftfs.fuse.leasecache import STARTED
from bftfs.fuse.paths import KnownPaths, describe, learn
from bftfs.fuse.recentlookups import RecentLookups
from bftfs.outcome import patience

log = logging.getLogger("bftfs.fuse.operations")

#: ESTALE answers logged per handler (then only counted: the kernel retries them).
ESTALE_LOGGED = 20
#: Seconds between attempts of a system call on a ``hard`` mount while the cluster is
#: unavailable (each attempt waits up to ``timeo`` for it first).
HARD_RETRY = 1.0

#: Handlers that change the file system: a read-only mount refuses them with EROFS.
_WRITES = frozenset(
    {
        "setattr",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "symlink",
        "rename",
        "link",
        "create",
        "write",
        "setxattr",
        "removexattr",
    }
)


class HandlerHost(Protocol):
    """What :func:`handler` reads and counts on the object whose handlers it wraps
    (``Operations``)."""

    read_only: bool
    timeo: float | None
    hard: bool
    soft: bool
    record: CallRecord
    lookups: RecentLookups
    #: The paths of the inodes and handles the kernel asked about (for warnings).
    paths: KnownPaths
    #: The view this mount's client was revoked in (``ClientViews.revoked_in``), or None.
    revoked_in: Callable[[], int | None]
    #: Whose attributes the kernel holds valid (``fuse/kernelheld.py``).
    held: KernelHeld


P = ParamSpec("P")
R = TypeVar("R")


def handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn domain errors into their errno and anything unexpected into a logged EIO.

    Each call waits for an unavailable cluster at most the mount's ``timeo`` (its
    patience, :func:`bftfs.outcome.patience`): for fewer than a quorum of nodes live, or
    on a ``soft`` mount for no call completing; on a ``hard`` mount it then tries again,
    for as long as it takes.  An exception group from the file system's nurseries is
    answered as the one failure it stands for (:mod:`bftfs.fuse.errormap`).  Every EIO
    is logged at WARNING with the operation, how long it took and why."""

    name = fn.__name__
    writes = name in _WRITES

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = cast(HandlerHost, args[0])
        start = time.perf_counter()
        STARTED.set(trio.current_time())
        record = self.record
        if self.lookups.remembers_for(name):
            ctx = kwargs.get("ctx", args[-1] if args else None)
            pid = getattr(ctx, "pid", 0)
            if pid:
                self.lookups.other_request(name, pid)
        # In flight until the ``finally`` below.
        number = record.begin(name, start, lambda: describe(self.paths, name, args))
        try:
            if self.revoked_in() is not None:  # the nodes refuse this client: no use asking
                raise pyfuse3.FUSEError(errno.EACCES)
            if writes and self.read_only:
                raise pyfuse3.FUSEError(errno.EROFS)
            while True:
                try:
                    with patience(self.timeo, trio.current_time(), soft=self.soft):
                        try:
                            call = fn(*args, **kwargs)
                            record.awaiting(number, call)
                            result = await call
                        except BaseExceptionGroup as group:  # a nursery's: what it means
                            one = unwrap(group)
                            if one is group:
                                raise
                            raise one from group
                except Unavailable as e:
                    if not self.hard or self.revoked_in() is not None:
                        raise
                    record.unavailable(name, e, time.perf_counter() - start)
                    await trio.sleep(HARD_RETRY)
                    continue
                if record.unavailable_since is not None:
                    record.available_again()
                learn(self.paths, name, args, result)
                self.held.after(self.paths, name, args)
                return result
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise pyfuse3.FUSEError(_answer(self, name, args, e, start)) from None
        finally:
            took = time.perf_counter() - start
            record.end(number)
            record.last_done = trio.current_time()
            record.calls[name] += 1
            record.seconds[name] += took
            record.durations[name].observe(took)

    return wrapper


def _answer(host: HandlerHost, name: str, args: tuple[Any, ...], e: Exception, start: float) -> int:
    """The errno a failed call of handler ``name`` answers, counted and logged: an
    ``FsError``'s own (EACCES for an EIO once the client is revoked), EIO for anything
    else (its traceback logged once per handler and error type)."""
    record = host.record
    if isinstance(e, FsError):
        if e.errno == errno.EIO and host.revoked_in() is not None:
            return errno.EACCES  # unanswered because the client was revoked meanwhile
        if e.errno == errno.EIO:
            what = describe(host.paths, name, args)
            record.answered_eio(name, what, f"{type(e).__name__}: {e}", start)
        elif e.errno == errno.ESTALE:  # usually retried by the kernel (its walk again)
            key = f"{name}:{type(e).__name__}"
            record.errors[key] += 1
            if record.errors[key] <= ESTALE_LOGGED:
                log.info("%s of %s answered ESTALE: %s", name, describe(host.paths, name, args), e)
        return e.errno
    key = f"{name}:{type(e).__name__}"
    what = describe(host.paths, name, args)
    if record.errors[key] == 0:  # the traceback once per handler and error type
        log.exception("%s of %s failed", name, what)
    record.answered_eio(name, what, f"unexpected {type(e).__name__}: {e}", start)
    return errno.EIO
