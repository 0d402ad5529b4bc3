"""A reader's side of a publication (issue 64; the protocol: ``fsobjects/publish.py``).

A query another client's exclusive lease refuses asks that holder to publish
(``fs.askpub``) rather than recalling its lease, and is sent again with the tokens the
request was given until the holder has published up to them; the tokens ride in the
query's mount envelope (``fs/clients/mounttag.py``), which sits below the sealing of
arguments, so they travel in :data:`TOKENS` (a context variable of the asking task) rather
than in the argument.  A holder that has published nothing this mount asked for within
:data:`PUBLISH_WAIT` is recalled as before (``Meta._recalling``).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

#: Seconds a reader waits for a publication before it recalls the lease, unless
#: publications it asked for came meanwhile: a correct holder publishes within its pace
#: and the rounds of sending what it held back (``fs/leases/publish.py``: a directory's
#: first publication in PostMark's create phase sends hundreds of creates, 2-4 s on two
#: loaded cores; waited 2 s, the reader recalled it and the writer lost the directory and
#: cooled it: 1 500 -> 90 tx/s); a crashed one never does, and its lease holds the reader
#: off until its term ends.
PUBLISH_WAIT = 5.0
#: Seconds at most a reader waits while publications it asked for still come, each within
#: :data:`PUBLISH_WAIT` of the one before (a listing asks one for each entry, and a busy
#: holder publishes 32 objects a second or so on two loaded cores): one default lease
#: term.  A recall costs the writer its write-back and cools the objects for it; a
#: 300-file listing every second beside PostMark recalled its files, 25-61 transactions
#: a second.  Slow is not unavailable.
PUBLISH_PATIENCE = 30.0

#: Seconds a publication answers this mount's stats again, as the kernel keeps what an
#: unleased object's stat answered (``attr_timeout``, 1 s by default).  A lookup, an open
#: or a listing asks for a publication of its own: the kernel looks a name up again when
#: the one it cached went stale (ESTALE), and must then find what was made since
#: (close-to-open; ``t4_mount.py::test_cached_names_that_went_stale_are_looked_up_again``).
REUSE = 1.0
#: The most a reader waiting for a publication waits between its queries (s), and the
#: share of a publication's usual wait it waits at least (:meth:`RecentTokens.retry_after`).
RETRY_MAX = 0.5
RETRY_SHARE = 0.25
#: The weight of the latest wait in the usual one (an exponential average).
WAIT_WEIGHT = 0.25
#: A reader waits this many times the usual wait for a publication before recalling.
WAIT_TIMES = 3.0
#: Queries that may read with a recent publication's tokens (:class:`RecentTokens`).
REUSABLE = frozenset({"fs.stat", "fs.statmany", "fs.getxattr", "fs.listxattr"})
#: Objects whose last publication is remembered at most.
MAX_RECENT = 4096

#: The tokens the current task's queries read with (object -> token; None: none).
TOKENS: ContextVar[dict[int, int] | None] = ContextVar("publication_tokens", default=None)

#: ``QUClient.update`` (the objects, the method, the argument).
Update = Callable[[list[int], str, Any], Awaitable[Any]]


async def ask_publication(update: Update, objects: list[int], lt: int) -> dict[int, int]:
    """Ask the exclusive holders of ``objects`` to publish: the tokens of those another
    client holds exclusively (``{}``: none does any more, the query may go at once)."""
    answer = await update(objects, "fs.askpub", {"lt": lt})
    tokens: dict[int, int] = {}
    for item in answer if isinstance(answer, list) else ():
        if (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], int)
            and isinstance(item[2], int)
        ):
            tokens[item[0]] = item[2]
    return tokens


@contextlib.contextmanager
def reading_with(tokens: dict[int, int] | None) -> Iterator[None]:
    """The current task's queries carry ``tokens`` inside this block."""
    reset = TOKENS.set(tokens or None)
    try:
        yield
    finally:
        TOKENS.reset(reset)


class RecentTokens:
    """The tokens this mount last read with, per object, and when (trio time): a lookup or
    stat within :data:`REUSE` reads with them again rather than asking for a publication
    (the nodes take any token up to what was published; a reused one shows this mount what
    was published then, as a kernel's cached answer would)."""

    def __init__(self) -> None:
        self._tokens: OrderedDict[int, tuple[int, float]] = OrderedDict()
        #: When a query last read with tokens of a publication it asked for (trio time).
        self.published_at = float("-inf")
        #: How long a query usually waits from its request to the publication (s).
        self.usual_wait = 0.0

    def patience(self) -> float:
        """Seconds a reader waits for a publication before it recalls: :data:`PUBLISH_WAIT`,
        or :data:`WAIT_TIMES` the usual wait when publications have been slower (a busy
        holder on loaded cores takes seconds, and one recall gives up and cools the
        holder's whole directory), :data:`PUBLISH_PATIENCE` at most.  A holder that
        publishes slowly on purpose holds a reader off no longer than one never
        publishing does (its lease's term)."""
        return min(PUBLISH_PATIENCE, max(PUBLISH_WAIT, WAIT_TIMES * self.usual_wait))

    def publishing(self, started: float, now: float) -> bool:
        """Whether a query that began waiting for a publication at ``started`` waits on
        at ``now`` rather than recalling: within :meth:`patience`, or within
        :data:`PUBLISH_PATIENCE` while publications this mount asked for still come."""
        waited, wait = now - started, self.patience()
        if waited < wait:
            return True
        return waited < PUBLISH_PATIENCE and now - self.published_at < wait

    def reusable(self, method: str, objects: Sequence[int], now: float) -> dict[int, int] | None:
        """The tokens of the objects of a :data:`REUSABLE` query read with within
        :data:`REUSE` of ``now`` (None: none, or not such a query; an object without one
        may need none: a lookup's entry, given up by its maker)."""
        if method not in REUSABLE:
            return None
        out = {}
        for oid in objects:
            got = self._tokens.get(oid)
            if got is not None and now - got[1] <= REUSE:
                out[oid] = got[0]
        return out or None

    def retry_after(self) -> float:
        """Seconds at least between a waiting query's tries: a share of the usual wait for
        a publication.  Each try the holder has not published for yet is refused by every
        node it reaches, which reads each of its objects: a listing retried every 0.1 s
        through publications of a second or two cost the nodes most of their CPU."""
        return min(RETRY_MAX, RETRY_SHARE * self.usual_wait)

    def read_with(
        self, tokens: dict[int, int], now: float, *, asked_at: float | None = None
    ) -> None:
        """A query was answered with ``tokens`` at ``now`` (``asked_at``: when it asked
        for them, so a publication came).  A reuse of tokens is not recorded: their time
        stays the publication's, so a stat sees at most :data:`REUSE` seconds past one
        (restamped at each reuse, a stat every half second read with one token for as long
        as the holder kept its lease)."""
        if asked_at is None:
            return
        self.published_at = now
        self.usual_wait += WAIT_WEIGHT * (now - asked_at - self.usual_wait)
        for oid, token in tokens.items():
            self._tokens[oid] = (token, now)
            self._tokens.move_to_end(oid)
        while len(self._tokens) > MAX_RECENT:
            self._tokens.popitem(last=False)
