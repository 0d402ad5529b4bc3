"""Reading object versions from FaB nodes (``fab/versions.py``): the client's side of the
request kind ``fab.versions``, and the node's answer to it.

Versions are not ordered requests: the nodes answer from what they executed, each for the
same cut, slot ``upto`` (a slot the client saw executed: answers of nodes that executed
more still name only the versions up to it).  A node that has not executed ``upto`` yet
says ``behind`` and is asked again after ``resend`` seconds.

**Pages.**  An object's versions come a page at a time, oldest first: at most
:data:`PAGE_VERSIONS` versions and :data:`PAGE_BYTES` of states (always at least one
version), and ``more`` when versions up to ``upto`` remain; the client asks again from
the last slot of the page it believed (the cursor).  Page boundaries depend only on the
object's versions, so nodes holding the same versions give the same pages.  One answer
carries pages of several objects up to :data:`ANSWER_BYTES`; an object past that is
answered ``None`` and asked again, so an answer stays far below the frame limit
(``net/frames.py``) whatever an object's history (thousands of versions of a directory,
large states).

**Which answer is believed.**  An object's *first* page ``[complete, versions, more]``:

- a complete one that ``f + 1`` nodes gave alike, at once.  One of them is correct, and a
  correct node's complete history is the object's true history up to the cut (it
  executed every slot that changed the object itself: ``fab/versions.py``).  At most
  ``f`` nodes lie, so no forged, truncated or misdated page reaches ``f + 1``.
- else, once ``n - f`` nodes answered, of the pages ``f + 1`` nodes gave alike, the one
  reaching furthest back (its first slot lowest).  Correct nodes can answer truthfully
  but differently: one that installed a snapshot, or thinned past the horizon, knows an
  object's versions only since then and says so (``complete`` false); its page is a true
  suffix of the history, so any page ``f + 1`` nodes vouch for is true, and the
  furthest-reaching one loses least.  Waiting for ``n - f`` answers means: if at least
  ``2f + 1`` correct nodes give the same complete first page, any ``n - f`` answers
  include ``f + 1`` of them (``n - f`` leaves out only ``f`` nodes), so the complete
  history is taken; ``f`` liars answering first cannot hide it, only make a read settle
  for a true but shorter history when fewer correct nodes give it (fewer hold it all, or
  those that do differ by a thinning beyond the cut).

A *continuation* page (the versions after the cursor) ``[versions, more]`` is believed on
``f + 1`` identical answers, by the same argument.  A node answers one only if its
history reaches the cursor (complete, or its oldest version at or before it): a correct
node's versions from its oldest one on are all the object's versions since (it records
every change it executes), so it can vouch for what follows; one whose history starts
later says nothing (``None``).  Answers of nodes at the same cut can still differ by a
thinning at a slot beyond it; such a page is asked again.  Well-formedness is checked
first (slots increasing, within the cursor and the cut; ``more`` only with versions), so
a page that could not come from a correct node never counts, and the cursor always moves.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import trio

from bftfs.fab.versions import Entry, Versions
from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.outcome import ClusterUnavailable
from bftfs.qu.canon import canonical

KIND = "fab.versions"
#: Most objects one request names (a directory's entries are read a batch at a time).
MAX_OBJECTS = 64
#: Most versions in one page of an object's history.
PAGE_VERSIONS = 1024
#: Most bytes of states in one page (a page holds at least one version, whatever its size).
PAGE_BYTES = 1 << 20
#: Most bytes of pages in one answer (the first object's page always goes): with one page
#: beyond it, far below the 8 MiB frame limit.
ANSWER_BYTES = 4 << 20
#: What a version costs a page besides its state (slot, time, client, flags, framing).
ENTRY_BYTES = 48


class VersionsUnavailable(ClusterUnavailable):
    """No ``f + 1`` nodes answered an object's versions alike in time."""


def page(versions: Versions, oid: int, upto: int, after: int | None) -> tuple[list[Any], int]:
    """One page of ``oid``'s versions at slots up to ``upto`` (module docstring) and what it
    weighs: after ``None`` the first page, ``[complete, [[slot, time, client, state,
    thinned], ...], more]``; after a slot the next, ``[[...], more]``, or ``[]`` when this
    node's history does not reach that slot (nothing to vouch for)."""
    h = versions.objects.get(oid)
    entries: list[Entry] = h.entries if h is not None else []
    start = 0 if after is None else bisect.bisect_right(entries, after, key=lambda e: e.slot)
    if after is not None and not (h is not None and (h.complete or start > 0)):
        return [], 0
    out: list[list[Any]] = []
    size = 0
    more = False
    for e in entries[start:]:
        if e.slot > upto:
            break
        cost = ENTRY_BYTES + len(e.state or b"")
        if out and (len(out) >= PAGE_VERSIONS or size + cost > PAGE_BYTES):
            more = True
            break
        out.append(e.wire())
        size += cost
    if after is None:
        return [h.complete if h is not None else True, out, more], size
    return [out, more], size


def serve(versions: Versions, executed: int, payload: Any) -> list[Any]:
    """A node's answer to ``[oids, upto]`` or ``[oids, upto, afters]`` (a cursor per
    object, None for its first page): ``["behind", executed]`` or ``["ok", [page or None
    per object]]`` (:func:`page`; None: not this time, past :data:`ANSWER_BYTES`, or
    nothing to vouch for)."""
    if not (isinstance(payload, list) and len(payload) in (2, 3)):
        raise ValueError("fab.versions: [oids, upto] or [oids, upto, afters] expected")
    oids, upto = payload[0], payload[1]
    if not (isinstance(oids, list) and 0 < len(oids) <= MAX_OBJECTS and isinstance(upto, int)):
        raise ValueError("fab.versions: 1..64 objects and a slot expected")
    afters = payload[2] if len(payload) == 3 else [None] * len(oids)
    if not all(isinstance(o, int) and o >= 0 for o in oids):
        raise ValueError("fab.versions: object ids are naturals")
    if not (
        isinstance(afters, list)
        and len(afters) == len(oids)
        and all(a is None or (isinstance(a, int) and not isinstance(a, bool)) for a in afters)
    ):
        raise ValueError("fab.versions: a cursor (slot or None) per object expected")
    if executed < upto:
        return ["behind", executed]
    out: list[list[Any] | None] = []
    total = 0
    for oid, after in zip(oids, afters, strict=True):
        got, size = page(versions, oid, upto, after)
        if not got or (total and total + size > ANSWER_BYTES):  # (the first always goes)
            out.append(None)
            continue
        out.append(got)
        total += size
    return ["ok", out]


def _entries_ok(entries: Any, after: int | None, upto: int, more: Any) -> bool:
    """Versions a correct node could send: well-formed, slots increasing within (after,
    upto], and some when ``more`` (so the cursor moves)."""
    if not (isinstance(entries, list) and isinstance(more, bool)) or (more and not entries):
        return False
    last = -1 if after is None else after
    for e in entries:
        if not (
            isinstance(e, list)
            and len(e) == 5
            and all(isinstance(x, int) and not isinstance(x, bool) for x in e[:3])
            and (e[3] is None or isinstance(e[3], bytes))
            and isinstance(e[4], bool)
            and last < e[0] <= upto
        ):
            return False
        last = e[0]
    return True


def _well_formed(answer: Any, after: int | None, upto: int) -> bool:
    if after is None:
        return (
            isinstance(answer, list)
            and len(answer) == 3
            and isinstance(answer[0], bool)
            and _entries_ok(answer[1], None, upto, answer[2])
        )
    return (
        isinstance(answer, list)
        and len(answer) == 2
        and _entries_ok(answer[0], after, upto, answer[1])
    )


def best(
    answers: dict[bytes, list[Any]], votes: dict[bytes, set[int]], f: int, n: int
) -> list[Any] | None:
    """The first page to take for one object, or None to wait for more: a complete one that
    ``f + 1`` nodes gave alike; else, once ``n - f`` nodes answered, of those ``f + 1``
    nodes gave alike the one whose versions reach furthest back (its first slot lowest)."""
    vouched = [answers[k] for k, voters in votes.items() if len(voters) >= f + 1]
    complete = [a for a in vouched if a[0]]
    if complete:
        return complete[0]
    if not vouched or sum(len(v) for v in votes.values()) < n - f:
        return None
    return min(vouched, key=lambda a: a[1][0][0] if a[1] else float("inf"))


def vouched(answers: dict[bytes, list[Any]], votes: dict[bytes, set[int]], f: int) -> Any:
    """The continuation page ``f + 1`` nodes gave alike, or None to wait for more."""
    for k, voters in votes.items():
        if len(voters) >= f + 1:
            return answers[k]
    return None


class _Object:
    """One object's read: the pages believed so far, the cursor, this page's votes."""

    def __init__(self) -> None:
        self.complete = True
        self.entries: list[list[Any]] = []
        self.after: int | None = None
        self.votes: dict[bytes, set[int]] = {}
        self.answers: dict[bytes, list[Any]] = {}
        self.done = False
        self.pages = 0

    def vote(self, node: int, answer: list[Any], f: int, n: int) -> None:
        """``node`` answered ``answer`` for the current page: count it, and move on if a
        page is believed."""
        key = canonical(answer)
        for voters in self.votes.values():
            voters.discard(node)  # a node's latest answer counts, once
        self.votes.setdefault(key, set()).add(node)
        self.answers[key] = answer
        if self.after is None:
            chosen = best(self.answers, self.votes, f, n)
            if chosen is None:
                return
            self.complete, entries, more = chosen
        else:
            chosen = vouched(self.answers, self.votes, f)
            if chosen is None:
                return
            entries, more = chosen
        self.entries.extend(entries)
        self.pages += 1
        self.votes, self.answers = {}, {}
        if more:
            self.after = entries[-1][0]
        else:
            self.done = True


class _Moved:
    """Pages believed so far in a batch, and an event set at the next: a node that answered
    is asked again at once if a cursor moved meanwhile, else after ``resend`` seconds."""

    def __init__(self) -> None:
        self.pages = 0
        self.event = trio.Event()

    def tell(self) -> None:
        event, self.event = self.event, trio.Event()
        self.pages += 1
        event.set()


async def fetch(
    ep: Endpoint,
    nodes: Sequence[int],
    f: int,
    oids: Sequence[int],
    upto: int,
    *,
    resend: float = 0.5,
    timeout: float = 30.0,
    counts: Counter[str] | None = None,
) -> dict[int, list[Any]]:
    """Each object's versions up to slot ``upto``, page by page as ``f + 1`` nodes answer
    them alike: ``oid -> [complete, [[slot, time, client, state, thinned], ...]]`` oldest
    first.  ``counts`` (if given) gains ``version requests`` (each one request frame and
    its answer) and ``version pages`` (pages believed).

    Raises:
        VersionsUnavailable: some object's page had no ``f + 1`` matching answers in time.
    """
    todo = list(dict.fromkeys(oids))
    out: dict[int, list[Any]] = {}
    n = Counter[str]() if counts is None else counts
    for i in range(0, len(todo), MAX_OBJECTS):
        batch = todo[i : i + MAX_OBJECTS]
        out.update(await _batch(ep, nodes, f, batch, upto, resend, timeout, n))
    return out


async def _batch(
    ep: Endpoint,
    nodes: Sequence[int],
    f: int,
    oids: list[int],
    upto: int,
    resend: float,
    timeout: float,
    counts: Counter[str],
) -> dict[int, list[Any]]:
    reads = {oid: _Object() for oid in oids}
    moved = _Moved()

    def done() -> bool:
        return all(r.done for r in reads.values())

    async def ask(node: int) -> None:
        want = [o for o in oids if not reads[o].done]
        afters = [reads[o].after for o in want]
        got: Any = None
        counts["version requests"] += 1
        with contextlib.suppress(TransportError, RemoteError):
            got = await ep.call(NodeId(node), KIND, [want, upto, afters], timeout=resend * 4)
        if not (isinstance(got, list) and len(got) == 2 and got[0] == "ok"):
            return  # behind, down or malformed: asked again
        answers = got[1]
        if not (isinstance(answers, list) and len(answers) == len(want)):
            return
        for oid, after, answer in zip(want, afters, answers, strict=True):
            r = reads[oid]
            if r.done or r.after != after or not _well_formed(answer, after, upto):
                continue  # (None, an answer to a page already believed, or a lie)
            pages = r.pages
            r.vote(node, answer, f, len(nodes))
            if r.pages != pages:
                counts["version pages"] += 1
                moved.tell()

    async def keep_asking(node: int, finished: trio.CancelScope) -> None:
        while not done():
            seen, event = moved.pages, moved.event
            await ask(node)
            if done():
                finished.cancel()
            elif moved.pages == seen:
                with trio.move_on_after(resend):
                    await event.wait()

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for j in nodes:
                nursery.start_soon(keep_asking, j, nursery.cancel_scope)
    missing = [o for o in oids if not reads[o].done]
    if missing:
        raise VersionsUnavailable(
            f"versions of {', '.join(f'{o:#x}' for o in missing)}: no {f + 1} matching answers"
        )
    return {oid: [r.complete, r.entries] for oid, r in reads.items()}
