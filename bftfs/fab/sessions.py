"""Exactly once per client *stream*: the table of last replies in FaB's replicated state
(seed 003 L5829-5870, extended to several mounts of one client identity).

The seed keeps, per client, its last request id and reply, and runs no request whose id is
not above it.  A client identity may have several mounts at once (one bundle on two
machines; a mount restarted while the old one's requests are still in flight), each with
its own increasing ids, so a table per client alone would drop the slower mount's calls.
Each FaB client process therefore picks a random 63-bit *stream* at start
(``fab/metaclient.py``), and the table keeps the last request id and reply per
``(client, stream)``:

* ``live``: at most :data:`STREAMS` streams per client, each ``[rid, slot, ok, result]``.
  A new stream beyond them moves the one whose last request executed in the lowest slot
  (slots are unique, so every correct node picks the same one) to ``gone``.
* ``gone``: at most :data:`GONE` evicted streams per client, each ``[rid, slot]``, without
  the reply.  A request of such a stream with a higher id runs (the stream comes back to
  ``live``): nothing of it above that id ever ran.  One with an id not above it is
  *expired*: it may have run, its reply is gone, and it is not run again.  Beyond ``GONE``
  the lowest-slot entry is folded into the client's ``floor`` (its id, if higher).
* ``floor``: any request of a stream in neither list with an id not above it is expired;
  one above it runs as a new stream.  Every request that ever ran of a folded stream had an
  id at most its last one, which is at most the floor, so none runs twice.

An expired request is answered ``ok`` false with ``["expired", bar]``, ``bar`` the id the
stream's next request must pass; the client moves its ids past it (module
``fab/metaclient.py``), so a mount whose stream was evicted while it waited for nothing
goes on without an error, and one whose in-flight request was evicted after running
learns that its outcome is unknown (EIO, as when no reply comes).

An attacker holding one client's key can make any number of streams, but only that
client's table: at most ``STREAMS`` replies and ``GONE`` pairs per client, for the clients
the cluster admits.  It cannot evict another client's entries.  Everything here is a
deterministic function of the executed sequence; the table is part of the snapshot.
"""

from __future__ import annotations

from typing import Any

#: Streams per client whose last reply is kept.
STREAMS = 4
#: Evicted streams per client remembered by their last request id.
GONE = 32

#: Verdicts of :meth:`Sessions.verdict`.
RUN, AGAIN, OLD, EXPIRED = "run", "again", "old", "expired"


def _nat(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class Sessions:
    """Per client ``[floor, live, gone]`` (module docstring)."""

    def __init__(self) -> None:
        self.table: dict[int, list[Any]] = {}

    def verdict(self, client: int, stream: int, rid: int) -> tuple[str, list[Any] | None]:
        """What to do with request ``rid`` of ``(client, stream)``: :data:`RUN` it,
        answer it :data:`AGAIN` with the kept entry ``[rid, slot, ok, result]``, drop an
        :data:`OLD` one (a newer one ran), or refuse it :data:`EXPIRED`."""
        t = self.table.get(client)
        if t is None:
            return RUN, None
        floor, live, gone = t
        entry = live.get(stream)
        if entry is not None:
            if rid > entry[0]:
                return RUN, None
            return (AGAIN, entry) if rid == entry[0] else (OLD, None)
        last = gone[stream][0] if stream in gone else floor
        return (RUN, None) if rid > last else (EXPIRED, None)

    def bar(self, client: int, stream: int) -> int:
        """The id the stream's next request must pass to run (0: any)."""
        t = self.table.get(client)
        if t is None:
            return 0
        floor, live, gone = t
        if stream in live:
            return int(live[stream][0])
        return int(gone[stream][0]) if stream in gone else int(floor)

    def record(self, client: int, stream: int, rid: int, slot: int, ok: bool, result: Any) -> None:
        """Request ``rid`` of ``(client, stream)`` ran at ``slot``: keep its reply, and
        evict what the bounds say."""
        t = self.table.setdefault(client, [0, {}, {}])
        live, gone = t[1], t[2]
        gone.pop(stream, None)
        live[stream] = [rid, slot, ok, result]
        if len(live) > STREAMS:
            oldest = min(live, key=lambda s: live[s][1])
            rid_, slot_ = live.pop(oldest)[:2]
            gone[oldest] = [rid_, slot_]
        if len(gone) > GONE:
            oldest = min(gone, key=lambda s: gone[s][1])
            t[0] = max(t[0], gone.pop(oldest)[0])

    def install(self, table: Any) -> bool:
        """Take ``table`` (from a snapshot whose digest was checked); False if it is not
        one this module writes."""
        if not isinstance(table, dict):
            return False
        for client, t in table.items():
            if not (_nat(client) and isinstance(t, list) and len(t) == 3 and _nat(t[0])):
                return False
            live, gone = t[1], t[2]
            if not (isinstance(live, dict) and isinstance(gone, dict)):
                return False
            if len(live) > STREAMS or len(gone) > GONE:
                return False
            if not all(_entry(s, e, 4) for s, e in live.items()):
                return False
            if not all(_entry(s, e, 2) for s, e in gone.items()):
                return False
        self.table = table
        return True


def _entry(stream: Any, entry: Any, size: int) -> bool:
    return (
        _nat(stream)
        and isinstance(entry, list)
        and len(entry) == size
        and _nat(entry[0])
        and _nat(entry[1])
    )
