"""A rename or link whose objects live on several groups, run as one cross-group
transaction (issue 66, docs/layout.md "Operations across groups"), and the resolution of
the transactions a mount's calls meet.

:class:`Crossing` turns the ``fs.rename`` / ``fs.link`` update the file system asks for
into the halves of ``fsobjects/halves.py``: it reads what the halves check against (the
moved object's and the target's types, and for a directory changing parent the chain of
its new parent's ancestors), groups the objects by the layout into one part per group and
runs them through ``layout/txn.run_transaction``; a committed transaction answers what the
one-group method answers (the stats of the objects it changed, read once it committed), a
no vote raises the participant's refusal as the one-group method would (``stale``: the
file system reads again and retries).  ``RENAME_EXCHANGE`` across groups stays ``EXDEV``.

Its Q/U clients are the mount's groups' endpoints under clients of their own, made with
``vouch_for`` (a reply to a commit method counts only with its node's valid signature),
numbering their updates far from the mount's own clients (``_SEQ_BASE``), so that a
version's applied table never takes one's update for a retry of the other's.
"""

from __future__ import annotations

import functools
import random
import stat as st
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from bftfs.fs.clients.atonce import at_once
from bftfs.fsobjects import DIR_TYPE, MAX_OID, ROOT
from bftfs.fsobjects.leases import MOUNT, tag_query
from bftfs.layout.model import Layout
from bftfs.layout.txn import LAYOUT_REFUSAL, Driver, Outcome, Part, group_keys, vouch_for
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request

#: Where the transaction clients' request numbers start above the wall clock in ns (the
#: mount's clients start at the wall clock): never the same ``(client, seq)``.
_SEQ_BASE = 1 << 62
#: How often a call refused by another transaction's intent is tried again, and the first
#: pause (doubling up to :data:`_MAX_PAUSE`): long enough to outlast a transaction's
#: deadline (``layout/txn.SPAN``, 10 s), after which the call's own resolution aborts it.
_RESOLVE_TRIES = 40
_FIRST_PAUSE = 0.002
_MAX_PAUSE = 0.5


#: The removals split across groups (no read before: the kind is the method's).
REMOVALS = frozenset({"fs.unlink", "fs.rmdir", "fs.unlinkmany"})


def _code_of(stat: dict[str, Any]) -> int:
    """An object's directory-entry type code from its stat."""
    return DIR_TYPE if stat["k"] == "d" else st.S_IFMT(stat["mode"]) >> 12


class Crossing:
    """One mount's cross-group operations over ``clients`` (one Q/U client per group)."""

    def __init__(
        self,
        layout: Layout,
        clients: Sequence[QUClient],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[Any]] = trio.sleep,
    ) -> None:
        self.layout = layout
        self.keys = group_keys(layout)
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep
        self._vouches = [vouch_for(self.keys, g) for g in range(len(clients))]
        groups = [self._group_client(g, c) for g, c in enumerate(clients)]
        self.driver = Driver(groups, self.keys, clients[0].client_id, clock, self.rng, sleep)
        #: Transactions committed, other transactions' intents met, and transactions
        #: made again because a group's nodes held another layout version.
        self.committed = 0
        self.met = 0
        self.layouts_waited = 0

    def _vouch(self, group: int) -> Callable[[int, Request, Reply], bool]:
        """Group ``group``'s reply check under the keys of the layout held when a reply
        comes (:meth:`switch` changes them)."""

        def vouch(node: int, req: Request, rep: Reply) -> bool:
            return self._vouches[group](node, req, rep)

        return vouch

    def add_group(self, client: QUClient) -> None:
        """The next group a newer layout added: its client for transactions' parts."""
        g = len(self.driver.groups)
        self.driver.groups = [*self.driver.groups, self._group_client(g, client)]
        self._vouches.append(vouch_for(self.keys, g))

    def switch(self, layout: Layout) -> None:
        """Run under ``layout`` (a newer version taken while mounted, ``layout/tracker.py``):
        its nodes' keys check replies and certificates, its version goes in descriptors."""
        self.layout = layout
        self.keys = group_keys(layout)
        self._vouches = [vouch_for(self.keys, g) for g in range(len(self._vouches))]
        self.driver.keys = self.keys

    def _group_client(self, g: int, c: QUClient) -> QUClient:
        """Group ``g``'s client for transactions: ``c``'s endpoint and thresholds, its
        own request ids and the group's vouch."""
        return QUClient(
            c.ep,
            c.th,
            client_id=c.client_id,
            rng=random.Random(self.rng.getrandbits(64)),
            seq_start=_SEQ_BASE + time.time_ns(),
            vouch=self._vouch(g),
        )

    def record(self, group: int) -> Callable[[], int]:
        """Fresh record object ids on ``group`` (random, in its partitions)."""

        def draw() -> int:
            while True:
                oid = self.rng.randrange(1 << 32, MAX_OID)
                if self.layout.group_of_object(oid) == group:
                    return oid

        return draw

    async def resolving(self, ids: list[int], call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, resolving the transactions whose intents refuse it (as the driver
        does: a decided one finished, one past its deadline aborted) and trying again."""
        pause = _FIRST_PAUSE
        for _ in range(_RESOLVE_TRIES):
            try:
                return await call()
            except MethodRefused as e:
                if not e.code.startswith("intent "):
                    raise
                self.met += 1
                if not await self._resolve(ids, e.code):
                    await self.sleep(pause * (1 + self.rng.random()))
                    pause = min(pause * 2, _MAX_PAUSE)
        raise MethodRefused("busy", "objects held by another transaction")

    async def _resolve(self, ids: list[int], code: str) -> bool:
        """Resolve the transaction an intent refusal names where the intent lies: the
        group the objects live on, or, while their partition moves, the group it moves
        from (an object carrying an intent is not moved: ``fs.export`` refuses it)."""
        layout = self.layout
        groups = [layout.group_of_object(ids[0])]
        source = layout.source_of_object(ids[0])
        if source is not None:
            groups.append(source)
        for group in groups:
            if await self.driver.resolve(group, ids, code):
                return True
        return False

    async def _stats(
        self, query: Callable[..., Awaitable[Any]], oids: list[int], mount: int
    ) -> dict:
        """``fs.stat`` of every object of ``oids`` at once, asked as ``mount`` (its own
        exclusive leases do not refuse it); None for a removed one.

        Raises:
            MethodRefused: ``leased`` (another client's exclusive lease: the file system
                recalls it and tries again, as for its own update).
        """
        out: dict[int, Any] = {}

        async def one(oid: int) -> None:
            try:
                out[oid] = await query(oid, "fs.stat", tag_query(None, mount))
            except MethodRefused as e:
                if e.code == "leased":
                    raise
                out[oid] = None

        await at_once([functools.partial(one, oid) for oid in dict.fromkeys(oids)])
        return out

    async def run(
        self, query: Callable[..., Awaitable[Any]], objects: list[int], method: str, arg: Any
    ) -> Any:
        """``method`` (``fs.rename``, ``fs.link``, ``fs.mkdir``, a removal) on ``objects`` as one
        transaction;
        ``query`` reads through the mount's clients.  Answers as the one-group method."""
        mount = arg.get(MOUNT) or 0
        if method in REMOVALS:
            half, whole = "fsx." + method[3:], dict(arg)
            items = arg["files"] if method == "fs.unlinkmany" else [arg]
            changed = [*(f["o"] for f in items), arg["p"]]
        elif method in ("fs.link", "fs.mkdir"):
            half, whole = "fsx." + method[3:], dict(arg)
            changed = [arg["o"], arg["p"]]
            known = arg["o"] if method == "fs.link" else arg["p"]
            (s,) = (await self._stats(query, [known], mount)).values()
            if s is None:
                raise MethodRefused("not-found")
            if method == "fs.link":
                whole["oc"] = _code_of(s)
            else:  # what the new directory inherits (names._inherited), checked by p's half
                inherits = s["mode"] & st.S_ISGID
                whole["ig"] = s["gid"] if inherits else arg["gid"]
                whole["sg"] = st.S_ISGID if inherits else 0
        else:
            half, whole = "fsx.rename", await self._rename_arg(query, objects, arg)
            changed = [x for x in (arg["sp"], arg["dp"], arg["o"], arg.get("t")) if x]
        out = await self._across_layouts(objects, half, whole)
        if not out.committed:
            why = out.why if out.why and not out.why.startswith("intent") else "stale"
            raise MethodRefused("stale" if why == "contention" else why.split()[0])
        self.committed += 1
        stats = await self._stats(query, changed, mount)
        if method == "fs.unlinkmany":
            return [[stats[f["o"]] for f in arg["files"]], stats[arg["p"]]]
        if method != "fs.rename":
            return [stats[arg["o"]], stats[arg["p"]]]
        return {str(k): s for k, s in stats.items() if s is not None}

    async def _across_layouts(self, objects: list[int], half: str, whole: Any) -> Outcome:
        """The transaction of ``half`` on ``objects``, one part per group of the layout
        held.  A refusal for another layout version (``txn-layout``: a layout the mount
        took that a group's nodes have not yet, or the reverse) is waited out: the
        tracker sends a node behind the held layout and fetches a newer one, so the
        transaction is made again under the layout held then, after a pause."""
        pause = _FIRST_PAUSE
        for _ in range(_RESOLVE_TRIES):
            by_group: dict[int, list[int]] = {}
            for oid in objects:
                by_group.setdefault(self.layout.group_of_object(oid), []).append(oid)
            parts = [
                Part(g, tuple(sorted(ids)), half, whole) for g, ids in sorted(by_group.items())
            ]
            coordinator = parts[0].group
            try:
                out = await self.driver.run(parts, coordinator, self.record(coordinator))
            except MethodRefused as e:
                if e.code != LAYOUT_REFUSAL:
                    raise
            else:
                if not out.why.startswith(LAYOUT_REFUSAL):
                    return out
            self.layouts_waited += 1
            await self.sleep(pause * (1 + self.rng.random()))
            pause = min(pause * 2, _MAX_PAUSE)
        raise MethodRefused("busy", "the groups' nodes did not come to the mount's layout")

    async def _rename_arg(
        self, query: Callable[..., Awaitable[Any]], objects: list[int], arg: Any
    ) -> dict[str, Any]:
        """``arg`` with what the halves check: ``oc``, ``tc`` and the chain ``ch``."""
        sp, dp, o, t = arg["sp"], arg["dp"], arg["o"], arg.get("t")
        ancestors = [x for x in objects if x not in (sp, dp, o, t)]
        oids = [o, dp, *([t] if t else []), *ancestors]
        stats = await self._stats(query, oids, arg.get(MOUNT) or 0)
        if stats[o] is None or (t is not None and stats[t] is None):
            raise MethodRefused("stale", "an object of the rename is gone")
        whole = dict(arg)
        whole["oc"] = oc = _code_of(stats[o])
        whole["tc"] = 0 if t is None else _code_of(stats[t])
        chain: list[int] = []
        if oc == DIR_TYPE and sp != dp:
            cur = dp
            while cur not in (sp, ROOT):
                s = stats.get(cur)
                if s is None or s["k"] != "d" or len(chain) > len(objects):
                    raise MethodRefused("stale", "ancestor chain changed")
                chain.append(cur)
                cur = s["p"]
        whole["ch"] = chain
        return whole
