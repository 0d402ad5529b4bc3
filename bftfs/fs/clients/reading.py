"""A reader's side of a publication (issue 64; the protocol: ``fsobjects/publish.py``).

A query another client's exclusive lease refuses asks that holder to publish
(``fs.pubreq``) rather than recalling its lease, and is sent again with the tokens the
request was given until the holder has published up to them; the tokens ride in the
query's mount envelope (``fs/clients/mounttag.py``), which sits below the sealing of
arguments, so they travel in :data:`TOKENS` (a context variable of the asking task) rather
than in the argument.  A holder that has published nothing this mount asked for within
:data:`PUBLISH_WAIT` is recalled as before (``Meta._recalling``).

Between its tries a waiting query waits for the nodes' word that a publication landed
(:class:`PublishedHints`), :data:`HINT_FALLBACK` at most: each try the holder has not
published for yet is refused by every node it reaches, after reading every object it
names, and such tries polled every half second were the nodes' busiest work beside a
mount listing a writer's directory once a second.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.fs.clients.protocols import take_pushes
from bftfs.fsobjects.leases import MAX_RECALLED
from bftfs.outcome import paused

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
#: The weight of the latest wait in the usual one (an exponential average).
WAIT_WEIGHT = 0.25
#: A reader waits this many times the usual wait for a publication before recalling.
WAIT_TIMES = 3.0
#: Queries that may read with a recent publication's tokens (:class:`RecentTokens`).
REUSABLE = frozenset({"fs.stat", "fs.statmany", "fs.getxattr", "fs.listxattr"})
#: Objects whose last publication is remembered at most.
MAX_RECENT = 4096
#: Seconds a query waiting for a publication waits at most for the nodes' word that it
#: landed (:class:`PublishedHints`) before it tries again anyway: a push lost, or nodes
#: of a release without the hints.
HINT_FALLBACK = 1.0

#: The tokens the current task's queries read with (object -> token; None: none).
TOKENS: ContextVar[dict[int, int] | None] = ContextVar("publication_tokens", default=None)

#: The request to publish: a query (``fsobjects/publish.py``).
ASK_PUBLISH = "fs.pubreq"

#: ``QUClient.query`` (the objects, the method, the argument).
Query = Callable[[list[int], str, Any], Awaitable[Any]]


class AskTokens:
    """This mount's tokens for its requests to publish: each above every one before it
    (a token at or below what a holder published for this reader would read that older
    publication), starting from the wall clock so that a remount of the same mount number
    starts above what the last one used."""

    def __init__(self, wall_ns: Callable[[], int]) -> None:
        self._wall_ns = wall_ns
        self._last = 0

    def next(self) -> int:
        """A new token."""
        self._last = max(self._last + 1, self._wall_ns())
        return self._last


async def ask_publication(
    query: Query, objects: list[int], lt: int, tokens: AskTokens
) -> dict[int, int]:
    """Ask the exclusive holders of ``objects`` to publish, with a new token of
    ``tokens``: the tokens of those another client holds exclusively (``{}``: none does
    any more, the query may go at once)."""
    token = tokens.next()
    answer = await query(objects, ASK_PUBLISH, {"lt": lt, "k": token})
    got: dict[int, int] = {}
    for item in answer if isinstance(answer, list) else ():
        if isinstance(item, list) and len(item) == 3 and isinstance(item[0], int):
            got[item[0]] = token
    return got


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


@dataclass(eq=False)
class _Waiter:
    """A query waiting for a publication: per object it waits on, the nodes that said it
    was published; and its wake-up."""

    nodes: dict[int, set[int]]
    need: int
    woken: trio.Event = field(default_factory=trio.Event)

    def ready(self) -> bool:
        """Whether ``need`` nodes said so of every object (none waited on: never)."""
        return bool(self.nodes) and all(len(said) >= self.need for said in self.nodes.values())

    def heard(self, oid: int, node: int) -> None:
        self.nodes[oid].add(node)
        if self.ready():
            self.woken.set()


class PublishedHints:
    """The nodes' word that a holder published objects this mount asked a publication of
    (``{"published": [oid, ...]}``, pushed by every node that took the holder's
    ``fs.publish``, or its ``fs.release``: ``node/recalls.py``).  A waiting query tries
    again once ``b + 1`` nodes said so of each object it waits on since its last try (a
    listing's batch is published in parts), so a Byzantine node alone cannot make it try early;
    a lying pair costs it one refused try, a withheld word :data:`HINT_FALLBACK`.  Only a
    hint: what the query reads is what the nodes check (its tokens)."""

    def __init__(self, b: int) -> None:
        self._need = b + 1
        #: Object -> node -> when (trio time) that node last said it was published.
        self._heard: OrderedDict[int, dict[int, float]] = OrderedDict()
        self._waiters: dict[int, set[_Waiter]] = {}
        #: ``woken`` (by the nodes' word), ``fallback`` (waited it out), ``malformed``.
        self.stats: Counter[str] = Counter()

    def listen(self, endpoint: Any, nodes: Sequence[int]) -> None:
        """Take the word ``endpoint`` (``net.endpoint.Endpoint``) is pushed, passing every
        other push on (:func:`take_pushes`), and keep a connection to each of ``nodes``:
        a node pushes only to connected clients."""
        take_pushes(endpoint, "published", self.on_push)
        endpoint.stay_connected(list(nodes))

    def on_push(self, node: int, body: dict[str, Any]) -> None:
        """A node's ``{"published": [oid, ...]}``."""
        oids = body.get("published")
        if not isinstance(oids, list) or len(oids) > MAX_RECALLED:
            self.stats["malformed"] += 1
            return
        now = trio.current_time()
        for oid in oids:
            if not isinstance(oid, int) or isinstance(oid, bool):
                self.stats["malformed"] += 1
                continue
            self._heard.setdefault(oid, {})[node] = now
            self._heard.move_to_end(oid)
            for waiter in self._waiters.get(oid, ()):
                waiter.heard(oid, node)
        while len(self._heard) > MAX_RECENT:
            self._heard.popitem(last=False)

    def _heard_since(self, oid: int, since: float) -> set[int]:
        return {node for node, at in self._heard.get(oid, {}).items() if at >= since}

    async def wait(self, objects: Sequence[int], since: float, at_most: float) -> None:
        """Until ``b + 1`` nodes said since ``since`` (trio time: the last try's start)
        that each of ``objects`` was published, ``at_most`` seconds: contention's wait,
        not the cluster's silence, so it uses up no patience (``outcome.paused``)."""
        started = trio.current_time()
        try:
            await self._wait(objects, since, at_most)
        finally:
            paused(trio.current_time() - started)

    async def _wait(self, objects: Sequence[int], since: float, at_most: float) -> None:
        waiter = _Waiter({oid: self._heard_since(oid, since) for oid in objects}, self._need)
        if waiter.ready():
            self.stats["woken"] += 1
            return
        for oid in objects:
            self._waiters.setdefault(oid, set()).add(waiter)
        try:
            with trio.move_on_after(at_most):
                await waiter.woken.wait()
        finally:
            for oid in objects:
                waiting = self._waiters.get(oid)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[oid]
        self.stats["woken" if waiter.woken.is_set() else "fallback"] += 1
