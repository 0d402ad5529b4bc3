"""Calls to the servers: Q/U queries and updates and PASIS block calls, with their failures
translated into file-system errors and counted per method; the retry policy of contended
updates; and where new objects go.

Every part of the file system reaches the servers through here, so a refusal or a protocol
failure means the same everywhere: the refusals a part retries on (a stale view, another
client's write lease, a taken object id) become the private exceptions below, everything
else an :mod:`bftfs.fs.errors` error.  Object-id placement (:meth:`Meta.new_oid`) lives
here too because it decides which servers an operation meets.

This is the lowest part of :class:`~bftfs.fs.filesystem.FileSystem` but the leases: every
other part is given this one and calls it; it imports none of them.  Two interfaces it
declares are filled from above by the file system: the gate (:class:`CallGate`, filled by
``fs/callorder.py``), which sends what the mount holds back that a call must follow, before
:meth:`Meta.query` and :meth:`Meta.update` (the sends themselves go around it:
:meth:`Meta.query_now`, :meth:`Meta.update_now`); and the leases (``fs/leases/``, below
this part), which answer queries they keep good and are told of each update.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import trio

from bftfs import fsobjects as obj
from bftfs.fs.clients.protocols import BlockClient, MetadataClient
from bftfs.fs.clients.reading import (
    HINT_FALLBACK,
    AskTokens,
    PublishedHints,
    RecentTokens,
    ask_publication,
    reading_with,
)
from bftfs.fs.errors import NoSpace, OverQuota, Unavailable, from_refusal
from bftfs.fs.leases import Leases, made_entries, recall_with_sessions
from bftfs.fsobjects.leases import DONE, LEASE_SKEW, LEASE_TIME, MAX_TERM
from bftfs.layout.model import Layout
from bftfs.layout.spread import dir_group
from bftfs.outcome import ClusterUnavailable, QuotaExceeded, StorageFull, paused
from bftfs.qu.client import ObjectLock
from bftfs.qu.core import backoff_delay
from bftfs.qu.objects import MethodRefused
from bftfs.rw.client import Space
from bftfs.rw.messages import block_id

log = logging.getLogger(__name__)

#: Attempts of an update whose cached view keeps turning out stale (concurrent changes).
MAX_ATTEMPTS = 8
#: Attempts of a flush that keeps finding the file changed by other clients (each failed
#: attempt means another client's flush succeeded, so the file system makes progress).
FLUSH_ATTEMPTS = 64
#: A write lease (``fs.lock``): how long other clients wait for a writer that crashed
#: while writing blocks.  A flush takes well under a second; the lease only matters when
#: its holder died.
LEASE_NS = 30 * 10**9
#: Sends of one update whose lease time went stale on the way (:meth:`Meta._with_fresh_lease_time`).
STALE_LEASE_TIME_TRIES = 3
#: Backoff between attempts of a contended flush (``qu.core.backoff_delay``): first and
#: largest delay, seconds.
BACKOFF_FIRST = 0.002
BACKOFF_MAX = 0.5
#: Empty blocks written per ``write_blocks`` call when clearing or giving back a range of
#: blocks (bounds the memory that holds, however many blocks the range spans).
CHUNK = 256

T = TypeVar("T")

#: The lease methods: they change no content, so they drop nothing the leases keep.
_LEASE_METHODS = frozenset({"fs.lease", "fs.release", "fs.recall", "session.renew", "fs.publish"})
#: Queries never answered from the leases (a reader's request to publish).
_UNCACHED = frozenset({"fs.pubreq"})

#: What the protocol clients raise when the cluster cannot answer (``bftfs.outcome``).
_PROTOCOL_ERRORS = (ClusterUnavailable,)


class OutOfDate(Exception):
    """The servers refused because this client's view is out of date: re-read, retry."""


class LeaseHeld(Exception):
    """Another client holds the file's write lease: wait, re-read and retry."""


class IdTaken(Exception):
    """A freshly drawn object id is taken: draw another."""


#: Updates of one directory entry ``arg["name"]`` of directory ``arg["p"]``.
ENTRY_METHODS = frozenset(
    {"fs.create", "fs.createwrite", "fs.mkdir", "fs.link", "fs.unlink", "fs.rmdir"}
)


def _entry_of(
    method: str, arg: Any, objects: Sequence[int] = ()
) -> tuple[int | None, frozenset[bytes]]:
    """The directory and the entry names an update changes only those entries of (and
    the directory's attributes), or (None, no names).  An ``fs.setattr`` changes an
    object's attributes only: no names, so a directory's listing known here stays known
    (``tar x``, ``cp -a`` and ``shutil.copytree`` set each directory's times and mode
    after filling it, and its next listing cost a query and a stat of every entry)."""
    if method == "fs.setattr" and len(objects) == 1:
        return objects[0], frozenset()
    if isinstance(arg, dict):
        p = arg.get("p")
        if method in ENTRY_METHODS and isinstance(p, int):
            name = arg.get("name")
            if isinstance(name, bytes):
                return p, frozenset((name,))
        sp, sn, dn = arg.get("sp"), arg.get("sn"), arg.get("dn")
        within = method == "fs.rename" and isinstance(sp, int) and sp == arg.get("dp")
        if within and isinstance(sp, int) and isinstance(sn, bytes) and isinstance(dn, bytes):
            return sp, frozenset((sn, dn))  # a rename within one directory
        many = method in ("fs.createmany", "fs.mkdirmany", "fs.unlinkmany")
        if many and isinstance(p, int) and isinstance(arg.get("files"), list):
            names = [f.get("name") if isinstance(f, dict) else None for f in arg["files"]]
            if names and all(isinstance(n, bytes) for n in names):
                return p, frozenset(n for n in names if isinstance(n, bytes))
    return None, frozenset()


def _translate(e: BaseException) -> BaseException:
    """A protocol or refusal exception as the file-system error it means."""
    if isinstance(e, MethodRefused):
        if e.code == "stale":
            return OutOfDate(e.message)
        if e.code == "locked":
            return LeaseHeld(e.message)
        if e.code == "oid-exists":
            return IdTaken()
        return from_refusal(e.code, e.message)
    if isinstance(e, QuotaExceeded):
        return OverQuota(str(e))
    if isinstance(e, StorageFull):
        return NoSpace(str(e))
    if isinstance(e, _PROTOCOL_ERRORS):
        return Unavailable(f"{type(e).__name__}: {e}")
    return e


class CallGate(Protocol):
    """What runs before a gated query or update (the pending creates, write-behind)."""

    def holds_back(self) -> bool:
        """Whether anything may have to go first (cheap: asked before every call)."""
        ...

    async def before_call(self, objects: list[int], method: str, arg: Any) -> None:
        """Send what a call ``method`` on ``objects`` with argument ``arg`` must follow."""
        ...


class Meta:
    """Protocol calls, error translation, statistics, retry backoff and placement."""

    def __init__(
        self,
        qu: MetadataClient,
        rw: BlockClient,
        config: Any,
        *,
        rng: random.Random,
        clock_ns: Callable[[], int],
    ) -> None:
        self.qu = qu
        self.rw = rw
        self.config = config
        self.rng = rng
        self.clock_ns = clock_ns
        self.bs: int = config.block_size
        #: This client's write-lease token (``fs.lock``): random, so that two mounts of
        #: one client identity do not share leases.
        self.lease_token = rng.randrange(1, obj.MAX_OID)
        #: The group of an object id, on a cluster of groups (``layout/groups.PlacedConfig``).
        layout = self.layout = getattr(config, "layout", None)
        self.group_of: Callable[[int], int] | None = (
            None if layout is None else layout.group_of_object
        )
        #: Q/U operations sent and seconds spent in them, by method (where a workload's
        #: rounds go; logged at unmount).
        self.methods: Counter[str] = Counter()
        self.method_seconds: defaultdict[str, float] = defaultdict(float)
        #: (trio time, the nodes' space answer) of the last ``statfs`` asked of the nodes.
        self._space: tuple[float, Space] | None = None
        #: Runs before every query and update but its own (None: nothing to wait for;
        #: ``fs/callorder.py``'s ``CallOrder``, given by the file system).
        self.gate: CallGate | None = None
        #: This mount's leases (``fs/leases/``; None: it takes none).  Queries they
        #: keep good are answered from them; every update tells them what it changes.
        self.leases: Leases | None = None
        #: The objects an update is under way on (:meth:`_one_update_per_object`).
        self._object_locks: dict[int, ObjectLock] = {}
        #: The wall clock of lease times (``lt``): the nodes check it against theirs.
        self.wall_ns: Callable[[], int] = time.time_ns
        #: A query another client's exclusive lease refuses asks the holder to publish
        #: before it recalls the lease (``fs/clients/reading.py``, issue 64): the mount
        #: option ``publish`` (the file system's default; ``nopublish``: it recalls);
        #: never on a cluster of groups.
        self.publish_reads = False
        #: The tokens a lookup or stat may read with again (``fs/clients/reading.py``).
        self.recent = RecentTokens()
        self.ask_tokens = AskTokens(lambda: self.wall_ns())  # (tests replace ``wall_ns``)
        self.hints = PublishedHints(config.b)  # the word that a publication landed

    async def query(self, oid: int | list[int], method: str, arg: Any = None) -> Any:
        """A Q/U query, after whatever the gate says it must follow."""
        if self.gate is not None and self.gate.holds_back():
            await self.gate.before_call(oid if isinstance(oid, list) else [oid], method, arg)
        return await self.query_now(oid, method, arg)

    async def update(self, objects: Iterable[int], method: str, arg: Any) -> Any:
        """A Q/U update, after whatever the gate says it must follow."""
        objects = list(objects)
        if self.gate is not None and self.gate.holds_back():
            await self.gate.before_call(objects, method, arg)
        return await self.update_now(objects, method, arg)

    async def query_now(self, oid: int | list[int], method: str, arg: Any = None) -> Any:
        """A Q/U query, not gated (the gate's own calls); answered from the leases when
        they keep its answer good (``fs/leases/``)."""
        leases = self.leases if method not in _UNCACHED else None
        oids = oid if isinstance(oid, list) else [oid]
        if leases is not None:
            hit, answer = leases.cached(oids, method, arg)
            if hit:
                self.methods["leased " + method] += 1
                if isinstance(answer, MethodRefused):
                    raise _translate(answer)
                return answer
            sent = leases.before_query(oids)
        self.methods[method] += 1
        start = time.perf_counter()
        try:
            answer = await self._recalling(oids, method, arg, query=oid)
        except MethodRefused as e:
            if leases is not None:  # a miss is an answer too (a lookup's ENOENT)
                leases.answered(oids, method, arg, e, sent)
            raise _translate(e) from None
        except _PROTOCOL_ERRORS as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start
        if leases is not None:
            leases.answered(oids, method, arg, answer, sent)
        return answer

    async def lease_update(self, objects: list[int], method: str, arg: Any) -> Any:
        """The update leases are taken, renewed and released with (``fs/leases/``).  A
        take or renewal (``fs.lease``) changes no content, so it is not gated: gated, each
        renewal of a directory's lease sent its deferred creates, and each sweep renewing
        held files sent their buffered writes one file per update (PostMark: a sixth of
        its rounds), where write-back sends them eight per update.  A release stays
        gated: a recall's contract is that what the mount buffered goes first."""
        send = self.update_now if method in ("fs.lease", "session.renew") else self.update
        return await send(objects, method, arg)

    async def update_now(self, objects: Iterable[int], method: str, arg: Any) -> Any:
        """A Q/U update, not gated (the gate's own calls).  It carries the lease time
        ``lt``; one refused because another client holds a lease on an object it would
        change recalls the lease and is sent again once the holder released it or the
        lease ended (:meth:`_recalling`)."""
        objects = list(objects)
        if isinstance(arg, dict) and "lt" not in arg:
            arg = {**arg, "lt": self.wall_ns()}
        changes = method not in _LEASE_METHODS
        parent, names = _entry_of(method, arg, objects)
        if changes and self.leases is not None:
            self.leases.changed(objects, parent=parent, names=names)
        self.methods[method] += 1
        start, sent_at = time.perf_counter(), trio.current_time()
        outcome = "unknown"
        try:
            got = await self._with_fresh_lease_time(objects, method, arg)
            outcome = "taken"
            return got
        except MethodRefused as e:
            if e.code != "busy":  # busy: a holder never released, nothing was decided
                outcome = "refused"
            raise _translate(e) from None
        except _PROTOCOL_ERRORS as e:
            raise _translate(e) from None
        finally:
            self.method_seconds[method] += time.perf_counter() - start
            if changes and self.leases is not None:
                self.leases.changed(objects, parent=parent, names=names)
                if parent is not None and names:
                    made = made_entries(method, arg) if outcome == "taken" else None
                    self.leases.entry_done(method, parent, names, outcome, made, sent_at)

    @contextlib.asynccontextmanager
    async def _one_update_per_object(self, objects: list[int]) -> AsyncIterator[None]:
        """Hold ``objects`` for one update: a Q/U client issues one update per object at a
        time (its answers are kept per client and object, ``qu/replica.py``), and the
        leases' background updates (``fs/leases/``) must not overlap a flush's.  Taken
        in object order, so two updates never wait for each other.  Waiting for another
        task's update is that task's time (its rounds and backoffs), not the cluster's
        silence: the wait uses up patience only as far as that task's own ran out
        (:class:`~bftfs.qu.client.ObjectLock`)."""
        held = []
        try:
            for oid in sorted(set(objects)):
                lock = self._object_locks.get(oid)
                if lock is None:
                    lock = self._object_locks[oid] = ObjectLock()
                await lock.acquire()  # waiting for another task's update: its time, not ours
                held.append((oid, lock))
            yield
        finally:
            for oid, lock in reversed(held):
                lock.release()
                if not lock.busy():
                    self._object_locks.pop(oid, None)

    async def _with_fresh_lease_time(self, objects: list[int], method: str, arg: Any) -> Any:
        """:meth:`_recalling`, sent again with a new lease time ``lt`` when more than b
        nodes refused the one it carried as too far behind their clocks although this
        mount's clock is not: the time went stale while the update waited (back-offs and
        repairs under contention on a loaded machine, `t3_fs_locks`' switching Byzantine
        node).  A refusal changed nothing, and a lease counted from a later time only ends
        later on the nodes than its holder counts.  A clock truly behind is refused again
        at once and reported."""
        for _ in range(STALE_LEASE_TIME_TRIES - 1):
            try:
                return await self._recalling(objects, method, arg)
            except MethodRefused as e:
                lt = arg.get(LEASE_TIME) if isinstance(arg, dict) else None
                if e.code != "behind" or not isinstance(lt, int):
                    raise
                if self.wall_ns() - lt <= LEASE_SKEW // 2:
                    raise  # refused while still fresh: this clock is behind theirs
                arg = {**arg, LEASE_TIME: self.wall_ns()}
        return await self._recalling(objects, method, arg)

    async def _recalling(
        self, objects: list[int], method: str, arg: Any, *, query: int | list[int] | None = None
    ) -> Any:
        """The update (with ``query``: the query of those objects), recalling other
        clients' leases that refuse it: any lease for an update, an exclusive one for a
        query (``fsobjects.leases.guarded``), whose holder a query first asks to publish
        (``fs/clients/reading.py``) and recalls once none it asked for came for
        ``PUBLISH_WAIT`` (``PUBLISH_PATIENCE`` at most).  The wait
        is the holders', bounded by a lease's longest term (and the skew) for a holder
        that never releases; it uses up no patience (contention, not the cluster's
        silence).

        The objects are held (:meth:`_one_update_per_object`) for each attempt, not across
        the wait: this mount's own release of a lease another client recalled, on the same
        objects, must go through meanwhile, or two mounts that each hold a lease the
        other's update waits for would wait for each other until the term ends."""
        started = trio.current_time()
        deadline = started + (MAX_TERM + 2 * LEASE_SKEW) / 1e9 + 1.0
        attempt = 0
        # A publication asked for (a query's), or one a lookup or stat may read with again.
        tokens = None if query is None else self.recent.reusable(method, objects, started)
        recalled = ended = False
        asked_at: float | None = None  # when this call asked for a publication
        try:
            while True:
                tried = trio.current_time()
                try:
                    if query is not None:
                        with reading_with(tokens):
                            answer = await self.qu.query(query, method, arg)
                        if tokens:
                            self.recent.read_with(tokens, trio.current_time(), asked_at=asked_at)
                        if recalled:
                            await self._done_waiting(objects)
                        return answer
                    async with self._one_update_per_object(objects):
                        # Stamped again once the objects are ours: the wait for this
                        # mount's other updates of them (a write-back's, seconds on a
                        # busy machine) aged the time past the nodes' skew, and every
                        # lease asked meanwhile was refused ``behind``, read as contention.
                        if isinstance(arg, dict) and isinstance(arg.get(LEASE_TIME), int):
                            arg = {**arg, LEASE_TIME: self.wall_ns()}
                        return await self.qu.update(objects, method, arg)
                except MethodRefused as e:
                    if e.code != "leased" or method in _LEASE_METHODS:
                        if recalled:
                            await self._done_waiting(objects)
                        raise
                    if not attempt and self.leases is not None:
                        self.leases.contended(objects)  # another's lease: contention
                    if trio.current_time() > deadline:
                        raise MethodRefused("busy", "a lease holder did not release") from None
                publishing = self.recent.publishing(started, trio.current_time())
                waits = query is not None and self.publish_reads and publishing and not ended
                if waits and (tokens is None or asked_at is None):
                    asked_at = trio.current_time()
                    tokens = await self._ask_publication(objects) or None
                    # None: no other client's exclusive lease is live - the records that
                    # refused the query ended, and a recall tidies them (a query does
                    # not): at once, not after asking again for the whole wait (a killed
                    # holder's readers paid it per object of a listing).
                    waits = not (ended := tokens is None)
                if not waits and (not recalled or attempt % 8 == 0):  # a push may be lost
                    self.methods["fs.recall"] += 1
                    recalled = True
                    async with self._one_update_per_object(objects):
                        await recall_with_sessions(self.qu.update, objects, self.wall_ns)
                if waits and not recalled:  # for the publication asked (its tokens held)
                    await self.hints.wait(list(tokens or ()), tried, HINT_FALLBACK)
                else:
                    await self.back_off(min(attempt, 6))
                attempt += 1
                if isinstance(arg, dict) and query is None:
                    arg = {**arg, "lt": self.wall_ns()}
        finally:
            if attempt and self.leases is not None:  # waited behind a recall
                self.leases.waited(trio.current_time() - started)

    async def _ask_publication(self, objects: list[int]) -> dict[int, int]:
        """Ask the exclusive holders of ``objects`` to publish (``fs/clients/reading.py``):
        the tokens a query of them reads with."""
        self.methods["fs.pubreq"] += 1
        try:
            return await ask_publication(self.qu.query, objects, self.wall_ns(), self.ask_tokens)
        except MethodRefused as e:
            if e.code != "no-such-method":
                raise
            log.info("nodes do not know publication (an older release): reads recall leases")
            self.publish_reads = False  # (the caller recalls from here on, as before)
            return {}

    async def _done_waiting(self, objects: list[int]) -> None:
        """Tell the nodes this mount's recall of ``objects`` waits no longer (its query was
        answered, or its update refused for another reason: no change of it lands to end
        the wait): the recall stays until then, holding every lease off for those waiting
        (``fsobjects.leases``), so the holder may take its lease again at once.  Best
        effort: unsaid, the recall ends a grace after the recalled leases."""
        try:
            async with self._one_update_per_object(objects):
                await self.qu.update(objects, "fs.recall", {"lt": self.wall_ns(), DONE: 1})
        except Exception as e:  # noqa: BLE001 - the recall then ends at its grace
            log.debug("recall of %s not ended: %s", objects, e)

    async def statfs(self) -> dict[str, int]:
        """Capacity and free space from the nodes' stores.

        Each node's LMDB map holds one fragment (``1/m``) of every block plus a copy of the
        metadata, so the capacity is what a node can hold times ``m``: its map, or less when
        its disk has less room (``rw.space``'s ``free``: the disk's free bytes shared among
        the nodes on it; issue 67: ``df`` showed the maps whatever the disks held).  Nodes
        refuse new block versions above ``data_fraction`` of the map (policy.py), so that
        is where "free" ends for writers (``f_bavail``), while the share above it is free but
        reserved for metadata and removals (counted in ``f_bfree``, as ext4 counts its root
        reserve).  Used is what the nodes report (``rw.space``: the ``(b + 1)``-th largest
        of ``N - t`` answers) times ``m``.  Asked at most once a second; when the nodes
        cannot answer, the last figures (or all of it free) are shown rather than an error.
        """
        bs, m = self.bs, self.config.m
        now = trio.current_time()
        if self._space is None or now - self._space[0] > 1.0:
            try:
                space = await self.blocks(self.rw.space())
            except (Unavailable, NoSpace):
                space = self._space[1] if self._space is not None else Space(0, None)
            self._space = (now, space)
        used, disk = self._space[1]
        size = self.config.map_size
        limit = int(size * self.config.verification.data_fraction)
        room, writable = size - used, limit - used
        if disk is not None:  # the disk, not the map, may end first
            room, writable, size = min(room, disk), min(writable, disk), min(size, used + disk)
        total = size * m // bs
        free = max(0, room * m // bs)
        available = max(0, writable * m // bs)
        return {
            "f_bsize": bs,
            "f_frsize": bs,
            "f_blocks": total,
            "f_bfree": free,
            "f_bavail": available,
            "f_files": 1 << 40,
            "f_ffree": 1 << 40,
            "f_favail": 1 << 40,
            "f_namemax": obj.NAME_MAX,
        }

    def method_statistics(self) -> str:
        """Q/U operations per method: count, total and mean milliseconds, busiest first."""
        lines = ["Q/U method        calls    total ms   mean ms"]
        for name, secs in sorted(self.method_seconds.items(), key=lambda kv: -kv[1]):
            n = self.methods[name]
            lines.append(f"{name:<16} {n:>6} {secs * 1e3:>11.1f} {secs * 1e3 / n:>9.2f}")
        return "\n".join(lines)

    async def blocks(self, coro: Awaitable[T]) -> T:
        """Run a PASIS call, translating its failures."""
        try:
            return await coro
        except _PROTOCOL_ERRORS as e:
            raise _translate(e) from None

    async def write_empty_blocks(self, d: int, indices: Iterator[int], after: int) -> int:
        """Write an empty value over blocks ``indices`` of data id ``d`` at Times above
        ``after``, :data:`CHUNK` at a time (``indices`` may be lazy and long: a file's
        stale ranges); the newest Time written (0: none)."""
        newest = 0
        while chunk := list(itertools.islice(indices, CHUNK)):
            written = await self.blocks(
                self.rw.write_blocks({block_id(d, k): b"" for k in chunk}, after=after)
            )
            newest = max(newest, *(ts.time for ts in written.values()))
        return newest

    def take_layout(self, layout: Layout) -> None:
        """Place new objects by ``layout`` from now on (a newer one taken while mounted:
        its groups added and partitions moved change where an id lives)."""
        self.layout, self.group_of = layout, layout.group_of_object

    def new_oid(self, near: int | None = None, *, spread: bytes | None = None) -> int:
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
        x = self._draw(near)
        if near is not None and self.group_of is not None:
            # On a cluster of groups, in the parent's group: a create (two objects) stays
            # one group's atomic update (docs/layout.md, "Placement"); G draws expected.
            # A new directory (``spread``: its name) goes where layout/spread.py says.
            want = self.group_of(near)
            if spread is not None and self.layout is not None:
                want = dir_group(self.layout, near, spread)
            while self.group_of(x) != want:
                x = self._draw(near)
        return x

    def _draw(self, near: int | None) -> int:
        x = self.rng.randrange(2, obj.MAX_OID)
        if near is None:
            return x
        n = self.config.n
        x += (near - x) % n
        return x if x < obj.SNAPSHOTS else x - n  # (SNAPSHOTS = MAX_OID is reserved)

    def now(self) -> int:
        return self.clock_ns()

    async def back_off(self, attempt: int) -> None:
        """Wait before retrying an update another client's change or lease refused (the
        wait is contention's, not the cluster's silence: it uses up no patience)."""
        delay = backoff_delay(attempt, self.rng, BACKOFF_FIRST, BACKOFF_MAX)
        await trio.sleep(delay)
        paused(delay)
