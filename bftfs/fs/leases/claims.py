"""Asking for the exclusive leases of a directory's files ahead of their removals (issue 62).

A removal waits in write-back (``fs/writeback/unlinks.py``), six to an ``fs.unlinkmany``,
only under an exclusive lease on its directory and, when another client may reach the file,
on the file itself; without the file's, it goes alone and the program waits for its round.
Two ways a mount removing many files finds them without one:

- **Made here, turned to the session** (:meth:`Claims.reclaim`): the held files' sweep
  turns the exclusive leases of files left unwritten into shared ones bound to the
  session; a removal of one asks the exclusive leases of the directory's files held so
  back, once per third of a term, and keeps them exclusive for a term.
- **Never held here** (:meth:`Claims.ahead`): another mount made them (a second laptop's
  ``rm -rf`` of a tree the first made), or they went without this mount's lease at a
  reader's first look.  Each removal went alone: ``rm -rf`` of 1 000 such files was
  1 000 ``fs.unlink`` rounds in a row (16-21 s on two busy cores).  After
  :data:`CLAIM_AFTER` removals in a directory could not wait for want of the file's lease,
  the directory's exclusive lease (if not held) and those of the next :data:`WINDOW`
  files of its listing are asked for, in
  the background and in batches (``leases/batches.py``), and again each time the
  removals have gone through half of that: ``rm`` removes in the order it listed, the
  order the listing is kept in, so the leases arrive ahead of the removals that wait on
  them.  A file another client holds refuses its batch; a batch of claims refused is
  not asked again file by file (the removals of those files go alone, as before).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from bftfs.fs.leases.holdings import TRACKED, Holdings
from bftfs.fsobjects.leases import EXCLUSIVE, SHARED

#: Removals in a directory that could not wait for want of the file's own lease, within a
#: term, before the next files' leases are asked for: one or two removals (``rm a b``) ask
#: nothing.
CLAIM_AFTER = 4
#: Files whose exclusive leases are asked for ahead of the removals at a time: 16 updates
#: of eight, four under way at once (``leases/batches.py``), a few rounds ahead of a
#: removal's round each.
WINDOW = 128


class Asker(Protocol):
    """What asks for a lease (``Taker.ask``)."""

    def ask(self, oid: int, now: float, kind: int = SHARED) -> bool: ...

    def ask_first(self, oid: int, now: float) -> None: ...


@dataclass
class _Ahead:
    """One directory's removals since the files' leases were last asked ahead."""

    misses: int = 0
    missed_at: float = float("-inf")
    #: Removals left before the next window is asked for.
    left: int = 0


class Claims:
    """The exclusive leases of files asked for because removals wait on them (module
    docstring)."""

    def __init__(
        self, holdings: Holdings, asker: Asker, files: set[int], stats: Counter[str]
    ) -> None:
        """``files``: the taker's record of objects known to be files (asked for with
        their kind, not as directories); ``stats``: the mount's lease counters."""
        self._holdings = holdings
        self._asker = asker
        self._files = files
        #: Directories whose files' exclusive leases were asked again (trio time).
        self.reclaimed: dict[int, float] = {}
        #: Files whose exclusive lease a removal asked for -> until when (trio time) it is
        #: not turned into a session-bound one (``Taker.to_session``).
        self.kept_exclusive: dict[int, float] = {}
        #: Files asked for by :meth:`ahead` (a bounded record): a refused batch of them is
        #: not asked again file by file.
        self.claimed: set[int] = set()
        self._ahead: dict[int, _Ahead] = {}
        self._stats = stats

    def keeps_exclusive(self, oid: int, now: float) -> bool:
        """Whether a removal asked for ``oid``'s exclusive lease within a term."""
        return self.kept_exclusive.get(oid, float("-inf")) > now

    def reclaim(self, parent: int) -> None:
        """Ask again for the exclusive leases of the files made in ``parent`` whose
        exclusive lease went to the session, at most once per third of a term per
        directory.  Each asked is left exclusive for a term (``Taker.to_session`` passes
        it by, so the held files' sweep renews it as exclusive): turned into a session
        lease again at the next sweep, the directory's next removal found it so, could not
        wait, and asked them all back once more, for as long as ``rm -rf`` ran (issue 62:
        2 284 ``fs.lease`` updates, 1 608 refused, for 3 000 files, every removal alone)."""
        now = trio.current_time()
        if now < self.reclaimed.get(parent, float("-inf")) + self._holdings.term / 3:
            return
        if len(self.reclaimed) >= TRACKED:
            self.reclaimed.clear()
        self.reclaimed[parent] = now
        held = self._holdings.held
        for oid in list(self._holdings.children.get(parent, ())):
            h = held.get(oid)
            if h is not None and h.kept and h.kind == SHARED:  # (a held file: no listing)
                self._keep(oid, now)
                self._asker.ask(oid, now, EXCLUSIVE)

    def ahead(self, parent: int, held: bool, upcoming: Callable[[], Iterable[int]]) -> None:
        """A removal in ``parent`` of a file another client may reach asks to wait
        (``held``: under this mount's exclusive lease on the file); ``upcoming`` gives the
        directory's other entries that are not directories, in the order they were
        listed.  After :data:`CLAIM_AFTER` such removals found no exclusive lease on their
        file, ask for the next :data:`WINDOW` files' (module docstring)."""
        now = trio.current_time()
        state = self._ahead.get(parent)
        if state is None:
            if held:
                return
            if len(self._ahead) >= TRACKED:
                self._ahead.clear()
            state = self._ahead[parent] = _Ahead()
        state.left -= 1
        if not held:
            if now - state.missed_at > self._holdings.term:
                state.misses = 0
            state.misses += 1
            state.missed_at = now
        if state.misses < CLAIM_AFTER or state.left > 0:
            return
        state.left = WINDOW // 2
        self._stats["claim_windows"] += 1
        if self._holdings.exclusive_left(parent) <= 0:  # (what the removals wait on too)
            self._asker.ask_first(parent, now)
        if len(self.claimed) >= TRACKED * 16:
            self.claimed.clear()
        for o in itertools.islice(upcoming(), WINDOW):
            if self._holdings.exclusive_left(o) > 0:
                continue
            self._keep(o, now)
            if self._asker.ask(o, now, EXCLUSIVE):
                self.claimed.add(o)
                self._stats["claims_asked"] += 1

    def _keep(self, oid: int, now: float) -> None:
        """``oid`` is a file whose exclusive lease is kept as such for a term."""
        if len(self.kept_exclusive) >= TRACKED * 16:  # a bound: drop those over
            live = {o: t for o, t in self.kept_exclusive.items() if t > now}
            self.kept_exclusive.clear()
            self.kept_exclusive.update(live)
        self._files.add(oid)
        self.kept_exclusive[oid] = now + self._holdings.term
