"""The client's side of the cross-group commit (issue 66, docs/layout.md "Operations
across groups"): :func:`run_transaction` drives one transaction over one Q/U client per
group, and resolves the transactions it meets.

One attempt: ``txn.begin`` on rec(T) (coordinator group), the ``txn.prepare`` of every
participant in parallel, ``txn.decide`` on rec(T), the ``txn.finish`` of every participant
in parallel: four Q/U rounds in sequence when nothing contends.  Each vote and decision
comes back signed by the nodes that accepted it (``QUClient.update_signed``); the group
clients are made with :func:`vouch_for`, so a node whose OK reply lacks a valid signature
does not count toward the quorum (the round asks another node) and every certificate
holds ``q`` valid signatures.

Meeting another transaction's intent (``intent <D> <group> <record>``): the driver reads
the intent (``txn.intent``) for its descriptor and the record (``txn.record``); a decided
one, or one pending past its deadline (which the driver then aborts), it finishes on every
participant; then it aborts its own attempt (its client may: no-wait two-phase locking, so
two transactions never wait for each other), backs off for a random time and tries again
under a new id.  Deadlines and back-off come from an injected clock and sleep, so tests
run in virtual time.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from bftfs.fsobjects.txn import ABORT, COMMIT, GroupKeys, Part, digest
from bftfs.fsobjects.txnsign import verify
from bftfs.layout.model import Layout
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reply import Reply, signed_statement
from bftfs.qu.request import Request
from bftfs.qu.timestamp import Timestamp
from bftfs.thresholds import qu_quorums

#: The updates whose replies nodes sign (``Method.txn``).
SIGNED = frozenset({"txn.begin", "txn.prepare", "txn.decide", "txn.finish"})
#: How long a transaction may take by default (its deadline past its begin), ns.
SPAN = 10 * 10**9


class TxnGroup(Protocol):
    """One group's Q/U client (``bftfs.qu.client.QUClient``, made with :func:`vouch_for`)."""

    async def update_signed(
        self, objects: int | Sequence[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> tuple[Any, Timestamp, dict[int, bytes]]:
        """An update, the version it made and the nodes' signatures of it."""
        ...

    async def query(self, objects: int | Sequence[int], method: str, arg: Any = None) -> Any:
        """A query's answer."""
        ...


def group_keys(layout: Layout) -> GroupKeys:
    """What certificates are checked against under ``layout``: each group's node keys
    in group order and its quorum ``q`` (``thresholds.qu_quorums``)."""
    groups = tuple(tuple(n.public_key for n in layout.group_nodes(g.id)) for g in layout.groups)
    quorums = tuple(qu_quorums(len(ks), layout.t, layout.b)[0] for ks in groups)
    return GroupKeys(layout.version, groups, quorums)


def vouch_for(keys: GroupKeys, group: int) -> Callable[[int, Request, Reply], bool]:
    """A group client's reply check (``QUClient(vouch=...)``): an OK reply to a signed
    update counts only with its node's valid signature."""
    publics = keys.groups[group]

    def vouch(node: int, req: Request, rep: Reply) -> bool:
        op = req.op
        if op is None or op.query or op.method not in SIGNED:
            return True
        if rep.sig is None or rep.lt is None or not 0 <= node < len(publics):
            return False
        stmt = signed_statement(op.method, req.objects, rep.lt, rep.answer)
        return verify(publics[node], stmt, rep.sig)

    return vouch


def certificate(lt: Timestamp, answer: Any, sigs: Mapping[int, bytes]) -> dict[str, Any]:
    """A certificate of an update's version ``lt`` and ``answer`` from its signatures."""
    return {"lt": lt.encode(), "a": answer, "s": [[n, sigs[n]] for n in sorted(sigs)]}


@dataclass
class Outcome:
    """How a transaction ended: ``committed``, or why not (the refusal a participant
    voted no with, or ``contention`` after every attempt met intents)."""

    committed: bool
    why: str = ""
    attempts: int = 0
    #: Other transactions this driver finished or aborted on the way.
    resolved: int = 0
    digests: list[bytes] = field(default_factory=list)


class Abandon(Exception):
    """Raised by an ``at_step`` hook: the driver stops as a crashed client would."""


#: Refusals saying the client's view of an object is out of date (an entry names another
#: object, or none).  Where parts disagree, these are the reason given: the one-group
#: method checks the entry before the object it names, so a stale entry is what it
#: refuses, and the file system reads again and retries; another part's refusal may only
#: follow from the same stale declaration (a file whose last link went with the entry
#: the client still saw: "link count already zero", EINVAL, found by the checker over
#: three groups).
OUT_OF_DATE = frozenset({"stale", "not-found"})
#: The refusal of a descriptor made under another layout version than the node holds
#: (``fsobjects/txn.parse_txn``): the client or the node has not taken the newest yet.
LAYOUT_REFUSAL = "txn-layout"


@dataclass
class Driver:
    """One client's transactions over ``groups`` (index = group number)."""

    groups: Sequence[TxnGroup]
    keys: GroupKeys
    client: int
    clock: Callable[[], int]
    rng: random.Random
    sleep: Callable[[float], Awaitable[Any]] = trio.sleep
    span: int = SPAN
    attempts: int = 30
    #: Awaited with a step's name (``begun``, ``prepared``, ``decided``) once it is
    #: done; raising :class:`Abandon` stops there (tests: a client that crashes mid-way,
    #: or one slow between its steps).
    at_step: Callable[[str], Awaitable[None]] | None = None
    resolved: int = 0
    #: Decided transactions a participant refused to finish (its intent stays until
    #: whoever meets it finishes it from the record: the decision stands).
    unfinished: int = 0

    def descriptor(self, parts: Sequence[Part], coordinator: int, record: int) -> dict:
        """A new descriptor (a fresh id, the deadline ``span`` from now)."""
        return {
            "id": self.rng.randbytes(16),
            "cl": self.client,
            "c": coordinator,
            "r": record,
            "dl": self.clock() + self.span,
            "lv": self.keys.version,
            "p": [[p.group, list(p.objects), p.method, p.arg] for p in parts],
        }

    async def run(
        self, parts: Sequence[Part], coordinator: int, record: Callable[[], int]
    ) -> Outcome:
        """Run a transaction of ``parts`` until it commits, a participant votes no, or
        every attempt met intents; ``record()`` names a fresh record object on the
        coordinator group for each attempt."""
        out = Outcome(False)
        for attempt in range(1, self.attempts + 1):
            out.attempts = attempt
            desc = self.descriptor(parts, coordinator, record())
            out.digests.append(digest(desc))
            decision, why = await self.attempt(desc)
            out.resolved = self.resolved
            if decision == COMMIT:
                out.committed, out.why = True, ""
                return out
            out.why = why
            if not why.startswith("intent"):
                return out
            await self.sleep(self.rng.uniform(0.001, 0.002) * 2 ** min(attempt, 10))
        out.why = "contention"
        return out

    async def attempt(self, desc: dict) -> tuple[str, str]:
        """One attempt: its decision and, for an abort, why."""
        coord, rec = desc["c"], desc["r"]
        a, lt, sigs = await self.groups[coord].update_signed(
            rec, "txn.begin", {"T": desc, "lt": self.clock()}
        )
        begun = certificate(lt, a, sigs)
        await self._step("begun")
        votes: list[dict | None] = [None] * len(desc["p"])
        whys: list[str] = [""] * len(desc["p"])

        async def prepare(i: int) -> None:
            g, objs = desc["p"][i][0], desc["p"][i][1]
            arg = {"T": desc, "i": i, "bc": begun, "lt": self.clock()}
            try:
                a, lt, sigs = await self.groups[g].update_signed(objs, "txn.prepare", arg)
            except MethodRefused as e:
                whys[i] = e.code
                if e.code.startswith("intent"):
                    await self.resolve(g, objs, e.code)
                return
            votes[i] = certificate(lt, a, sigs)
            whys[i] = "" if a[0] == "yes" else a[3]

        async with trio.open_nursery() as nursery:
            for i in range(len(desc["p"])):
                nursery.start_soon(prepare, i)
        await self._step("prepared")
        every = all(v is not None and v["a"][0] == "yes" for v in votes)
        certs = [v for v in votes if v is not None] if not every else votes
        want = COMMIT if every else ABORT
        arg = {"T": desc, "v": want, "c": certs, "lt": self.clock()}
        a, lt, sigs = await self.groups[coord].update_signed(rec, "txn.decide", arg)
        await self._step("decided")
        try:
            await self.finish(desc, certificate(lt, a, sigs))
        except MethodRefused:  # decided all the same: a commit is not undone, nor made twice
            self.unfinished += 1
        if every and a[2] == ABORT:  # every yes, yet aborted: another client, at the deadline
            return ABORT, "intent: aborted by another client"
        # A no vote is final; an intent met is worth another attempt.  Of several refusals,
        # one saying the client's view is out of date comes first (``OUT_OF_DATE``).
        ranked = sorted(
            (w.startswith("intent"), w.split(" ", 1)[0] not in OUT_OF_DATE, w) for w in whys if w
        )
        return a[2], ranked[0][2] if ranked else ""

    async def _step(self, name: str) -> None:
        if self.at_step is not None:
            await self.at_step(name)

    async def finish(self, desc: dict, decision: dict) -> None:
        """``txn.finish`` on every participant of ``desc``, in parallel."""

        refused: list[MethodRefused] = []

        async def one(i: int) -> None:
            g, objs = desc["p"][i][0], desc["p"][i][1]
            arg = {"T": desc, "i": i, "dc": decision, "lt": self.clock()}
            try:
                await self.groups[g].update_signed(objs, "txn.finish", arg)
            except MethodRefused as e:  # the others still finish (not cancelled by it)
                refused.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(len(desc["p"])):
                nursery.start_soon(one, i)
        if refused:
            raise refused[0]

    async def resolve(self, group: int, objects: Sequence[int], code: str) -> bool:
        """Resolve the transaction whose intent refused us on ``objects`` of ``group``:
        finish it if it is decided, abort and finish it if it is pending past its
        deadline.  Whether it was resolved (False: still in its time, or gone)."""
        marks = await self.groups[group].query(list(objects), "txn.intent")
        want = bytes.fromhex(code.split()[1]) if len(code.split()) == 4 else None
        mark = next((m for m in marks if isinstance(m, dict) and m.get("d") == want), None)
        if mark is None:
            return False  # finished meanwhile
        desc = mark.get("T")
        if not isinstance(desc, dict) or digest(desc) != want:
            return False
        rec = await self.groups[desc["c"]].query(desc["r"], "txn.record")
        pending = rec is None or rec.get("st") == "pending"
        if pending and self.clock() <= desc["dl"]:
            return False
        arg = {"T": desc, "v": ABORT, "c": [], "lt": self.clock()}
        try:
            a, lt, sigs = await self.groups[desc["c"]].update_signed(desc["r"], "txn.decide", arg)
            await self.finish(desc, certificate(lt, a, sigs))
        except MethodRefused:  # e.g. another layout version's T: not this driver's to end
            return False
        self.resolved += 1
        return True


async def run_transaction(
    groups: Sequence[TxnGroup],
    keys: GroupKeys,
    parts: Sequence[Part],
    *,
    coordinator: int,
    record: Callable[[], int],
    client: int,
    clock: Callable[[], int],
    rng: random.Random,
) -> Outcome:
    """The entry point the file system calls (a cross-group rename is two parts): run
    ``parts`` atomically over ``groups`` (one Q/U client per group, :func:`vouch_for`)."""
    return await Driver(groups, keys, client, clock, rng).run(parts, coordinator, record)
