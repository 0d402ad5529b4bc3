"""Object versions under the FaB engine: what ``bftfs log``, ``cat --at``, ``mount --at``
and ``.snapshots`` read on an ``engine = "fab"`` cluster (docs/fab.md, "History").

Execution (``fab/execution.py``) is a deterministic state machine, so its history is too:
after each executed update that changed objects, every correct node records, per object it
changed, a **version** ``(slot, time, client, state)``.  The **time** is the same on every
correct node: the client's declared time (its request id, which the FaB client takes from
its wall clock, ``fab/metaclient.py``, and which nodes refuse when it lies ahead of their
clock, ``node/fab_server.py``), made strictly increasing over slots
(``max(clock + 1, rid)``); ``clock``, the time of the last version, is part of the
certified snapshot so a node that installs one stamps on alike.  No node's clock is read
here, or correct replicas would disagree.

**Retention.**  Versions are thinned by the cluster's ``[retention]``, as Q/U nodes thin
theirs (``bftfs/thinning.py``, ``qu/retention.py``), with ``clock`` as "now" so that
every correct node thins alike at the same slot: the newest ``keep_versions`` and the
version current at each snapshot moment are always kept; a version the schedule no longer
keeps becomes a **thinned** record (its time only, a gap the history read steps over);
versions and records older than the horizon are dropped, and the object's history is then
no longer **complete** (it does not reach the object's creation).  An object is thinned
when the clock passes the moment one of its versions comes due (a heap of due moments,
one per object, driven by the clock, not by a timer); a version pushed out of the newest
``keep_versions`` is due no sooner than ``keep_seconds`` after it was written.  Thinning
at a later clock gives what thinning on the way would have, so a restarted node, which
looks at every object at its first version, keeps what the others keep.  A version
pinned by a snapshot that is then deleted goes at its object's next due moment.

**Beside the snapshot.**  Versions are not in the certified checkpoint snapshot (a
snapshot travels in one frame; with every version of every object it would grow with
history).  The snapshot holds ``clock`` and, per object, the slot it last changed at and
that version's time and client (:meth:`Versions.summary`): a node that installs a fetched
snapshot over its state at slot ``e`` keeps the versions of every object unchanged since
``e``; the histories of the others start over there, incomplete, from their newest
version (the snapshot's state, stamped as every correct node stamped it).  Before the
stamps those histories started empty: a node that caught up by a snapshot knew nothing of
an object that had not changed since, and once ``f + 1`` such nodes answered alike and no
complete history had ``f + 1`` votes (most nodes of a loaded cluster catch up that way), a
read took the empty one - ``bftfs changes`` answered "object 0x1: no version is kept".
A history answer is believed on ``f + 1`` matching answers (``fab/pastclient.py``), which
the nodes that executed an object's changes themselves give.

**Durable.**  Changes go into the node's database ``fab`` under keys ``v`` + object (8
bytes) + slot (8 bytes) -> ``[time, client, state, thinned]`` and ``w`` + object ->
``complete``, written with the replica's own changes after each step
(``node/fab_server.py``); a restarted node loads them before it restores its own snapshot
(which then clears nothing) and executes the slots above it again (recording nothing it
holds).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs import thinning
from bftfs.kv import KV
from bftfs.qu.canon import canonical, unpack

DB = "fab"  # the replica's own database (fab/durable.py); prefixes v and w are these
#: A change: the key and its new value (None: delete it), as ``fab/durable.py``'s.
Change = tuple[bytes, bytes | None]


@dataclass(frozen=True)
class Retention:
    """What a FaB node keeps of history: ``[retention]`` (``policy.RetentionPolicy``)."""

    schedule: thinning.Schedule
    keep_last: int = 2

    @classmethod
    def of(cls, policy: Any) -> Retention:
        """From a :class:`bftfs.policy.RetentionPolicy`."""
        return cls(policy.schedule(), int(policy.keep_versions))


@dataclass
class Entry:
    """One version: the state (canonical bytes) after ``slot`` changed the object; None
    once thinned."""

    slot: int
    time: int
    client: int
    state: bytes | None
    thinned: bool = False

    def wire(self) -> list[Any]:
        return [self.slot, self.time, self.client, self.state, self.thinned]


@dataclass
class History:
    entries: list[Entry] = field(default_factory=list)  # oldest first
    complete: bool = True


def _stamp_ok(oid: Any, stamp: Any) -> bool:
    """Whether ``oid -> stamp`` is an object's newest version's ``[time, client]``."""
    return (
        isinstance(oid, int)
        and isinstance(stamp, list)
        and len(stamp) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in stamp)
    )


def _key(oid: int, slot: int | None = None) -> bytes:
    tail = b"" if slot is None else slot.to_bytes(8, "big")
    return b"v" + oid.to_bytes(8, "big") + tail


class Versions:
    """The versions of every object one node executed (module docstring).

    Args:
        retention: what to keep (None: everything, as the simulations run).
        pins: the snapshot moments of the current state (each pins its version).
    """

    def __init__(
        self,
        retention: Retention | None = None,
        pins: Callable[[], Sequence[int]] | None = None,
    ) -> None:
        self.retention, self.pins = retention, pins
        #: The time of the last version (ns): part of the certified snapshot.
        self.clock = 0
        #: The slot each object last changed at: with ``clock`` what the certified
        #: snapshot holds of history (:meth:`summary`), so a node that installs one knows
        #: which objects' versions it missed.
        self.changed: dict[int, int] = {}
        #: Each object's newest version's ``[time, client]`` (with ``changed``, in the
        #: snapshot: a node that installs one starts the object's history there).
        self.stamps: dict[int, list[int]] = {}
        self.objects: dict[int, History] = {}
        #: A restart restores this node's own snapshot: that install clears nothing.
        self.restoring = False
        self._due: list[tuple[int, int]] = []
        self._next: dict[int, int] = {}  # object -> the due moment it is in _due for
        self._changes: dict[bytes, bytes | None] = {}

    # -- recording (execution's hooks) ------------------------------------------------

    def executed(
        self, slot: int, client: int, rid: int, new: dict[int, bytes], objects: dict[int, Any]
    ) -> None:
        """An update at ``slot`` by ``client`` (request ``rid``) is about to set ``new``
        (canonical states) over ``objects`` (the states before): record what changed."""
        changed = [oid for oid, state in new.items() if self._differs(oid, state, objects)]
        if not changed:
            return
        self.clock = max(self.clock + 1, rid)
        for oid in changed:
            self.changed[oid] = slot
            self.stamps[oid] = [self.clock, client]
            h = self.objects.get(oid)
            if h is None:
                h = self.objects[oid] = History(complete=oid not in objects)
                self._put_flag(oid, h)
            if h.entries and h.entries[-1].slot >= slot:
                continue  # a restart executing a slot again: recorded before
            e = Entry(slot, self.clock, client, new[oid])
            h.entries.append(e)
            self._put(oid, e)
            self._appended(oid, h)
        self._due_now()

    def _differs(self, oid: int, state: bytes, objects: dict[int, Any]) -> bool:
        """Whether ``state`` changes ``oid``: compared with its newest version (always
        kept) where there is one, else with the state encoded."""
        if oid not in objects:
            return True
        h = self.objects.get(oid)
        last = h.entries[-1] if h is not None and h.entries else None
        if last is not None and not last.thinned and last.slot == self.changed.get(oid):
            return last.state != state
        return canonical(objects[oid]) != state

    def _appended(self, oid: int, h: History) -> None:
        """A version was added: the one it pushes out of the newest ``keep_versions`` may
        be due (its own period's newest no longer), no sooner than ``keep_seconds`` after
        it was written; the object is looked at then (a whole thinning per update cost
        more than executing it)."""
        r = self.retention
        if r is None:
            return
        seen = 0
        for e in reversed(h.entries):
            if e.thinned:
                continue
            seen += 1
            if seen > r.keep_last:
                due = e.time + r.schedule.keep_ns + 1
                if self._next.get(oid, due) >= due:
                    self._schedule(oid, due)
                return

    def _due_now(self) -> None:
        while self._due and self._due[0][0] <= self.clock:
            due, oid = heapq.heappop(self._due)
            if self._next.get(oid) == due and oid in self.objects:
                del self._next[oid]
                self._thin(oid)

    def _schedule(self, oid: int, due: int | None) -> None:
        """Look at ``oid`` again once the clock reaches ``due`` (one entry per object: an
        entry whose moment is not the object's latest is passed over)."""
        if due is not None:
            due = max(due, self.clock + 1)  # (never now: _due_now would go round forever)
        if due is None:
            self._next.pop(oid, None)
        elif self._next.get(oid) != due:
            self._next[oid] = due
            heapq.heappush(self._due, (due, oid))

    def summary(self) -> list[Any]:
        """What the certified snapshot holds of history: ``[clock, changed, stamps]``."""
        return [self.clock, self.changed, self.stamps]

    def installed(self, summary: list[Any] | None, objects: dict[int, Any], before: int) -> None:
        """A snapshot with ``summary`` (None: one of the format before versions; without
        stamps: the format before them) was installed over the state at slot ``before``.
        Unless this is a restart's own snapshot, the versions of objects that changed
        after ``before`` are not known here: their histories start over, incomplete, at
        their newest version where its stamp is known (module docstring).

        Raises:
            ValueError: a malformed summary (the snapshot is refused).
        """
        clock, changed, *rest = summary if summary is not None else (0, None)
        stamps = rest[0] if rest else {}
        if not (
            len(rest) <= 1
            and isinstance(clock, int)
            and isinstance(changed, dict | None)
            and all(isinstance(x, int) for x in (changed or {}).items() for x in x)
            and isinstance(stamps, dict)
            and all(_stamp_ok(oid, st) for oid, st in stamps.items())
        ):
            raise ValueError("versions summary")
        self.clock, self.changed = clock, dict(changed or {})
        self.stamps = {oid: list(st) for oid, st in stamps.items()}
        if self.restoring:
            self._stamps_from_versions()
            return
        for oid in objects:
            if changed is not None and changed.get(oid, before + 1) <= before:
                continue  # unchanged since this node's own state: its history holds
            old = self.objects.get(oid)
            for e in old.entries if old is not None else ():
                self._changes[_key(oid, e.slot)] = None
            h = self.objects[oid] = History(complete=False)
            self._put_flag(oid, h)
            slot, stamp = self.changed.get(oid), self.stamps.get(oid)
            if slot is not None and stamp is not None:  # its newest version, as recorded
                h.entries.append(Entry(slot, stamp[0], stamp[1], canonical(objects[oid])))
                self._put(oid, h.entries[-1])
        self._due_now()

    def _stamps_from_versions(self) -> None:
        """A restart from a snapshot of the format before stamps (a node just upgraded):
        the stamps of the objects whose newest change this node recorded, from its
        versions, so that its state encodes as the state of a node that executed those
        slots with stamps (the checkpoint digests of correct nodes stay alike)."""
        for oid, slot in self.changed.items():
            h = self.objects.get(oid)
            if oid not in self.stamps and h is not None and h.entries:
                e = h.entries[-1]
                if e.slot == slot and not e.thinned:
                    self.stamps[oid] = [e.time, e.client]

    # -- retention ---------------------------------------------------------------------

    def _thin(self, oid: int) -> None:
        """Thin ``oid``'s versions at ``clock`` (module docstring), deterministically."""
        r = self.retention
        if r is None:
            return
        h = self.objects[oid]
        now, horizon = self.clock, r.schedule.horizon_ns
        until = thinning.kept_until([e.time for e in h.entries], r.schedule)
        real = [i for i, e in enumerate(h.entries) if not e.thinned]
        newest = set(real[-r.keep_last :])
        pinned = set()
        for moment in self.pins() if self.pins is not None else ():
            current = [i for i in real if h.entries[i].time <= moment]
            if current:
                pinned.add(current[-1])
        out: list[Entry] = []
        due: int | None = None
        complete = h.complete
        for i, e in enumerate(h.entries):
            if i in newest or i in pinned:
                if i not in newest and until[i] > now:  # again when the schedule would
                    due = until[i] if due is None else min(due, until[i])
                out.append(e)
                continue
            if e.time + horizon <= now:
                self._changes[_key(oid, e.slot)] = None
                h.complete = False
                continue
            if not e.thinned and now >= until[i]:
                e.state, e.thinned = None, True
                self._put(oid, e)
            nxt = e.time + horizon if e.thinned else until[i]
            due = nxt if due is None else min(due, nxt)
            out.append(e)
        if h.complete != complete:
            self._put_flag(oid, h)
        h.entries = out
        self._schedule(oid, due)

    # -- answers -----------------------------------------------------------------------

    def answer(self, oid: int, upto: int) -> list[Any]:
        """``oid``'s versions at slots up to ``upto``, whole: ``[complete, [[slot, time,
        client, state, thinned], ...]]`` oldest first (nodes answer it in pages,
        ``fab/pastclient.py``; what a reader assembles from ``f + 1`` alike)."""
        h = self.objects.get(oid)
        if h is None:
            return [True, []]
        return [h.complete, [e.wire() for e in h.entries if e.slot <= upto]]

    # -- persistence -------------------------------------------------------------------

    def _put(self, oid: int, e: Entry) -> None:
        self._changes[_key(oid, e.slot)] = canonical([e.time, e.client, e.state, e.thinned])

    def _put_flag(self, oid: int, h: History) -> None:
        self._changes[b"w" + oid.to_bytes(8, "big")] = canonical(h.complete)

    def changes(self) -> list[Change]:
        """What changed since the last call (written with the replica's, ``durable.write``)."""
        out = list(self._changes.items())
        self._changes.clear()
        return out

    def forget(self, lost: list[Change]) -> None:
        """``lost`` was not written: return it with the next :meth:`changes`."""
        for key, value in lost:
            self._changes.setdefault(key, value)

    def load(self, kv: KV) -> None:
        """What a previous run of this node wrote (before :meth:`Replica.restore`).

        Raises:
            ValueError: the stored versions do not parse.
        """
        try:
            for key, value in kv.scan(DB, b"w", b"w" + b"\xff" * 9):
                complete = unpack(value)
                self.objects[int.from_bytes(key[1:9], "big")] = History(complete=bool(complete))
            for key, value in kv.scan(DB, b"v", b"v" + b"\xff" * 17):
                oid, slot = int.from_bytes(key[1:9], "big"), int.from_bytes(key[9:17], "big")
                time, client, state, thinned = unpack(value)
                h = self.objects.setdefault(oid, History())
                h.entries.append(Entry(slot, time, client, state, bool(thinned)))
        except (ValueError, TypeError) as e:
            raise ValueError(f"the stored FaB versions do not parse: {e}") from e
        for oid in self.objects:
            self._schedule(oid, 0)  # looked at again at the next version
