"""Background scrub inside a node: every stored fragment checked against its own cross
checksum, every ``scrub_seconds``, and a damaged latest version rewritten from the others.

Lazy verification checks a block once, after its writes settle; a disk can rot later, under
versions nobody writes or reads again.  ``bftfs verify`` finds that from a client, on
demand.  This task finds it on the node itself, without asking anyone: a stored version was
validated before it was stored (its cross checksum hashes to the timestamp's verifier and
the node's fragment to its entry, ``replica.check_write``), so a version that no longer
validates was damaged since (``scrubstep.scrub_step``).  Such a version is then read like
a reader would, from the other nodes (``RWClient.read_version``, no repair); when it is
the block's latest complete version, the node regenerates its own fragment from the
outcome, checks it as a WRITE, and stores it over the damaged copy
(``replica.store_write`` keeps the flags).  A damaged older version is counted and left:
readers of the present never ask for it, a history read treats it as one node's bad
fragment, and ``bftfs verify`` reports it.

Pacing: a pass starts ``scrub_seconds`` after the last one ended, or after the node first
started when it never scrubbed, both read from its store (``scrubstep.scrub_due``), so a node
restarted more often than the period still scrubs and one down longer scrubs when it is
back (never within a short test); each page of versions waits for the node to be idle
(no client request for ``idle_seconds``) and pages are spaced so that at most
``scrub_rate`` versions are checked per second.  Progress is
``node.progress["rw.scrub"]`` (``bftfs status``, ``stats``, the metrics): ``state``, the
counts of the current or last pass, ``passes``, ``seconds`` and ``last_ns``.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import trio

from bftfs.rw import replica, scrubstep
from bftfs.rw.behind import NotValidated, own_fragment
from bftfs.rw.classify import Kind
from bftfs.rw.client import RWClient
from bftfs.rw.messages import BlockId, WriteRequest
from bftfs.rw.schema import DB_SCRUB
from bftfs.rw.timestamp import Timestamp

if TYPE_CHECKING:
    from bftfs.node.service import Node

PROGRESS_KEY = "rw.scrub"
#: Pages per second: a page holds ``scrub_rate / PAGES_PER_SECOND`` versions.
PAGES_PER_SECOND = 10


class Scrubber:
    """The scrub task of one node (see the module docstring)."""

    def __init__(self, node: Node, *, max_ahead_ns: int) -> None:
        self.node = node
        self.policy = node.config.verification
        self.max_ahead_ns = max_ahead_ns
        self.progress: dict[str, Any] = node.progress.setdefault(
            PROGRESS_KEY,
            {"state": "waiting", "passes": 0, "checked": 0, "damaged": 0, "repaired": 0, "left": 0},
        )

    async def run(self) -> None:
        """Pass after pass, one every ``scrub_seconds``; never raises."""
        period = self.policy.scrub_seconds
        if period <= 0:
            self.progress["state"] = "off"
            return
        period_ns = int(period * 1e9)
        while True:
            now = self.node.now_ns()
            await self.node.store.write(
                functools.partial(scrubstep.scrub_noted, key=b"since", now_ns=now, keep=True)
            )
            self._note_last()
            due = self.node.store.read(
                functools.partial(scrubstep.scrub_due, period_ns=period_ns, now_ns=now)
            )
            await trio.sleep(max(0.0, (due - self.node.now_ns()) / 1e9))
            try:
                await self.one_pass()
            except Exception:  # the node must keep serving whatever happens here
                self.node.log.exception("node %s: scrub pass failed", self.node.id)
                self.node.stats["internal_errors"] += 1
                self.progress["state"] = "failed"
            await self.node.store.write(
                functools.partial(scrubstep.scrub_noted, key=b"last", now_ns=self.node.now_ns())
            )
            self._note_last()

    def _note_last(self) -> None:
        """``last_ns``: when the last pass ended, as the store keeps it (it survives restarts;
        ``bftfs status`` and the metrics show it), None if none ever did."""
        self.progress["last_ns"] = self.node.store.read(_last_ns)

    async def one_pass(self) -> None:
        """Check every stored version once; repair what can be repaired."""
        node = self.node
        page = max(1, self.policy.scrub_rate // PAGES_PER_SECOND)
        started = time.monotonic()
        self.progress.update(state="running", checked=0, damaged=0, repaired=0, left=0)
        cursor: bytes | None = None
        while True:
            await self._idle()
            await node.gate.step()  # client requests first (node/yielding.py)
            result = node.store.read(functools.partial(self._page, after=cursor, limit=page))
            self.progress["checked"] += result.checked
            for block, ts in result.damaged:
                self.progress["damaged"] += 1
                node.stats["rw.scrub.damaged"] += 1
                await self.repair(BlockId(block), ts)
            if result.cursor is None:
                break
            cursor = result.cursor
            await trio.sleep(1 / PAGES_PER_SECOND)
        self.progress["passes"] += 1
        self.progress["seconds"] = round(time.monotonic() - started, 3)
        self.progress["state"] = "done"
        if self.progress["damaged"]:
            node.log.warning("node %s: scrub found damage: %s", node.id, self.progress)

    def _page(self, kv: Any, *, after: bytes | None, limit: int) -> scrubstep.ScrubPage:
        return scrubstep.scrub_step(kv, after, limit, node=int(self.node.id), n=self.node.config.n)

    async def _idle(self) -> None:
        """Wait until no client request reached the node for ``idle_seconds``."""
        idle = self.policy.idle_seconds
        while True:
            quiet = trio.current_time() - self.node.last_client_request
            if quiet >= idle:
                return
            await trio.sleep(idle - quiet)

    async def repair(self, block: BlockId, ts: Timestamp) -> None:
        """Rewrite this node's fragment of ``block`` at ``ts`` if ``ts`` is the block's
        latest complete version as the other nodes hold it; else count it as left."""
        node = self.node
        try:
            refused = await rewrite_own_fragment(node, block, ts, self.max_ahead_ns)
        except NotLatest:  # an older version, or one the others do not hold complete
            self._left()
            return
        except Exception as e:  # ReadFailed, transport trouble: the next pass tries again
            node.log.info("node %s: scrub: block %s not read: %r", node.id, block, e)
            self._left()
            return
        if refused is not None:
            node.log.warning("node %s: scrub: block %s not repaired: %s", node.id, block, refused)
            self._left()
            return
        self.progress["repaired"] += 1
        node.stats["rw.scrub.repaired"] += 1

    def _left(self) -> None:
        self.progress["left"] += 1
        self.node.stats["rw.scrub.left"] += 1


class NotLatest(Exception):
    """The version asked for is not the block's latest complete one at the other nodes."""


async def rewrite_own_fragment(
    node: Node, block: BlockId, ts: Timestamp, max_ahead_ns: int
) -> str | None:
    """Read ``block`` from the other nodes and store this node's fragment of version
    ``ts``, regenerated from theirs and checked as a WRITE (the scrub's repair, and the
    fetch after an audit this node answered ``missing``, ``node/audits.py``); None once
    stored, else why the check refused it.

    Raises:
        NotLatest: ``ts`` is not the latest complete version the others hold.
        Exception: the read failed (``ReadFailed``, transport trouble).
    """
    client = RWClient(
        node.endpoint,
        node.config,
        nodes=[i for i in node.config.node_ids if i != node.id],
        trust_verified=False,  # its own fragment is regenerated from the others'
    )
    client.faults = node.findings.peer_faults  # findings kept (node/findings.py)
    outcome = await client.read_version(block, repair=False)
    if outcome.kind is not Kind.COMPLETE or outcome.ts != ts:
        raise NotLatest(f"block {block}: {ts} is not its latest complete version")
    try:
        cc, frag = own_fragment(outcome, int(node.id), node.config.n)
        req = WriteRequest(block, ts, cc, frag)
        replica.check_write(
            req, node=int(node.id), n=node.config.n, now_ns=node.now_ns(), max_ahead_ns=max_ahead_ns
        )
    except (NotValidated, replica.WriteRefused) as e:
        return str(e)
    await node.store.write(
        lambda kv: replica.store_write(kv, req, owner=int(node.id)), background=True
    )
    return None


def _last_ns(kv: Any) -> int | None:
    """When the node's last scrub pass ended (``scrubstep.scrub_noted``'s ``last``)."""
    raw = kv.get(DB_SCRUB, b"last")
    return int.from_bytes(bytes(raw), "big") if raw is not None and len(raw) == 8 else None


async def run(node: Node, *, max_ahead_ns: int) -> None:
    """The scrub task a node spawns at start (``node/rw_server.py``)."""
    await Scrubber(node, max_ahead_ns=max_ahead_ns).run()
