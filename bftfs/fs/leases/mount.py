"""This mount's leases (issue 33): which objects it may answer queries on without a round,
and what it does when the nodes recall one.

A **shared lease** on an object (``fs.lease``, :mod:`bftfs.fsobjects.leases`) means no
other client changes the object without recalling the lease first.  So while one runs,
the answer to a query this mount sent after the lease was granted stays the answer the
servers would give: :meth:`Leases.cached` answers the same query again, without a round,
as long as every object of it is leased here (a lookup, a stat, an open, a listing, a
lookup's miss).  The mount's own update of an object drops what it cached of it
(:meth:`Leases.changed`; a query in flight across the update is not cached, by the
object's generation); an index from each object to the answers it is part of keeps that
in proportion to what is dropped, not to all that is kept.

**When to take one** (``fs/leases/taking.py``).  A lease costs an update round and may
cost another client a recall, so it is taken only for an object queried a few times while
none was held and since this mount last changed it, and not soon after a recall of it here
or a refusal.  It is taken in the background.  A shared lease is bound to the mount's
session (``fs/leases/sessions.py``, issue 62), renewed once per slot and a third of a term
whatever the number of objects, and let go once its tree (it, its directory and the one
above: ``holdings.py``) is unused for a term; any other lease is renewed, on use, once less
than a third of its term is left, and an unused one just ends.  An exclusive lease no
longer needed as such (a file whose writes went) is turned into a bound shared one
(:meth:`Leases.to_session`) rather than renewed.

**Time.**  The holder counts its lease from before it asked, less ``HOLDER_MARGIN`` (the
lease skew both ways and a second), so it stops answering from it before any correct node
could let a conflicting update through.  It counts on two clocks and stops at the first to
run out: ``trio`` time (monotonic: a wall clock set back does not stretch a lease) and the
wall clock, which, unlike the monotonic clock, runs on while the machine is suspended.  A
lease found ended on the wall clock alone means the machine slept (or its clock was set
on): every lease is then dropped as at a recall, the kernel told to forget what it cached
under them (its own timeouts do not count the sleep either), and released.

**Recall** (``fs/leases/recalls.py``).  Every correct node that takes another client's
``fs.recall`` pushes ``{"recall": [oid, ...]}`` to the holders (``node/recalls.py``).  A
push is believed once ``b + 1`` nodes sent it for the object (one of them correct): this
mount stops answering from the lease at once, tells the kernel to forget what it cached
(:attr:`Leases.before_release`) and releases the lease with a gated update, so what the
mount buffered for the object (its pending creates) goes first.  A Byzantine node's false
recalls alone do nothing; withheld ones cost the requester time (``b + 1`` correct nodes
push) or, with the holder cut off, at most the lease's term.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import trio

from bftfs.fs.leases.answers import LeasedAnswers, looked_up_name, passing
from bftfs.fs.leases.holdings import Holdings, Lease
from bftfs.fs.leases.publish import Publisher
from bftfs.fs.leases.recalls import Recalls
from bftfs.fs.leases.releases import Releases, Spawn, Update
from bftfs.fs.leases.sessions import Sessions
from bftfs.fs.leases.taking import Query, Taker
from bftfs.fs.leases.votes import RecallVotes
from bftfs.fsobjects import entries
from bftfs.fsobjects.publish import publication_entry
from bftfs.qu.objects import MethodRefused

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint


class Leases:
    """The leases this mount holds and the answers they keep good (module docstring): the
    face of the wing, composed of the holdings (what is held, on both clocks), the taker
    (asking, taking, renewing), the recalls (the nodes' pushes, letting go, releasing) and
    the answers."""

    def __init__(
        self,
        update: Update,
        query: Query | None = None,
        *,
        term: float,
        b: int,
        spawn: Spawn,
        n: int = 1,
        wall_ns: Callable[[], int] = time.time_ns,
        client: int | None = None,
        mount: int = 0,
    ) -> None:
        """``update``: the gated Q/U update of the file system (``Meta.update``): a
        release must follow what the mount buffered.  ``query``: the ungated query
        (``Meta.query_now``): a directory's listing is read once its exclusive lease is
        granted (None: never).  ``term``: seconds a lease is asked for.  ``b``: pushes from
        ``b + 1`` nodes make a recall believed.  ``spawn``: starts the leases' background
        tasks (``Background.spawn``, ``fs/background.py``).  ``client``, ``mount``: the
        principal id and mount number its lease sessions derive from (None: no sessions,
        every lease renewed on its own).

        The two calls are the only way this part reaches the servers, and ``Meta`` (above
        it: it asks the leases before each query and tells them of each update) gives them
        here: the leases import nothing of it, and call it only from their own background
        tasks (taking, renewing, releasing a lease, reading a listing) and at unmount
        (:meth:`release_all`), never inside one of ``Meta``'s calls."""
        #: What the leases did (``bftfs status``, the benchmarks).
        self.stats: Counter[str] = Counter()
        #: Giving leases back, with the gated update.
        self.releases = Releases(update, wall_ns, self.stats)
        #: The answers, listings and generations the leases keep good.
        self.answers = LeasedAnswers()
        self.holdings = Holdings(term, wall_ns, self.stats, dropped=self._dropped, woke=self._woke)
        self.recalls = Recalls(self.holdings, self.releases, RecallVotes(b), spawn, self.stats)
        #: Publishing what is held back under an exclusive lease a reader asks about,
        #: keeping the lease (``publish.py``, issue 64; None without a query to read with).
        self.publisher = None if query is None else _publisher(self, b, update, spawn)
        #: The files no other client can have seen (``leases/unseen.py``, issue 62).
        self.unseen = self.holdings.unseen
        self.sessions: Sessions | None = None
        if client is not None:
            self.sessions = Sessions(
                update,
                client=client,
                mount=mount,
                n=n,
                term=term,
                wall_ns=wall_ns,
                spawn=spawn,
                stats=self.stats,
            )
            _wire_sessions(self, self.sessions)
        self.taker = Taker(
            self.holdings,
            self.recalls,
            self.answers,
            update,
            query,
            spawn,
            n=n,
            stats=self.stats,
            sessions=self.sessions,
        )
        #: The files' exclusive leases removals ask for (``leases/claims.py``).
        self.claims = self.taker.claims

    def _dropped(self, oid: int) -> None:
        self.taker.forget(oid)
        self.answers.drop(oid)
        self.recalls.forget(oid)

    def _woke(self, oids: list[int]) -> None:
        self.recalls.let_go(oids)

    @property
    def held(self) -> dict[int, Lease]:
        """The leases held here, by object."""
        return self.holdings.held

    @property
    def term(self) -> float:
        """Seconds a lease is asked for."""
        return self.holdings.term

    @property
    def on_grant(self) -> Callable[[list[int]], None] | None:
        """Told the objects a new lease was granted on (before any answer is kept)."""
        return self.taker.on_grant

    @on_grant.setter
    def on_grant(self, fn: Callable[[list[int]], None] | None) -> None:
        self.taker.on_grant = fn

    @property
    def before_release(self) -> Callable[[list[int]], Awaitable[None]] | None:
        """Awaited with the objects whose lease was recalled, before they are released
        (the FUSE layer drops what the kernel cached under them)."""
        return self.recalls.before_release

    @before_release.setter
    def before_release(self, fn: Callable[[list[int]], Awaitable[None]] | None) -> None:
        self.recalls.before_release = fn

    # Answers -------------------------------------------------------------------------

    def remaining(self, oid: int, since: float) -> float:
        """Seconds left on the lease on ``oid`` if it was granted by ``since`` (or came
        with the object's create here: held from its start), else 0."""
        return self.holdings.remaining(oid, since)

    def cached(self, oids: Sequence[int], method: str, arg: Any) -> tuple[bool, Any]:
        """``(True, answer)`` when every object of the query is leased here and the same
        query was answered under the leases; else ``(False, None)``."""
        now = trio.current_time()
        live = self.holdings.live
        if self._listed_miss(oids, looked_up_name(method, arg), now):
            self.stats["hits"] += 1
            self.stats["listed_misses"] += 1
            self.taker.renew_if_due(oids[:1], now)
            return True, MethodRefused("not-found")
        if method == "fs.lookup" and len(oids) == 1 and live(oids[0], now) is not None:
            entry = self.answers.listed_entry(oids[0], looked_up_name(method, arg))
            if entry is not None:
                self.stats["hits"] += 1
                self.stats["listed_hits"] += 1
                self.taker.renew_if_due(oids, now)
                return True, entry
        if not all(live(o, now) for o in oids):
            return False, None
        hit, answer = self.answers.get(oids, method, arg)
        if hit:
            self.stats["hits"] += 1
            self.taker.renew_if_due(oids, now)
        return hit, answer

    def known_absent(self, parent: int, name: bytes) -> bool:
        """Whether directory ``parent`` has no entry ``name`` on the servers as far as a
        listing known whole under a live lease tells (``PendingCreates.sure_to_be_made``)."""
        return self._listed_miss([parent], name, trio.current_time())

    def _listed_miss(self, oids: Sequence[int], name: bytes | None, now: float) -> bool:
        """Whether a lookup of ``name`` in directory ``oids[0]`` misses in a listing this
        mount knows whole under a live lease."""
        if not oids or not self.answers.listed_miss(oids[0], name):
            return False
        return self.holdings.live(oids[0], now) is not None

    def before_query(self, oids: Sequence[int]) -> tuple[float, list[int]]:
        """What :meth:`answered` needs to tell the answer is one the leases keep good."""
        return trio.current_time(), self.answers.generations(oids)

    def answered(
        self,
        oids: Sequence[int],
        method: str,
        arg: Any,
        answer: Any,
        sent: tuple[float, list[int]],
    ) -> None:
        """A query's answer from the servers: kept when every object was leased since
        before it was sent and none changed meanwhile; counts a use of each object."""
        at, generations = sent
        if passing(answer):
            return
        entry = _entries_told(oids, method, answer)
        if entry is not None:
            self.holdings.contention.children(*entry)
            self.holdings.seen_in(*entry)
        now = trio.current_time()
        leased = [self.holdings.live(o, now) for o in oids]
        if all(
            h is not None and h.granted <= at for h in leased
        ) and generations == self.answers.generations(oids):
            self.answers.keep(oids, method, arg, answer)
            return
        self.taker.used(oids, leased, answer, now)

    def changed(
        self,
        oids: Sequence[int],
        *,
        parent: int | None = None,
        names: frozenset[bytes] = frozenset(),
    ) -> None:
        """This mount is about to change (or changed) ``oids``: what it cached of them is
        no longer the servers' answer.  An update of entries ``names`` of directory
        ``parent`` (a create, unlink, mkdir...) leaves the lookups of the directory's
        other names as they were: only those entries and the directory's own attributes
        and listing change (the other objects of the update are dropped whole)."""
        self.answers.changed(oids, parent, names)
        self.taker.changed(oids)  # what this mount itself changes is not worth a lease yet

    def entry_done(
        self,
        method: str,
        parent: int,
        names: frozenset[bytes],
        outcome: str,
        made: dict[bytes, list[int]] | None = None,
        sent_at: float | None = None,
    ) -> None:
        """This mount's update of entries ``names`` of ``parent`` ended: ``outcome`` is
        ``"taken"``, ``"refused"`` or ``"unknown"`` (the cluster did not answer).  A known
        listing follows it: a name made, or refused (``exists``: it is there), is added;
        a name is removed only by a removal taken (an rmdir refused ``not-empty`` leaves
        the name); an unknown outcome drops the listing.  A name wrongly kept only costs a
        lookup a round; a name wrongly dropped would answer "not found" for a file that
        exists.  ``sent_at`` (trio time): when the update was sent; a lease on ``parent``
        granted before it keeps the entries it made known without a listing."""
        before = sent_at is not None and self.holdings.remaining(parent, sent_at) > 0
        self.answers.entry_done(method, parent, names, outcome, made, leased_before=before)
        if made:
            kids = [e[0] for e in made.values() if e and isinstance(e[0], int)]
            self.holdings.contention.children(parent, kids)
            self.holdings.seen_in(parent, kids)

    def listing(self, oid: int) -> AbstractSet[bytes] | None:
        """The names of directory ``oid`` as its listing known whole under a live lease
        here says (with this mount's own entry updates taken), or None.  A use of the
        lease, as a cached answer is: it renews the lease when due."""
        names = self.answers.listings.get(oid)
        now = trio.current_time()
        if names is None or self.holdings.live(oid, now) is None:
            return None
        self.taker.renew_if_due([oid], now)
        return names.keys()

    # Taking and renewing -------------------------------------------------------------

    def exclusive_left(self, oid: int) -> float:
        """Seconds left on this mount's exclusive lease on ``oid`` (0: it holds none)."""
        return self.holdings.exclusive_left(oid)

    def kept_left(self, oid: int) -> float:
        """``Holdings.kept_left``: what is left of an exclusive holding of ``oid``, or of
        the shared lease that continued it (0: none)."""
        return self.holdings.kept_left(oid)

    def exclusive_from(self, oid: int) -> float | None:
        """When this mount's holding of ``oid``, exclusive now, began (trio time; held
        without a break since, so nobody else changed the object meanwhile and state read
        from then on is its state); ``-inf`` when it came with the object's create here;
        None when the mount holds no exclusive lease on it."""
        return self.holdings.exclusive_from(oid)

    def want_exclusive_file(self, oid: int) -> None:
        """This mount closed regular file ``oid`` with writes it had to send at once (not
        held here): after ``USES`` such closes an exclusive lease is asked for, so that
        later ones leave their writes in the mount (``fs/writeback/held.py``).  No listing is
        read for it."""
        self.taker.want_exclusive_file(oid)

    def want_exclusive(self, oid: int) -> None:
        """This mount defers a create or a removal in directory ``oid`` (or would, with an
        exclusive lease: ``fs/writeback/``): after ``USES`` of them an exclusive lease is
        asked for, so that later ones may wait (write-back); a held one is renewed when a
        third of it is left."""
        self.taker.want_exclusive(oid)

    async def take_exclusive(self, oid: int) -> None:
        """Take an exclusive lease on directory ``oid`` now, not after ``USES`` creates:
        a program about to make many entries there at once (``bftfs restore``,
        ``fs/history/restore.py``) has its closes deferred from the first (``fs/writeback/``)."""
        await self.taker.take_exclusive(oid)

    def to_session(self, oids: Sequence[int]) -> int:
        """Turn this mount's exclusive leases on ``oids`` (files with nothing held back)
        into shared ones bound to its session, seven per update, which then cost nothing
        (issue 62; docs/fs.md, "Exclusive to session").  Each is no longer exclusive here
        from the call on; a refused grant leaves the exclusive lease to its end.  How
        many were asked (none without sessions)."""
        return self.taker.to_session(oids)

    def renew(self, oids: Sequence[int]) -> None:
        """Renew the leases held on ``oids`` now, in as few updates as the taker groups
        them (``HeldFiles.renew_used``)."""
        self.taker.renew(oids)

    def inherit(
        self,
        parent: int,
        oids: Sequence[int],
        *,
        empty_dirs: bool = False,
        asked: float | None = None,
    ) -> None:
        """The servers made ``oids`` leased to this mount exclusively until the end of its
        exclusive lease on ``parent`` (an update with ``lx``: ``fsobjects.leases``), which
        is still held: they are held here until the same moment, and given up with it.
        ``empty_dirs``: they are directories just made, whose listing is known whole.
        ``asked``: when their create was sent (trio time), if they are files: made under
        a holding of ``parent`` that began before, they are unseen (:attr:`unseen`)."""
        if not self.holdings.inherit(parent, oids, asked):
            # Recalled or ended while the create was on its way: the grants (if the nodes
            # made them before the recall) are given back, or another client's look at a
            # file would wait for their term (a recall of a lease not held is ignored).
            self.recalls.give_back(oids)
            return
        if empty_dirs:
            for oid in oids:
                self.answers.listings[oid] = {}

    def new_lease_term(self, parent: int) -> int | None:
        """The term (ns) to ask with a ``mkdir`` in ``parent`` that this mount holds no
        exclusive lease on, for the new directory (``fsobjects.leases.NEW_LEASE``), or None
        while ``parent`` is quiet after a recall or refusal here (others work there: a
        directory made in it is likely theirs to use too)."""
        return self.taker.new_lease_term(parent)

    def made_leased(self, oid: int, parent: int, asked: float, lt: int) -> None:
        """The servers made directory ``oid`` in ``parent`` leased to this mount
        exclusively from ``lt`` (its ``mkdir``, asked at trio time ``asked``, carried
        ``NEW_LEASE``): held here like a lease taken then, with the object from its start
        and its listing known whole (empty), so what is made in it goes to write-back at
        once.  A recall of it quiets ``parent`` as a recall of ``parent`` would."""
        if self.recalls.believed(oid):  # recalled before the answer came: given back
            self.recalls.give_back([oid])
            return
        self.holdings.made(oid, parent, asked, lt)
        self.answers.listings[oid] = {}
        self.stats["made_leased"] += 1

    def contended(self, oids: Sequence[int]) -> None:
        """This mount's update of ``oids`` was refused ``leased`` by another client's lease
        (it recalls it and waits): contention on each (``fs/leases/contention.py``)."""
        now = trio.current_time()
        for oid in oids:
            self.holdings.contention.contended(oid, now)

    def waited(self, seconds: float) -> None:
        """A call of this mount waited ``seconds`` behind a recall of another's lease."""
        self.stats["recall_waits"] += 1
        self.stats["recall_wait_ms"] += round(seconds * 1000)

    # Recall ------------------------------------------------------------------------------

    def listen(self, endpoint: Endpoint, nodes: Sequence[int]) -> None:
        """Take the recalls ``endpoint`` is pushed, passing every other push to the handler
        it had (a FaB mount's replies, ``FabMetaClient``), and keep a connection open to
        each of ``nodes``: a node pushes only to connected clients.  With no handler
        before, every push is counted here (a malformed one too)."""
        self.recalls.listen(endpoint, nodes)

    def never_made(self, oid: int) -> None:
        """``oid``'s held-back mkdir was dropped (never sent): the lease it was to come
        with was never granted, so it is forgotten here, not released (a release naming
        an object the servers lack failed, and with it the release of the others in its
        batch, which then held other mounts off for the term)."""
        self.holdings.never_made(oid)

    def new_generation(self, n: int) -> None:
        """The mount switched to a new generation of ``n`` nodes: the leases bound to the
        old one's sessions go, and sessions start again there (``Sessions.restart``)."""
        if self.sessions is not None:
            self.sessions.restart(n)

    def let_go(self, oids: list[int]) -> None:
        """Stop answering from the leases on ``oids`` (those held): a move to a new
        generation did not take them along (``fs/generations.py``)."""
        self.recalls.let_go([oid for oid in oids if oid in self.held])

    async def release_all(self) -> None:
        """Give every lease back (an unmount): other clients need not recall them."""
        await self.recalls.release_all()


def _publisher(leases: Leases, b: int, update: Update, spawn: Spawn) -> Publisher:
    """The publisher of ``leases`` (``publish.py``), told the nodes' requests."""
    recalls = leases.recalls
    publisher = Publisher(
        leases.holdings,
        RecallVotes(b, "publish", publication_entry),
        update,
        spawn,
        leases.releases.wall_ns,
        leases.stats,
        recalls.give_up,
    )
    recalls.on_publish = publisher.on_push
    return publisher


def _wire_sessions(leases: Leases, sessions: Sessions) -> None:
    """What the sessions tell the holdings and the recalls, and ask of them."""
    holdings = leases.holdings
    holdings.session_ends = sessions.ends
    sessions.holds = lambda slot: any(h.slot == slot for h in holdings.held.values())

    def recalled(slot: int, recalls: list[list[int]]) -> None:
        gone = []
        for oid, seq in recalls:
            h = holdings.held.get(oid)
            if h is None and oid in holdings.asking:  # its grant is given back
                holdings.epoch[oid] += 1
            elif h is not None and (h.slot is None or h.seq < seq):
                gone.append(oid)  # granted before the recall pinned it
        leases.recalls.revoke(gone)

    def ended(slot: int) -> None:
        leases.recalls.let_go(holdings.bound(slot))

    def sweep(slot: int) -> None:
        idle = holdings.idle(slot, trio.current_time() - holdings.term)
        if idle:
            leases.stats["session_idle"] += len(idle)
            leases.recalls.let_go(idle)

    sessions.recalled, sessions.ended, sessions.sweep = recalled, ended, sweep


def _entries_told(oids: Sequence[int], method: str, answer: Any) -> tuple[int, list[int]] | None:
    """The directory and the entries' objects a lookup or a listing answer names (for
    ``Contention.children``), or None (anything else, or malformed)."""
    try:
        if method == "fs.lookup" and len(oids) == 1:
            return oids[0], [int(answer[0])]
        if method == "fs.lookupstat" and isinstance(answer, dict):
            return oids[0], [int(answer["e"][0])]
        if method == "fs.readdir" and len(oids) == 1 and isinstance(answer, dict):
            return oids[0], [int(e[0]) for e in entries(answer).values() if e]
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    return None
