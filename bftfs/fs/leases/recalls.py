"""Recalls of this mount's leases (issue 33): listening to the nodes' pushes, acting on a
recall once ``b + 1`` nodes pushed it, and letting leases go.

Every correct node that takes another client's ``fs.recall`` pushes
``{"recall": [oid, ...]}`` to the holders (``node/recalls.py``).  A push is believed once
``b + 1`` nodes sent it for the object (:class:`~bftfs.fs.leases.votes.RecallVotes`): the
mount stops answering from the lease at once, the kernel forgets what it cached under it
(:attr:`Recalls.before_release`) and the lease is released with the gated update, so
what the mount buffered for the object goes first (:class:`Releases`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from bftfs.fs.leases.holdings import COOLDOWN, Holdings
from bftfs.fs.leases.releases import Releases, Spawn
from bftfs.fs.leases.votes import RecallVotes
from bftfs.ids import NodeId

if TYPE_CHECKING:
    from bftfs.net.endpoint import Endpoint


class Recalls:
    """The recalls the nodes push and the leases given up (module docstring)."""

    def __init__(
        self,
        holdings: Holdings,
        releases: Releases,
        votes: RecallVotes,
        spawn: Spawn,
        stats: Counter[str],
    ) -> None:
        self._holdings = holdings
        self._releases = releases
        self._votes = votes
        self._spawn = spawn
        self._stats = stats
        #: Awaited with the objects whose lease was recalled, before they are released
        #: (the FUSE layer drops what the kernel cached under them).
        self.before_release: Callable[[list[int]], Awaitable[None]] | None = None
        #: Takes the nodes' requests to publish (``fs/leases/publish.py``; None: dropped).
        self.on_publish: Callable[[int, Any], None] | None = None

    def listen(self, endpoint: Endpoint, nodes: Sequence[int]) -> None:
        """``Leases.listen``: take the recalls ``endpoint`` is pushed, pass the rest on."""
        previous = endpoint.on_push
        if previous is None:
            endpoint.on_push = self.on_push
        else:

            def on_push(node: NodeId, body: Any) -> None:
                if isinstance(body, dict) and ("recall" in body or "publish" in body):
                    self.on_push(node, body)
                else:
                    previous(node, body)

            endpoint.on_push = on_push
        endpoint.stay_connected([NodeId(n) for n in nodes])

    def on_push(self, node: int, body: Any) -> None:
        """A node's push (``Endpoint.on_push``): a recall is believed from ``b + 1`` nodes;
        a request to publish goes to :attr:`on_publish`."""
        if isinstance(body, dict) and "publish" in body and "recall" not in body:
            if self.on_publish is not None:
                self.on_publish(node, body)
            return
        held = self._holdings.held
        asking = self._holdings.asking
        believed = self._votes.count(node, body, lambda oid: oid in held or oid in asking)
        self._stats.update(self._votes.take_stats())
        if believed:
            self.revoke([oid for oid in believed if oid in held])

    def believed(self, oid: int) -> bool:
        """Whether ``b + 1`` nodes pushed a recall of ``oid`` (a grant that raced it)."""
        return self._votes.believed(oid)

    def forget(self, oid: int) -> None:
        """The lease on ``oid`` ended: its pushes were for that lease."""
        self._votes.forget(oid)

    def revoke(self, oids: list[int]) -> None:
        """Give up leases the nodes recalled (none: the recall was of a lease still being
        asked for, which its grant gives back at once, :meth:`believed`)."""
        if not oids:
            return
        self._stats["recalled"] += len(oids)
        now = trio.current_time()
        for oid in oids:  # others work where it was made: the next mkdir there asks none
            self._holdings.contention.contended(oid, now)  # (contention.py)
            parent = self._holdings.made_in.get(oid)
            if parent is not None:
                self._holdings.quiet_until[parent] = now + COOLDOWN
        self.let_go(oids + self._holdings.read_where_changed(oids, now))

    def let_go(self, oids: list[int]) -> None:
        """Stop answering from the leases on ``oids`` now; the kernel forgets what it cached
        under them, then they are released (after what the mount buffered for them)."""
        now = trio.current_time()
        # What was leased with its create in a directory goes too, level by level: the
        # releases go deepest first (``Releases.after``).
        levels = self._holdings.with_children(oids)
        for level in levels:
            for oid in level:
                self._holdings.drop(oid)
                self._holdings.quiet_until[oid] = now + COOLDOWN
        self._spawn(lambda: self._releases.after(self.before_release, levels))

    async def give_up(self, levels: list[list[int]]) -> None:
        """Let the objects of ``levels`` go and release them now, deepest first (what the
        mount held back for them goes first): what a publication hands over, an object
        not in use here and what was made in it (``publish.py``)."""
        if not levels:
            return
        now = trio.current_time()
        for level in levels:
            for oid in level:
                self._holdings.drop(oid)
                self._holdings.quiet_until[oid] = now + COOLDOWN
            self._stats["given_up_published"] += len(level)
        await self._releases.after(self.before_release, levels)

    def give_back(self, oids: Sequence[int]) -> None:
        """Release leases granted but not to be held (recalled or ended meanwhile), in the
        background."""
        self._spawn(functools.partial(self._releases.release, list(oids)))

    async def release_all(self) -> None:
        """Give every lease back (an unmount): other clients need not recall them."""
        oids = list(self._holdings.held)
        for oid in oids:
            self._holdings.drop(oid)
        await self._releases.release(oids)
