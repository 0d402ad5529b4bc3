"""What the file system's past answers with: an object's versions and its history, and
the errors of a history question with no answer (split from ``fs/history/past.py``, which
reads them: the module docstring there says what a version and a state at a moment are).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs.fs.history.changes import gone
from bftfs.qu.past import current_at
from bftfs.qu.timestamp import Timestamp


class PastError(Exception):
    """A history question with no answer (the message says why, for the user)."""


class Reclaimed(PastError):
    """The asked moment lies before what retention kept of an object."""


class NotThen(PastError):
    """No such path at that moment."""


class Undecided(PastError):
    """The version current at the asked moment cannot be told: a version whose time too
    few nodes still report (fewer than ``2b + 1``) may or may not lie before it."""


@dataclass(frozen=True)
class Version:
    """One user-visible version of an object."""

    oid: int
    lt: Timestamp
    #: Median of the storing servers' clocks (ns since the epoch); None: unknown (fewer
    #: than ``2b + 1`` nodes still report this version, :func:`bftfs.qu.past.agreed_time`).
    time_ns: int | None
    #: The authenticated principal whose request made it (the nodes checked its MAC).
    client: int
    #: The object's state (unpacked), None: it did not exist.
    state: dict[str, Any] | None
    #: What changed since the version before (see :func:`changes`).
    changes: tuple[str, ...]

    @property
    def id(self) -> str:
        """A short stable name for ``--at``: the first 12 hex digits of the timestamp's
        operation digest."""
        return self.lt.digest[:6].hex()


@dataclass
class ObjectHistory:
    """Every kept version of an object, newest first, and whether it reaches the start."""

    oid: int
    versions: list[Version] = field(default_factory=list)
    complete: bool = False
    #: The chain as walked, newest first: each link's time, the version standing for it
    #: (None: none, the object absent) and whether retention thinned it.  Empty: the
    #: same as ``versions``.
    links: list[tuple[int | None, Version | None, bool]] = field(default_factory=list)
    #: Versions retention's schedule thinned (in ``links``, not in ``versions``).
    thinned: int = 0

    def at(self, time_ns: int) -> Version | None:
        """The version current at ``time_ns`` (None: the object did not exist yet).

        Raises:
            Reclaimed: the moment is older than the oldest version kept, or its version
                was thinned.
            Undecided: a version of unknown time may be the one current then.
        """
        links = self.links or [(v.time_ns, v, False) for v in self.versions]
        found = current_at([t for t, _, _ in links], time_ns)
        if found.undecided:
            raise undecided_at(self.oid, time_ns)
        if found.index is not None:
            _, v, thinned = links[found.index]
            if thinned:
                raise thinned_at(self.oid, time_ns)
            return v
        if self.complete:
            return None
        raise reclaimed_before(self.oid, [t for t, _, _ in links])

    def present_at(self, moments: Sequence[int]) -> list[Version | None]:
        """For each of ``moments``, the version current then if the object existed with a
        state (:func:`present`); None where it did not, or retention let the version go.

        Raises:
            Undecided: a version of unknown time may be the one current at a moment.
        """
        out: list[Version | None] = []
        for t in moments:
            try:
                out.append(present(self.at(t)))
            except Reclaimed:
                out.append(None)
        return out

    def by_id(self, prefix: str) -> Version | None:
        return next((v for v in self.versions if v.id.startswith(prefix.lower())), None)


def present(v: Version | None) -> Version | None:
    """``v`` if it holds the object (not absent, not a removal's last state), else None."""
    return None if v is None or v.state is None or gone(v.state) else v


def undecided_at(oid: int, time_ns: int) -> Undecided:
    """The version of ``oid`` current at ``time_ns`` cannot be told."""
    return Undecided(
        f"object {oid:#x}: which version was current at {iso(time_ns)} cannot be told: "
        "the time of an older version is unknown (fewer than 2b+1 nodes still report it)"
    )


def thinned_at(oid: int, time_ns: int) -> Reclaimed:
    """The version of ``oid`` current at ``time_ns`` was thinned by retention."""
    return Reclaimed(
        f"object {oid:#x}: the version current at {iso(time_ns)} was thinned by "
        "retention's schedule ([retention] keep_hourly/keep_daily)"
    )


def reclaimed_before(oid: int, times: list[int | None]) -> Reclaimed:
    """Versions older than the oldest kept were reclaimed (its time, if known)."""
    if not times:
        return Reclaimed(f"object {oid:#x}: no version is kept")
    return Reclaimed(
        f"object {oid:#x}: versions before {iso(times[-1])} were reclaimed by retention"
    )


def iso(ns: int | None) -> str:
    """A moment (ns since the epoch; None: unknown) as a user reads it, local time."""
    if ns is None:
        return "an unknown time"
    return datetime.datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")
