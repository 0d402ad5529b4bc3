"""Calls to the servers: Q/U queries and updates and PASIS block calls, with their failures
translated into file-system errors and counted per method; the retry policy of contended
updates; and where new objects go.

Every part of the file system reaches the servers through here, so a refusal or a protocol
failure means the same everywhere: the refusals a part retries on (a stale view, another
client's write lease, a taken object id) become the private exceptions below, everything
else an :mod:`bftfs.fs.errors` error.  Object-id placement (:meth:`Meta._new_oid`) lives
here too because it decides which servers an operation meets.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any, TypeVar

import trio

from bftfs import fsobjects as obj
from bftfs.fs.base import FsBase
from bftfs.fs.errors import NoSpace, OverQuota, Unavailable, from_refusal
from bftfs.fs.files import INITIAL_RESERVE, round_up
from bftfs.outcome import ClusterUnavailable, QuotaExceeded, StorageFull, paused
from bftfs.qu.core import backoff_delay
from bftfs.qu.objects import MethodRefused
from bftfs.rw.messages import block_id

#: Attempts of an update whose cached view keeps turning out stale (concurrent changes).
MAX_ATTEMPTS = 8
#: Attempts of a flush that keeps finding the file changed by other clients (each failed
#: attempt means another client's flush succeeded, so the file system makes progress).
FLUSH_ATTEMPTS = 64
#: A write lease (``fs.lock``): how long other clients wait for a writer that crashed
#: while writing blocks.  A flush takes well under a second; the lease only matters when
#: its holder died.
LEASE_NS = 30 * 10**9
#: Backoff between attempts of a contended flush (``qu.core.backoff_delay``): first and
#: largest delay, seconds.
BACKOFF_FIRST = 0.002
BACKOFF_MAX = 0.5
#: Empty blocks written per ``write_blocks`` call when clearing or giving back a range of
#: blocks (bounds the memory that holds, however many blocks the range spans).
CHUNK = 256

T = TypeVar("T")

#: What the protocol clients raise when the cluster cannot answer (``bftfs.outcome``).
_PROTOCOL_ERRORS = (ClusterUnavailable,)


class _Stale(Exception):
    """The servers refused because this client's view is out of date: re-read, retry."""


class _Locked(Exception):
    """Another client holds the file's write lease: wait, re-read and retry."""


class _Taken(Exception):
    """A freshly drawn object id is taken: draw another."""


def _translate(e: BaseException) -> BaseException:
    """A protocol or refusal exception as the file-system error it means."""
    if isinstance(e, MethodRefused):
        if e.code == "stale":
            return _Stale(e.message)
        if e.code == "locked":
            return _Locked(e.message)
        if e.code == "oid-exists":
            return _Taken()
        return from_refusal(e.code, e.message)
    if isinstance(e, QuotaExceeded):
        return OverQuota(str(e))
    if isinstance(e, StorageFull):
        return NoSpace(str(e))
    if isinstance(e, _PROTOCOL_ERRORS):
        return Unavailable(f"{type(e).__name__}: {e}")
    return e


class Meta(FsBase):
    """Protocol calls, error translation, statistics, retry backoff and placement."""

    async def _query(self, oid: int | list[int], method: str, arg: Any = None) -> Any:
        self.methods[method] += 1
        start = time.perf_counter()
        try:
            return await self.qu.query(oid, method, arg)
        except (MethodRefused, *_PROTOCOL_ERRORS) as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start

    async def _update(self, objects: Iterable[int], method: str, arg: Any) -> Any:
        self.methods[method] += 1
        start = time.perf_counter()
        try:
            return await self.qu.update(list(objects), method, arg)
        except (MethodRefused, *_PROTOCOL_ERRORS) as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start

    def method_statistics(self) -> str:
        """Q/U operations per method: count, total and mean milliseconds, busiest first."""
        lines = ["Q/U method        calls    total ms   mean ms"]
        for name, secs in sorted(self.method_seconds.items(), key=lambda kv: -kv[1]):
            n = self.methods[name]
            lines.append(f"{name:<16} {n:>6} {secs * 1e3:>11.1f} {secs * 1e3 / n:>9.2f}")
        return "\n".join(lines)

    async def _blocks(self, coro: Awaitable[T]) -> T:
        """Run a PASIS call, translating its failures."""
        try:
            return await coro
        except _PROTOCOL_ERRORS as e:
            raise _translate(e) from None

    async def _write_empty_blocks(self, d: int, indices: Iterator[int], after: int) -> int:
        """Write an empty value over blocks ``indices`` of data id ``d`` at Times above
        ``after``, :data:`CHUNK` at a time (``indices`` may be lazy and long: a file's
        stale ranges); the newest Time written (0: none)."""
        newest = 0
        while chunk := list(itertools.islice(indices, CHUNK)):
            written = await self._blocks(
                self.rw.write_blocks({block_id(d, k): b"" for k in chunk}, after=after)
            )
            newest = max(newest, *(ts.time for ts in written.values()))
        return newest

    def _new_oid(self, near: int | None = None) -> int:
        """A random 63-bit id (object ids, data ids); with ``near``, one in the same residue
        class mod ``n`` as ``near``.

        Q/U sends an operation to the preferred quorum of ``object id mod n``, a multi-object
        one to that of its highest id (seed L2839-2841), and a server outside the quorum of an
        object's last update must object-sync before it can take the next.  A new object
        congruent to its parent directory shares the directory's quorum, so create, unlink,
        lookup and the file's own updates all meet the same servers and need no sync (an
        Andrew copy phase did 1700 syncs with random ids).  The price: one directory tree
        loads the same ``q`` of the ``n`` servers; the others serve when those fail.
        """
        x = self.rng.randrange(2, obj.MAX_OID)
        if near is None:
            return x
        n = self.config.n
        x += (near - x) % n
        return x if x < obj.SNAPSHOTS else x - n  # (SNAPSHOTS = MAX_OID is reserved)

    def _now(self) -> int:
        return self.clock_ns()

    def _initial_reserve(self) -> int:
        return round_up(INITIAL_RESERVE, self.bs)

    async def _back_off(self, attempt: int) -> None:
        """Wait before retrying an update another client's change or lease refused (the
        wait is contention's, not the cluster's silence: it uses up no patience)."""
        delay = backoff_delay(attempt, self.rng, BACKOFF_FIRST, BACKOFF_MAX)
        await trio.sleep(delay)
        paused(delay)
