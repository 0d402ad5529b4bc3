"""The FaB engine in a node process (``[cluster] engine = "fab"``, docs/fab.md).

The node runs one :class:`~bftfs.fab.replica.Replica` over what it already has: its
server answers the request kind ``fab`` from peers and clients alike (the frames are the
node's authenticated sessions, so the sender the core trusts is the one the session
authenticated), its endpoint carries the replica's messages to the other nodes, and its
``Server.push`` carries each REPLY to the client's open connections.  The driver is
:class:`~bftfs.fab.service.FabShell`; this module adds the store.

Persistence (``fab/durable.py``): after every step the replica's changes (what it accepted
and learned, its regency, its stable checkpoint and the pieces of the state there that the
store lacks) are written to the node's LMDB environment before the step's messages go
out, in one transaction, so a node killed at any
moment comes back without having told anyone something its store does not hold, and a
restarted node continues from what it kept (:meth:`Replica.restore`).

The quota (``[limits]``): the replica charges each client the object states it wrote,
against ``quota_fraction * map_size`` of ``cluster.toml`` (the figure the Q/U server uses,
one for the whole cluster, so every correct node executes alike), and refuses ``quota``;
a refusal this node executes counts in ``fab.refused.quota`` and the client's admission
statistics, as ``qu.refused.quota`` does on a Q/U node.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.fab import durable, pastclient
from bftfs.fab.execution import Operation
from bftfs.fab.messages import Reply
from bftfs.fab.replica import Replica, Settings, Step
from bftfs.fab.service import KIND, FabFaults, FabShell
from bftfs.fab.versions import Retention, Versions
from bftfs.fsobjects import SNAPSHOTS, snapshot_times
from bftfs.ids import PrincipalId
from bftfs.node import limits
from bftfs.node.qu_server import registry_of
from bftfs.qu.clocks import ClockAhead, clock_off
from bftfs.qu.objects import Class, ObjectType, Registry
from bftfs.quorums.fab import FabQuorums
from bftfs.rw.timestamp import DEFAULT_MAX_AHEAD_NS

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

#: Seconds between updates of the node's ``progress["fab"]``.
REPORT = 0.25
#: Seconds between the replica's ticks (its retransmissions and timers).
TICK = 0.05
#: Ticks a request may wait to be executed before its node suspects the leader: 1 s (the
#: core doubles it at each suspicion that brings no progress).  A node on a loaded machine
#: answers in tens of milliseconds; well below that costs view changes for nothing.
#: Retransmissions start 4 ticks (200 ms) after a send and back off to 16 ticks (0.8 s):
#: at every tick, 16 nodes on two cores resent faster than a round completed.
SETTINGS = Settings(timeout=20, resend=4, resend_cap=16)


def register(node: Node, *, object_types: Iterable[ObjectType]) -> FabShell:
    """Run the FaB engine on ``node`` for ``object_types``; the shell (tests read its
    replica).  The replica continues from what the node's store kept.

    Raises:
        ValueError: the stored FaB state does not parse.
    """
    keyring = node.keyring
    replica = Replica(
        int(node.id),
        FabQuorums.cluster(node.config.n, node.config.b),
        lambda p: keyring.key(PrincipalId(p)),
        registry_of(object_types),
        SETTINGS,
        quota=limits.quota_bytes(node),
    )
    image = node.store.read(durable.load)
    ex = replica.execution
    versions = ex.versions = Versions(
        Retention.of(node.config.retention), lambda: snapshot_times(ex.objects.get(SNAPSHOTS))
    )
    node.store.read(versions.load)
    versions.restoring = True  # its own snapshot: the versions before it are kept
    restored = replica.restore(image) if image is not None else Step(())
    versions.restoring = False
    # From here on (not for the slots a restart executes again, told long ago).
    replica.on_execute = functools.partial(_executed, node)
    replica.admit = functools.partial(_admit, node, replica.registry)
    persist = Persist(node, durable.Durable(replica, image), versions)  # its pieces are stored

    faults = node.faults  # a Byzantine node of a test (testing/byzantine/fab.py)
    rewrite = faults.fab_rewrite(replica) if isinstance(faults, FabFaults) else None
    shell = FabShell(replica, node.server.push, tick=TICK, persist=persist, rewrite=rewrite)

    async def on_fab(ctx: RequestContext, payload: Any) -> None:
        await shell.handle(int(ctx.sender), payload)

    async def run() -> None:
        await shell.apply(restored)  # also writes the first image
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report, node, shell)
            await shell.run(node.endpoint)

    async def on_versions(ctx: RequestContext, payload: Any) -> Any:
        return pastclient.serve(versions, ex.executed, payload)

    node.register(KIND, on_fab, inline=True)
    node.register(pastclient.KIND, on_versions)
    node.progress["fab"] = _progress(shell)
    node.spawn(run)
    if image is not None:
        node.log.info(
            "FaB: restored regency %d, stable checkpoint %d, executed %d",
            replica.election.regency,
            replica.checkpoints.stable,
            replica.execution.executed,
        )
    return shell


def _executed(node: Node, op: Operation, reply: Reply) -> None:
    """The replica's ``on_execute``: the lease recalls and lock wake-ups a slot's answer
    names, pushed as a Q/U node does on accept; a quota refusal counted."""
    if reply.ok:
        node.recalls.executed(op.method, reply.result, op.client, op.arg)
    elif reply.result == "quota":
        node.stats["fab.refused.quota"] += 1
        if node.server.admission is not None:
            node.server.admission.note(PrincipalId(op.client), "quota_refused")


def _admit(node: Node, registry: Registry, op: Operation) -> str | None:
    """The replica's ``admit``: a client's update declaring times off this node's clock is
    refused, as a Q/U node refuses it (``qu/clocks.py``); queries declare none."""
    method = registry.get(op.method)
    if method is None or method.cls is not Class.UPDATE:
        return None
    now = node.now_ns()
    off = (  # the request id is the time of its versions (fab/versions.py)
        ClockAhead(op.rid - now)
        if op.rid > now + DEFAULT_MAX_AHEAD_NS
        else clock_off(registry, op.method, op.arg, now, DEFAULT_MAX_AHEAD_NS)
    )
    if off is None:
        return None
    node.stats[f"fab.refused.{off.code}"] += 1
    return off.code


class Persist:
    """The shell's ``persist``: a step's changes (the replica's and its versions') written
    to the node's store before its messages go out (module docstring); on a non-durable
    store at once, on this thread, else awaited.  Changes a failed write lost are
    written next time, whole."""

    def __init__(self, node: Node, changes: durable.Durable, versions: Versions) -> None:
        self.node = node
        self.changes = changes
        self.versions = versions

    def __call__(self) -> Awaitable[None] | None:
        kept = self.versions.changes()
        out = self.changes.changes() + kept
        if not out:
            return None
        store = self.node.store
        if not store.durable:  # no sync to share: commit now, on this thread
            try:
                store.write_now(lambda kv: durable.write(kv, out))
            except Exception:
                self._lost(kept)
                raise
            return None
        return self._written(out, kept)

    async def _written(self, out: list[durable.Change], kept: list[durable.Change]) -> None:
        try:
            await self.node.store.write(lambda kv: durable.write(kv, out))
        except Exception:
            self._lost(kept)
            raise

    def _lost(self, kept: list[durable.Change]) -> None:
        self.changes.forget()  # written next time, whole
        self.versions.forget(kept)


def _progress(shell: FabShell) -> dict[str, Any]:
    """The replica's figures for ``bftfs status`` (``progress.fab``) and the tests."""
    r, st, io = shell.replica, shell.replica.statistics(), shell.statistics()
    return {
        "regency": st.regency,
        "leader": r.election.leader(),
        "executed": st.executed,
        "stable": st.stable,
        "rejected": st.rejected,
        "log_entries": st.log_entries,
        "installed": st.installed,
        "sent": io.sent,
        "dropped": io.dropped,
        "failed": io.failed,
        "received": io.received,
        "unsaved": io.unsaved,
        "kinds": dict(shell.kinds),
    }


async def _report(node: Node, shell: FabShell) -> None:
    while True:
        node.progress["fab"] = _progress(shell)
        await trio.sleep(REPORT)
