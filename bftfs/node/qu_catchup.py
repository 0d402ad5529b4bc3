"""Catch-up of a restarted Q/U server (issue 22, item 4): the objects that changed while it
was down, brought up to date in the background.

A server that was down holds none of the candidates accepted meanwhile.  Q/U stays correct
without it (it serves what it has; object sync fetches conditioned-on versions on demand),
but while it is behind, every object that changed meanwhile has its latest candidate at
only the servers that were up: if one of them fails next, a quorum must include the
restarted server, the latest candidate looks merely repairable, and every read of every such
object becomes a barrier and a copy.  Catching up makes the next failure cost nothing.

How, using only the protocol's own steps (nothing is taken on one peer's word):

1. **Scan**: ask every other server for the newest timestamp of each object it holds
   (``qu.latest``, paged).  An object is behind here when ``b + 1`` servers list a newer
   timestamp than this server's history (an update made while it was down reached at least
   ``q - 1 >= b + 1`` of the others), so one Byzantine server cannot invent work.
2. **Classify**: read the object's histories from the others (``qu.history``) and cull them
   with this server's own authenticator check.  The latest candidate is caught up when a
   client could inline-repair it: the only one at its timestamp, of order at least ``r``.
   Contention (several candidates at the latest time, or one below ``r``) is left to the
   clients' repair with barriers, never guessed at here.
3. **Apply**: fetch the stored request that made the candidate (``qu.fetch``), check that it
   sets up exactly that timestamp, and run it on this server as an inline repair
   (L2561-2570) with the others' histories as evidence: ``s_request`` accepts it only if
   the evidence shows the candidate at ``b + 1`` servers, object-syncs the conditioned-on
   version from ``b + 1`` matching hosts, re-runs the method and stores the result.  The
   server's history then lists the latest candidate as if it had never been away.

4. **From the current state** (issue 31 item 12), when step 3 fails because the history
   it replays is gone (a node away longer than ``keep_seconds``: the stored request and
   the conditioned-on versions pruned, other objects of the candidate forgotten): fetch
   the version at the candidate from ``b + 1`` hosts answering byte for byte (state,
   applied table, kind, stored answer) and take it with the candidate, at each of its
   objects that ``b + 1`` others list it at, in one transaction
   (``adoption.adopt_step``): what the inline repair would have left.

Progress is kept in ``node.progress["qu.catchup"]`` (``bftfs status`` shows it); a pass
that leaves objects failed is run again later (``state`` ``incomplete`` meanwhile).  One object
at a time, with a checkpoint between objects, so foreground requests are never held up.
A candidate whose stored request carries proven links (rare: see ``links.py``) is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import PrincipalId
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import QuorumUnavailable
from bftfs.qu import schema
from bftfs.qu.adoption import BARRIER_VERSION, Current, adopt_step, listed_by
from bftfs.qu.classify import QUThresholds, View, missing_objects
from bftfs.qu.core import expected_lt
from bftfs.qu.history import OHSEntry
from bftfs.qu.messages import (
    KIND_FETCH,
    KIND_HISTORY,
    KIND_LATEST,
    KIND_SYNC,
    MAX_LATEST,
    VERSION,
    MessageError,
    ReplyStatus,
    parse_latest_reply,
)
from bftfs.qu.objsync import SyncVotes, sync_order
from bftfs.qu.reads import handle_history
from bftfs.qu.replica import cull
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import ZERO, Candidate, Timestamp

if TYPE_CHECKING:
    from bftfs.node.parts import NodeParts

log = logging.getLogger(__name__)

#: Rounds of deduction (objects a multi-object candidate names) before an object is skipped.
MAX_DEDUCTION_ROUNDS = 4
#: How long fetching a current version from b + 1 hosts may take.
SYNC_TIMEOUT = 2.0
#: The wait before another pass while objects are left failed: doubled each time, up to
#: the second figure, for as long as the node runs (a peer it needs may be down for long).
RETRY_SECONDS = 10.0
RETRY_MAX_SECONDS = 600.0

Serve = Callable[[Request, int], Awaitable[Reply]]


def behind(
    own: Mapping[int, Timestamp], listings: Iterable[Mapping[int, Timestamp]], b: int
) -> list[int]:
    """Objects that at least ``b + 1`` listings show newer than ``own`` (missing: never
    touched here); fewer could be one Byzantine server inventing work.

    Oldest first (by the least newer timestamp listed): a multi-object update is older than
    what followed it at each of its objects, so it is applied before a later update moves
    one of its objects past it here (applying it after would fail the currency check: the
    create of a file after the file's first write)."""
    votes: dict[int, list[Timestamp]] = {}
    for listing in listings:
        for oid, lt in listing.items():
            if lt > own.get(oid, ZERO):
                votes.setdefault(oid, []).append(lt)
    return sorted((o for o, lts in votes.items() if len(lts) > b), key=lambda o: min(votes[o]))


def target(view: View, oid: int, me: int) -> Candidate | None:
    """The latest candidate of ``oid`` if server ``me``'s history lacks it and a client
    could inline-repair it (L2561-2570): the only candidate at the latest timestamp, of
    order at least ``r``.  With this server's own (stale) history in the view, a candidate
    complete at the others shows order ``q - 1`` here.  None: nothing to do, or contention
    that the clients' repair (barriers) must settle."""
    latest = view.latest_time(oid)
    tops = [c for c in view.candidates(oid) if c.lt == latest]
    if len(tops) != 1 or latest == ZERO or view.order(oid, tops[0]) < view.th.r:
        return None
    cand = tops[0]
    mine = view.mohs[oid].get(me)
    if mine is not None and any(c.key == cand.key for c in mine.rh):
        return None
    return cand


class CatchUp:
    """The background catch-up of one node (see the module docstring)."""

    def __init__(
        self,
        node: NodeParts,
        cfg: ReplicaConfig,
        serve: Serve,
        on_update: Callable[[Iterable[int]], None] = lambda _objects: None,
    ) -> None:
        """``on_update``: told the objects a catch-up from the current state changed (the
        pruner schedules their retention, as for an accepted update)."""
        self.node = node
        self.cfg = cfg
        self.th: QUThresholds = cfg.th
        self.serve = serve
        self.on_update = on_update
        self.others = [
            PrincipalId(s) for s in ((cfg.me + i) % cfg.th.n for i in range(1, cfg.th.n))
        ]
        self.progress: dict[str, Any] = {
            "state": "scanning",
            "behind": 0,
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "adopted": 0,
            "passes": 0,
            "seconds": 0.0,
        }

    async def run(self) -> None:
        """Scan, then bring every object found behind up to date; never raises.  While
        objects are left failed (a peer that was down, an object being repaired), try
        again from a new scan, :data:`RETRY_SECONDS` later and twice as long each time (at
        most :data:`RETRY_MAX_SECONDS`); ``state`` says ``incomplete`` meanwhile."""
        self.node.progress["qu.catchup"] = self.progress
        finished = self.node.finished["qu.catchup"] = trio.Event()
        delay = RETRY_SECONDS
        while True:
            await self._pass()
            finished.set()
            if self.progress["state"] != "incomplete":
                return
            await trio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_SECONDS)
            self.progress.update(state="scanning", behind=0, done=0, skipped=0, failed=0, adopted=0)

    async def _pass(self) -> None:
        """One scan and one pass over what it found behind."""
        started = time.monotonic()
        self.progress["passes"] += 1
        try:
            todo = await self.scan()
            self.progress.update(state="running", behind=len(todo))
            again = []
            for oid in todo:
                outcome = await self._try(oid)
                if outcome == "failed":
                    again.append(oid)  # once more at the end: an order we could not see
                else:
                    self.progress[outcome] += 1
                self.progress["seconds"] = round(time.monotonic() - started, 3)
            for oid in again:
                self.progress[await self._try(oid)] += 1
            self.progress["state"] = "incomplete" if self.progress["failed"] else "done"
        except trio.Cancelled:
            raise
        except Exception:  # the node must keep serving whatever happens here
            log.exception("Q/U catch-up failed")
            self.progress["state"] = "failed"
        self.progress["seconds"] = round(time.monotonic() - started, 3)
        if self.progress["behind"]:
            # A first pass that left objects failed is retried shortly (``run``): at a
            # start racing clients' own updates of those objects it often does.  Only a
            # retry that still leaves some is worth an operator's attention.
            log.log(
                logging.WARNING
                if self.progress["failed"] and self.progress["passes"] > 1
                else logging.INFO,
                "Q/U catch-up: %s%s",
                self.progress,
                " (trying again)" if self.progress["failed"] else "",
            )

    async def _try(self, oid: int) -> str:
        await self.node.gate.step()  # client requests first (node/yielding.py)
        try:
            outcome = await self.one(oid)
        except (TransportError, RemoteError, MessageError, QuorumUnavailable) as e:
            log.info("catch-up of object %d: %s", oid, e)
            outcome = "failed"
        await trio.lowlevel.checkpoint()
        return outcome

    async def scan(self) -> list[int]:
        """Objects ``b + 1`` other servers hold newer versions of (step 1)."""
        listings = []
        for peer in self.others:
            got = await self._listing(peer)
            if got is not None:
                listings.append(got)
        wanted: set[int] = set()
        for listing in listings:
            wanted.update(listing)
        own: dict[int, Timestamp] = {}
        ordered = sorted(wanted)
        for start in range(0, len(ordered), MAX_LATEST):
            await self.node.gate.step()  # a page a step: client requests first
            page = ordered[start : start + MAX_LATEST]
            own.update(self.node.store.read(functools.partial(_own_latest, oids=page)))
        return behind(own, listings, self.th.b)

    async def _listing(self, peer: PrincipalId) -> dict[int, Timestamp] | None:
        """Everything ``peer`` lists, or None if it does not answer or answers garbage."""
        out: dict[int, Timestamp] = {}
        after: int | None = None
        while True:
            try:
                raw = await self.node.endpoint.call(
                    peer, KIND_LATEST, {"v": VERSION, "after": after, "limit": MAX_LATEST}
                )
                items, more = parse_latest_reply(raw)
            except (TransportError, RemoteError, MessageError) as e:
                log.info("catch-up: node %s does not list its objects: %s", peer, e)
                return None
            if items and after is not None and items[0][0] <= after:
                return None  # not ascending across pages: not a listing we can use
            out.update(items)
            if not more or not items:
                return out
            after = items[-1][0]
            await trio.lowlevel.checkpoint()

    async def one(self, oid: int) -> str:
        """Bring ``oid`` up to date (steps 2 and 3); ``done``, ``skipped`` or ``failed``."""
        mohs = {oid: await self._histories(oid)}
        for _ in range(MAX_DEDUCTION_ROUNDS):
            view = View(mohs, self.th)
            need = missing_objects(view)
            if not need:
                break
            for o in need:
                mohs[o] = await self._histories(o)
        else:
            return "skipped"
        cand = target(view, oid, int(self.cfg.me))
        if cand is None:
            if view.latest_time(oid) == ZERO:
                return "done"  # nobody holds anything of it any more (forgotten)
            return "done" if self._lists_latest(view, oid) else "skipped"
        why = await self._replay(cand, view, mohs)
        if why is None:
            return "done"
        # The history it would replay is gone (pruned or forgotten while this server was
        # away): take the current version from b + 1 matching hosts instead.
        if await self._adopt(oid, cand, mohs):
            self.progress["adopted"] += 1
            return "done"
        log.info("catch-up of object %d: %s; its current version not taken either", oid, why)
        return "failed"

    async def _replay(
        self, cand: Candidate, view: View, mohs: dict[int, dict[int, OHSEntry]]
    ) -> str | None:
        """Run the request that made ``cand`` on this server as an inline repair (step 3);
        None when it was accepted, else why not."""
        original = await self._stored_request(cand, view)
        if original is None:
            return f"no server hands over the request of {cand}"
        if original.links:
            return f"the request of {cand} carries links"
        for o in original.objects:
            if o not in mohs:
                mohs[o] = await self._histories(o)
        evidence = {o: mohs[o] for o in original.objects}
        req = Request(original.client, original.objects, original.mohs, original.op, evidence)
        rep = await self.serve(req, int(self.cfg.me))
        if rep.status is not ReplyStatus.OK:
            op = original.op.method if original.op else "repair"
            return f"{rep.status.value} {rep.why} (candidate {cand}, op {op})"
        return None

    async def _adopt(self, oid: int, cand: Candidate, mohs: dict[int, dict[int, OHSEntry]]) -> bool:
        """Catch ``oid`` up from the current state (``adoption.adopt_step``): take ``cand``
        at each of its objects where ``b + 1`` others list it (as it stands there: its
        conditioned-on time is the object's own), each version from ``b + 1`` hosts
        answering byte for byte, all in one transaction; whether ``oid`` took it."""
        cands: dict[int, Candidate] = {}
        current: dict[int, Current] = {}
        for o in cand.objects:
            if o not in mohs:
                mohs[o] = await self._histories(o)
            at = self._agreed_variant(cand, mohs[o])
            if at is None:
                continue
            hosts = listed_by(self.cfg, o, mohs[o], at)
            if len(hosts) < self.th.b + 1:
                continue  # moved on there, or forgotten: not taken at that object
            if at.lt.barrier:  # no state to fetch (adoption.BARRIER_VERSION)
                cands[o], current[o] = at, BARRIER_VERSION
                continue
            got = await self._current(o, at, hosts)
            if got is not None:
                cands[o], current[o] = at, Current(*got)
        if oid not in current:
            return False
        now_ns = self.node.now_ns()
        try:
            taken = await self.node.store.write(
                functools.partial(
                    adopt_step,
                    cfg=self.cfg,
                    cands=cands,
                    evidence=mohs,
                    current=current,
                    now_ns=now_ns,
                )
            )
        except Exception:  # a history no correct server sends (two candidates at one time)
            log.exception("catch-up of object %d: taking %s failed", oid, cand)
            return False
        if taken:
            self.on_update(taken)
        return oid in taken

    def _agreed_variant(self, cand: Candidate, ohs: dict[int, OHSEntry]) -> Candidate | None:
        """The candidate with ``cand``'s key as most other servers list it in ``ohs`` (a
        key leaves out the conditioned-on time, which differs between the objects of a
        multi-object candidate and which one server could forge), or None."""
        seen = Counter(
            c for s, e in ohs.items() if s != int(self.cfg.me) for c in e.rh if c.key == cand.key
        )
        return seen.most_common(1)[0][0] if seen else None

    async def _current(
        self, oid: int, cand: Candidate, hosts: set[int]
    ) -> tuple[bytes | None, bytes, str, Any] | None:
        """``oid``'s version at ``cand`` from ``b + 1`` hosts that agree byte for byte,
        with its kind and stored answer (object sync's rule, :mod:`bftfs.qu.objsync`)."""
        votes = SyncVotes(self.th.b, full=True)
        targets = [PrincipalId(s) for s in sync_order(int(self.cfg.me), sorted(hosts), self.th.n)]
        with contextlib.suppress(QuorumUnavailable):
            await self.node.endpoint.quorum_call(
                targets,
                KIND_SYNC,
                {"v": VERSION, "oid": oid, "lt": cand.lt.encode()},
                enough=lambda _valid: votes.decided(),
                accept=lambda _node, raw: votes.add(raw),
                initial=self.th.b + 1,
                probe_after=0.05,
                timeout=SYNC_TIMEOUT,
            )
        result: tuple[bytes | None, bytes, str, Any] | None = votes.result()
        return result

    def _lists_latest(self, view: View, oid: int) -> bool:
        mine = view.mohs[oid].get(int(self.cfg.me))
        latest = view.latest_time(oid)
        return mine is not None and any(c.lt == latest for c in mine.rh)

    async def _histories(self, oid: int) -> dict[int, OHSEntry]:
        """``oid``'s histories from q - 1 others and this server, culled with this
        server's own key (forged histories drop out, as at any server)."""
        got: dict[int, OHSEntry] = {}

        def accept(node: int, raw: Any) -> bool:
            try:
                got[int(node)] = Reply.from_wire(raw, (oid,), self.th.n).hist[0]
            except (MessageError, IndexError):
                return False
            return True

        # Too few answers classify nothing as complete: the object is then skipped.
        with contextlib.suppress(QuorumUnavailable):
            await self.node.endpoint.quorum_call(
                self.others,
                KIND_HISTORY,
                {"v": VERSION, "o": [oid]},
                enough=lambda valid: len(valid) >= self.th.q - 1,
                accept=accept,
            )
        own = self.node.store.read(lambda kv: handle_history(kv, self.cfg, (oid,)))
        got[int(self.cfg.me)] = own.hist[0]
        culled, _ = cull(self.cfg, {oid: got})
        return culled[oid]

    async def _stored_request(self, cand: Candidate, view: View) -> Request | None:
        """The request that made ``cand``, from a server listing it, checked to set up
        exactly ``cand``'s timestamp (a host cannot hand over another)."""
        hosts = sorted(
            {
                s
                for o in cand.objects
                if o in view.mohs
                for s, e in view.mohs[o].items()
                if s != int(self.cfg.me) and any(c.key == cand.key for c in e.rh)
            }
        )
        for s in hosts:
            try:
                raw = await self.node.endpoint.call(
                    PrincipalId(s), KIND_FETCH, {"v": VERSION, "lt": cand.lt.encode()}
                )
                if not isinstance(raw, dict) or raw.get("r") is None:
                    continue
                req = Request.from_wire(raw["r"], self.th.n)
            except (TransportError, RemoteError, MessageError):
                continue
            if req.objects == cand.objects and expected_lt(req, self.th) == cand.lt:
                return req
        return None


def _own_latest(kv: Any, oids: list[int]) -> dict[int, Timestamp]:
    """This server's newest timestamp of each of ``oids`` (ZERO where it never touched
    one), read from the stored histories' first candidates (``schema.newest_of``)."""
    return {oid: schema.newest_of(kv, oid) for oid in oids}
