"""Pushing lease recalls to their holders (issue 33; ``bftfs/fsobjects/leases.py``), and
lock wake-ups to the clients waiting for a file lock (issue 37; ``fsobjects/locks.py``).

When this node takes a client's ``fs.recall`` (the update that records that a client wants
an object other clients hold leases on), its answer names the holders of each object; the
node then pushes ``{"recall": [oid, ...]}`` to each holder over the holder's own
authenticated connections (``Server.push``).  The holder believes a recall only once
``b + 1`` nodes pushed it (``fs/leases.py``), so a Byzantine node can neither make a holder
give a lease up nor, by withholding its push, keep a recall from arriving: every correct
node of the update's quorum pushes.  Under FaB (``node/fab_server.py``) a node pushes when
it *executes* the recall: every correct node executes every slot, once.

A request to publish this node answers (``fs.pubreq``, a query: ``fsobjects/publish.py``)
pushes ``{"publish": [[oid, client, mount, token], ...]}`` to the exclusive holders its
answer names the same way: they send what they held back, record the reader's token and
keep their leases.  The node remembers who asked (in memory, bounded), and an accepted
``fs.publish`` (or ``fs.release``) pushes ``{"published": [oid, ...]}`` to them: a reader
waiting for the publication tries its query again then, instead of polling the nodes with
queries they refuse (each reads every object it names; under PostMark beside a mount
listing the directory once a second those refused tries were the nodes' busiest method).
Only a hint: the query is what the nodes check.

The answer pushed is the one the update stored (the applied table answers a retried
recall the same), so a recall sent again pushes again: a holder that lost a push is told
at the requester's next try.

A lock update that frees something answers the waiters of each lock object it woke
(``{"w": [[oid, [client, ...]], ...]}``); the node pushes ``{"unlocked": [oid, ...]}`` to
each.  A wake-up is only a hint to ask for the lock again (the servers decide), so a
waiter believes any one node; one withheld costs the waiter its polling interval.

A node whose objects leave it (its generation frozen, ``node/generation.py``; partitions
moving out of its group, ``node/moves.py``) pushes a recall of every lease stored here on
them, unasked (:func:`recall_stored`): their holders write back what they buffered and
release, so the objects can move.
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio.lowlevel

from bftfs.fsobjects.leases import MAX_RECALLED, live, mount_of
from bftfs.fsobjects.publish import UPTO, publication_entries
from bftfs.ids import PrincipalId
from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: The method whose answer names the holders to push to.
RECALL = "fs.recall"
#: The method whose answer names the exclusive holders asked to publish
#: (``fsobjects/publish.py``): pushed ``{"publish": [oid, ...]}``.
ASK_PUBLISH = "fs.pubreq"
#: The holder's publication, whose answer names the objects recorded: their askers are
#: pushed ``{"published": [oid, ...]}``.
PUBLISH = "fs.publish"
#: A holder's release: no lease is left for the askers of its objects to wait on, and they
#: are told as at a publication (a holder hands an object it no longer uses over so).
RELEASE = "fs.release"
#: Objects whose askers are remembered at most (the oldest go first), and askers per
#: object: a forgotten asker polls, as before the hints.
MAX_ASKED_OBJECTS = 4096
MAX_ASKERS = 16
#: The lock updates whose answers name waiters to wake (``fsobjects/locks.py``).
LOCK_WAKES = frozenset({"fs.setlk", "fs.unlockowner", "fs.renewlk"})
#: Objects looked at per read transaction by :func:`recall_stored`.
PAGE = 256


class Recalls:
    """Pushes a recall to each holder an accepted ``fs.recall`` names (one per node, which
    both metadata engines call: Q/U on accept, FaB on execution)."""

    def __init__(self, push: Callable[[PrincipalId, Any], int], stats: Counter[str]) -> None:
        """``push``: the node server's ``Server.push``."""
        self._push = push
        self.stats = stats
        #: Off in the ``withhold-recalls`` Byzantine profile (testing/byzantine).
        self.enabled = True
        #: Per object, the clients whose ``fs.pubreq`` named it and the token each asked
        #: with, oldest object first.
        self._askers: OrderedDict[int, dict[int, int]] = OrderedDict()

    def accepted(self, req: Request, reply: Reply) -> None:
        """An update this Q/U node took, or a request to publish it answered: push the
        recalls, requests to publish or lock wake-ups its answer names; remember who asked
        for a publication, and tell them when it lands."""
        if req.op is None:
            return
        if req.op.method == RELEASE and self.enabled:
            self._released(req.objects)
        self.executed(req.op.method, reply.answer, req.client, req.op.arg)

    def _asked(self, client: int, answer: Any) -> None:
        """``fs.pubreq``'s answer ``[[oid, holders, token], ...]``: the tokens ``client``
        waits for."""
        for item in answer if isinstance(answer, list) else ():
            if isinstance(item, list) and len(item) == 3:
                oid, _, token = item
                if isinstance(oid, int) and isinstance(token, int):
                    askers = self._askers.setdefault(oid, {})
                    if client in askers or len(askers) < MAX_ASKERS:
                        askers[client] = token
                    self._askers.move_to_end(oid)
        while len(self._askers) > MAX_ASKED_OBJECTS:
            self._askers.popitem(last=False)

    def _published(self, arg: Any, answer: Any) -> None:
        """An ``fs.publish`` recorded the objects of its answer up to the readers' tokens
        of its argument (``r``): push ``{"published": [oid, ...]}`` to each client whose
        token on one of them that covers."""
        try:
            entries = publication_entries(arg.get(UPTO) if isinstance(arg, dict) else None)
        except MethodRefused:
            return  # (an update refused so is never accepted)
        told: dict[int, list[int]] = {}
        for oid in answer if isinstance(answer, list) else ():
            askers = self._askers.get(oid) if isinstance(oid, int) else None
            readers = entries.get(oid)
            if askers is None or readers is None:
                continue
            upto: dict[int, int] = {}
            for (c, _m), token in readers.items():
                upto[c] = max(upto.get(c, 0), token)
            for client in [c for c, token in askers.items() if token <= upto.get(c, 0)]:
                del askers[client]
                told.setdefault(client, []).append(oid)
            if not askers:
                del self._askers[oid]
        self._tell(told)

    def _released(self, objects: Sequence[int]) -> None:
        """An ``fs.release`` left no lease on ``objects`` to wait on: tell every asker."""
        told: dict[int, list[int]] = {}
        for oid in objects:
            for client in self._askers.pop(oid, {}):
                told.setdefault(client, []).append(oid)
        self._tell(told)

    def _tell(self, told: dict[int, list[int]]) -> None:
        for client, oids in told.items():
            sent = self._push(PrincipalId(client), {"published": oids[:MAX_RECALLED]})
            self.stats["qu.published.pushed" if sent else "qu.published.unconnected"] += 1

    def executed(self, method: str, answer: Any, client: int = 0, arg: Any = None) -> None:
        """A method this node ran for ``client`` with ``arg`` and its answer (a Q/U update
        it accepted or request to publish it answered, or a FaB slot it executed,
        ``node/fab_server.py``): push the recalls, requests to publish or wake-ups it
        names."""
        if method in LOCK_WAKES and isinstance(answer, dict):
            self._wake(answer.get("w"))
            return
        if method == ASK_PUBLISH:
            self._asked(client, answer)
        elif method == PUBLISH and self.enabled:
            self._published(arg, answer)
        if method not in (RECALL, ASK_PUBLISH) or not isinstance(answer, list):
            return
        if not self.enabled:
            self.stats["qu.recalls.withheld"] += 1
            return
        if method == RECALL:
            for holder, oids in _per_client(answer).items():
                sent = self._push(PrincipalId(holder), {"recall": oids[:MAX_RECALLED]})
                self.stats["qu.recalls.pushed" if sent else "qu.recalls.unconnected"] += 1
            return
        mount = mount_of(arg) if isinstance(arg, dict) else 0
        asks: dict[int, list[list[int]]] = {}
        for item in answer:
            if isinstance(item, list) and len(item) == 3 and isinstance(item[2], int):
                for holder, oids in _per_client([item[:2]]).items():
                    asks.setdefault(holder, []).append([oids[0], client, mount, item[2]])
        for holder, items in asks.items():
            sent = self._push(PrincipalId(holder), {"publish": items[:MAX_RECALLED]})
            self.stats["qu.publish.pushed" if sent else "qu.publish.unconnected"] += 1

    def _wake(self, wake: Any) -> None:
        if not self.enabled:
            return
        for client, oids in _per_client(wake).items():
            sent = self._push(PrincipalId(client), {"unlocked": oids[:MAX_RECALLED]})
            self.stats["qu.lockwakes.pushed" if sent else "qu.lockwakes.unconnected"] += 1


def _per_client(items: Any) -> dict[int, list[int]]:
    """``[[oid, [client, ...]], ...]`` (a method's answer) as client -> objects (a recall's
    item may have a third element, the session-bound holders: ``fsobjects.leases``)."""
    out: dict[int, list[int]] = {}
    for item in items if isinstance(items, list) else ():
        if not (isinstance(item, list) and len(item) in (2, 3)):
            continue
        oid, clients = item[:2]
        if isinstance(oid, int) and isinstance(clients, list):
            for c in clients:
                if isinstance(c, int) and not isinstance(c, bool):
                    out.setdefault(c, []).append(oid)
    return out


async def recall_stored(node: Node, keep: Callable[[int], bool], stat: str) -> None:
    """Push a recall of every object ``keep`` selects on which a lease stored here is live
    to its holders, a page of objects per read transaction; counted as
    ``<stat>.pushed`` or ``<stat>.unconnected`` (a holder with no connection open here:
    its lease ends with its term).  The freeze of a generation (``node/generation.py``:
    every object) and of partitions moving out of a group (``node/moves.py``: the objects
    moving out) both run it."""
    now = node.now_ns()
    held: dict[int, list[int]] = defaultdict(list)
    after: int | None = -1
    while after is not None:
        step = functools.partial(leased_objects, now_ns=now, start=after + 1, limit=PAGE)
        page, after = node.store.read(step)
        for holder, oids in page.items():
            held[holder] += [o for o in oids if keep(o)]
        await trio.lowlevel.checkpoint()
    for holder, oids in sorted(held.items()):
        for i in range(0, len(oids), MAX_RECALLED):
            sent = node.server.push(PrincipalId(holder), {"recall": oids[i : i + MAX_RECALLED]})
            node.stats[f"{stat}.pushed" if sent else f"{stat}.unconnected"] += 1


def leased_objects(
    kv: KV, now_ns: int, start: int = 0, limit: int = PAGE
) -> tuple[dict[int, list[int]], int | None]:
    """Each client holding a lease live at ``now_ns`` on one of the first ``limit`` objects
    stored here from id ``start`` on (in its newest stored state), and those objects in id
    order; and the last object id looked at (None: no more)."""
    out: dict[int, list[int]] = defaultdict(list)
    oid: int | None = None
    for n, (key, _raw) in enumerate(kv.scan(schema.DB_RH, schema.oid_key(start), schema.OID_END)):
        if n == limit:
            return dict(out), oid
        oid = int.from_bytes(bytes(key), "big")
        for v in schema.iter_versions(kv, oid, reverse=True):
            if v.kind == schema.BARRIER:
                continue
            if v.state is not None:
                for holder in {h[0] for h in live(unpack(v.state), now_ns)}:
                    out[holder].append(oid)
            break
    return dict(out), None
