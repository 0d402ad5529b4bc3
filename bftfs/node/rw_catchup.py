"""Catch-up of a restarted storage node: fetch this node's fragments of blocks written while
it was down (issue 22, item 4; not in the seed).

A node that was down holds none of the versions written meanwhile.  Nothing in the protocol
brings it up to date (a reader repairs only *repairable* candidates, and a write complete
without this node is complete), so while it stays behind, one more failure leaves readers
one fragment short of the margin the thresholds promise.  Once, at start-up, the node:

1. **lists** (``rw.list``, node-to-node only) the blocks every other node hosts, with their
   latest timestamps, page by page.  ``behind.ListingMerge`` walks the listings in block
   order and only considers a block that at least ``b + 1`` peers list (one of them is
   correct), jumping every peer past blocks fewer list, so ``b`` lying peers cannot make it
   read anything and cost at most one listing page per page of correct listings;
2. keeps the blocks for which ``b + 1`` of those peers report a latest version this node
   does not host (``behind.is_candidate``): **candidates**, nothing more - a listing is
   never trusted;
3. **reads** each candidate exactly as a client does (:meth:`RWClient.read_version`: the
   classification of classify.py and the validated cross checksum of verify.py), asking
   only the other nodes (so ``QC + b`` of them must host a version for it to be complete)
   and repairing nothing, and calls it **behind** only if the read returns a *complete*
   version this node does not hold (``behind.judge``).  Its own fragment is the
   regenerated fragment at its index (encoding is deterministic); it must match the cross
   checksum entry and the timestamp's verifier (``behind.own_fragment``) and pass the same
   checks as a WRITE (``replica.check_write``), and is stored by ``replica.store_write`` in
   one transaction of ``node.store.write``: exactly the version an accepted WRITE of that
   timestamp leaves.

Blocks whose newest candidate is only repairable (a write in progress or abandoned), or
whose read fails, are **skipped** / **failed** and counted, never guessed.  Safety needs
nothing new: the stored version is one that ``QC + b`` nodes already host with a validated
cross checksum, i.e. what this node would hold had it been up.

Progress is kept in ``node.progress["rw.catchup"]`` (``bftfs status``, the ``stats`` reply):
``state`` (scanning, running, done, failed), ``candidates``, ``behind``, ``done``,
``skipped``, ``failed``, ``current`` (read and found up to date), ``bad_peers`` (listings
dropped as malformed or unanswered), ``abandoned`` (candidates not tried after
:data:`MAX_FAILED_IN_A_ROW` reads failed in a row), ``bytes_read`` (block data read from
the others), ``bytes_stored`` (this node's fragments stored) and ``seconds``.

**Throttle.**  ``[verification] catchup_parallel`` candidates are read at once (a new
machine replacing one holding a GiB reads thousands of blocks; one at a time, each waits a
round trip and the others' CPU sits idle), and the block data read is paced to
``catchup_bytes_per_second`` (:class:`ByteRate`): the others serve a catch-up's reads
beside their clients', so the operator bounds what a replacement takes from the foreground
(Ceph's recovery throttles, GlusterFS's heal).  Nothing a peer sends can stop the task or
the node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import NodeId
from bftfs.net.errors import RemoteError, TransportError
from bftfs.net.quorum import QuorumUnavailable
from bftfs.rate import ByteRate
from bftfs.rw import replica
from bftfs.rw.behind import (
    ListingMerge,
    NeedPages,
    NotValidated,
    Verdict,
    is_candidate,
    judge,
    own_fragment,
)
from bftfs.rw.classify import RWThresholds
from bftfs.rw.client import RWClient
from bftfs.rw.messages import (
    KIND_LIST,
    BlockId,
    ListReply,
    ListRequest,
    MessageError,
    WriteRequest,
)
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS, Timestamp
from bftfs.rw.verify import ReadOutcome

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: Key of this task in ``node.progress``.
PROGRESS_KEY = "rw.catchup"
#: Blocks per ``rw.list`` page.
DEFAULT_PAGE = 256
#: Reads failing in a row that end the pass: each waits out the endpoint's timeout, and
#: they fail together when another node is down too (then no block can be proven complete:
#: ``QC + b`` other nodes must answer), so going on would only cost a timeout per block.
MAX_FAILED_IN_A_ROW = 3
#: Options of the reading :class:`RWClient` when none are passed, and the timeout of the
#: first listing round (None: the endpoint's); tests shorten them.
READ_OPTIONS: dict[str, Any] = {}
LIST_TIMEOUT: float | None = None
#: The wait before another pass while blocks are left behind: doubled each time, up to the
#: second figure, for as long as the node runs (a peer it needs may be down for long).
RETRY_SECONDS = 10.0
RETRY_MAX_SECONDS = 600.0
#: Passes whose listing too few peers answered before that is logged as a warning (the
#: first ones are the node's start beside its peers', or a busy machine: information).
WARN_AFTER_PASSES = 3


def new_progress() -> dict[str, Any]:
    """The initial progress record."""
    return {
        "state": "scanning",
        "candidates": 0,
        "behind": 0,
        "done": 0,
        "skipped": 0,
        "failed": 0,
        "current": 0,
        "bad_peers": 0,
        "abandoned": 0,
        "passes": 1,
        "bytes_read": 0,
        "bytes_stored": 0,
        "seconds": 0.0,
    }


class CatchUp:
    """One catch-up pass of ``node`` (see the module docstring).

    Args:
        page: blocks per listing page.
        max_ahead_ns: the clock bound of WRITE (a version is stored only if a WRITE of it
            would be accepted now).
        client_options: options of the :class:`RWClient` that reads (tests shorten
            timeouts).
    """

    def __init__(
        self,
        node: Node,
        *,
        page: int = DEFAULT_PAGE,
        max_ahead_ns: int = DEFAULT_MAX_AHEAD_NS,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.node = node
        self.th = RWThresholds.from_config(node.config)
        self.page = page
        self.max_ahead_ns = max_ahead_ns
        self.client_options = READ_OPTIONS if client_options is None else client_options
        self.progress = node.progress[PROGRESS_KEY] = new_progress()
        self._t0 = time.monotonic()
        policy = node.config.verification
        self.parallel = policy.catchup_parallel
        self.rate = ByteRate(policy.catchup_bytes_per_second)

    def _count(self, key: str, by: int = 1) -> None:
        self.progress[key] += by
        self.progress["seconds"] = round(time.monotonic() - self._t0, 3)

    def _state(self, state: str) -> None:
        self.progress["state"] = state
        self.progress["seconds"] = round(time.monotonic() - self._t0, 3)

    async def run(self) -> None:
        """The whole pass; never raises (a bug ends it in state ``failed``)."""
        try:
            candidates = await self.scan()
            if candidates is None:
                self._state("failed")
                return
            self._state("running")
            client = RWClient(
                self.node.endpoint,
                self.node.config,
                nodes=[i for i in self.node.config.node_ids if i != self.node.id],
                trust_verified=False,  # it stores its own regenerated fragment
                **self.client_options,
            )
            if not await self._read_all(client, candidates):
                self._state("failed")
                return
            self._state("done")
            if self.progress["behind"]:
                self.node.log.info("node %s: rw catch-up %s", self.node.id, self.progress)
        except Exception:
            self.node.log.exception("node %s: rw catch-up failed", self.node.id)
            self.node.stats["internal_errors"] += 1
            self._state("failed")

    async def _read_all(self, client: RWClient, candidates: list[BlockId]) -> bool:
        """Catch up ``candidates``, :attr:`parallel` at a time; False when
        :data:`MAX_FAILED_IN_A_ROW` reads failed in a row (in the order they ended), and
        the rest were abandoned."""
        todo = iter(candidates)
        in_a_row = 0

        async def worker(cancel: trio.CancelScope) -> None:
            nonlocal in_a_row
            for block in todo:
                await self.node.gate.step()  # client requests first (node/yielding.py)
                failed = await self.catch_up_block(client, block)
                in_a_row = in_a_row + 1 if failed else 0
                if in_a_row >= MAX_FAILED_IN_A_ROW:
                    cancel.cancel()
                    return

        async with trio.open_nursery() as nursery:
            for _ in range(self.parallel):
                nursery.start_soon(worker, nursery.cancel_scope)
        if in_a_row < MAX_FAILED_IN_A_ROW:
            return True
        ended = sum(self.progress[k] for k in ("current", "done", "skipped", "failed"))
        self.progress["abandoned"] = len(candidates) - ended  # cut short or never started
        self.node.log.warning(
            "node %s: rw catch-up gives up after %d failed reads in a row: %s",
            self.node.id,
            in_a_row,
            self.progress,
        )
        return False

    # Scan ----------------------------------------------------------------------------------

    def _hosts(self, block: int) -> Callable[[Timestamp], bool]:
        return lambda ts: self.node.store.read(lambda kv: replica.has_version(kv, block, ts))

    async def scan(self) -> list[BlockId] | None:
        """The candidates, in block order; None if too few peers answered to look at all."""
        node = self.node
        peers = [NodeId(s) for s in node.config.node_ids if s != node.id]
        need = self.th.b + 1
        merge = ListingMerge(peers, need)
        first = ListRequest(None, self.page)
        pages: dict[int, ListReply] = {}

        def accept(peer: NodeId, raw: Any) -> bool:
            try:
                pages[peer] = ListReply.from_wire(raw, first)
            except MessageError:
                return False
            return True

        # Wait for every peer (each one may list blocks the others miss), but settle for
        # N - t - 1 (with this node, N - t) when some do not answer in time.
        with contextlib.suppress(QuorumUnavailable):
            await node.endpoint.quorum_call(
                peers,
                KIND_LIST,
                first.to_wire(),
                enough=lambda r: len(r) == len(peers),
                accept=accept,
                timeout=LIST_TIMEOUT,
            )
        for p in peers:
            if p in pages:
                merge.feed(p, pages[p])
            else:
                merge.drop(p)
                self._count("bad_peers")
        if len(pages) < self.th.quorum - 1:
            # Peers starting with this node, or slow on a busy machine, miss the listing's
            # timeout: the pass is run again (:func:`run`), so only a listing that keeps
            # failing is worth a warning (a peer this node needs is down for long).
            late = self.progress["passes"] >= WARN_AFTER_PASSES
            node.log.log(
                logging.WARNING if late else logging.INFO,
                "node %s: rw catch-up: only %d peers listed their blocks",
                node.id,
                len(pages),
            )
            return None

        candidates: list[BlockId] = []
        while True:
            step = merge.step()
            if step is None:
                return candidates
            if isinstance(step, NeedPages):
                await self._fetch_pages(merge, step)
                continue
            if is_candidate(step.latest, self._hosts(step.block), need):
                candidates.append(step.block)
                self._count("candidates")

    async def _fetch_pages(self, merge: ListingMerge, want: NeedPages) -> None:
        async def one(peer: int, after: BlockId | None) -> None:
            req = ListRequest(after, self.page)
            try:
                raw = await self.node.endpoint.call(NodeId(peer), KIND_LIST, req.to_wire())
                reply = ListReply.from_wire(raw, req)
            except (TransportError, RemoteError, MessageError) as e:
                self.node.log.info("node %s: rw catch-up drops peer %s: %s", self.node.id, peer, e)
                merge.drop(peer)
                self._count("bad_peers")
                return
            merge.feed(peer, reply)

        async with trio.open_nursery() as nursery:
            for peer, after in want.after.items():
                nursery.start_soon(one, peer, after)

    # Repair --------------------------------------------------------------------------------

    async def catch_up_block(self, client: RWClient, block: BlockId) -> bool:
        """Read one candidate and store this node's fragment if it proves behind; whether
        the read or the store failed."""
        node = self.node
        try:
            outcome = await client.read_version(block, repair=False)
        except Exception as e:  # ReadFailed, ReadAborted, transport trouble, a bug
            node.log.info("node %s: rw catch-up: block %s not read: %r", node.id, block, e)
            self._count("failed")
            return True
        self._count("bytes_read", len(outcome.data))
        await self.rate.spend(len(outcome.data))
        return await self._store_if_behind(block, outcome)

    async def _store_if_behind(self, block: BlockId, outcome: ReadOutcome) -> bool:
        node = self.node
        floor = node.store.read(lambda kv: replica.floor_of(kv, block))
        verdict = judge(outcome, self._hosts(block), floor)
        if verdict is Verdict.CURRENT:
            self._count("current")
            return False
        if verdict is Verdict.INCOMPLETE:
            self._count("skipped")
            return False
        self._count("behind")
        try:
            cc, frag = own_fragment(outcome, node.id, self.th.n)
            req = WriteRequest(block, outcome.ts, cc, frag)
            replica.check_write(
                req,
                node=node.id,
                n=self.th.n,
                now_ns=node.now_ns(),
                max_ahead_ns=self.max_ahead_ns,
            )
        except (NotValidated, replica.WriteRefused) as e:
            node.log.warning("node %s: rw catch-up: block %s skipped: %s", node.id, block, e)
            self._count("skipped")
            return False
        try:
            # Charged to the version's writer: the read proved it complete (docs/rw.md).
            reply = await node.store.write(
                lambda kv: replica.store_write(kv, req, owner=req.ts.writer), background=True
            )
        except Exception:  # the store refused (e.g. full): count it, go on with the next
            node.log.exception("node %s: rw catch-up: block %s not stored", node.id, block)
            self._count("failed")
            return True
        node.stats["rw.catchup.stored"] += 1
        verifier = node.verifier
        if reply.new and verifier is not None:
            # Lazy verification takes it from here, as a version a client wrote: flagged,
            # what lies below collected, and when it is a block given back while this node
            # was away (an empty version), forgotten with the others.  Its backlog was
            # rebuilt at start, before this version was here (issue 31 item 12).
            verifier.wrote(block, outcome.ts, outcome.ts.writer, len(frag) + len(cc))
        self._count("bytes_stored", len(frag) + len(cc))
        self._count("done")
        return False


async def run(node: Node, **options: Any) -> None:
    """The catch-up task a node spawns at start-up (``node/rw_server.py``).

    A pass that leaves blocks behind (reads that failed: another node down for a while,
    blocks being forgotten by the others as it read them, issue 31 item 12) is run again
    from a fresh listing, :data:`RETRY_SECONDS` later and twice as long each time (at most
    :data:`RETRY_MAX_SECONDS`); ``passes`` in the progress counts them."""
    delay = RETRY_SECONDS
    passes = 0
    while True:
        passes += 1
        pass_ = CatchUp(node, **options)
        pass_.progress["passes"] = passes
        await pass_.run()
        progress = pass_.progress
        if not (progress["failed"] or progress["abandoned"] or progress["state"] == "failed"):
            return
        await trio.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_SECONDS)
