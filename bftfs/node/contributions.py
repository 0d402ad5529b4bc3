"""Each node's contribution, as it claims it and as its peers saw it (issue 68; docs/bar.md).

A rational node (BAR, seed 003 chapter 7) skips the work it is not paid for when nobody can
tell.  So the work is counted twice where possible: what a node says it did (its own
counters) and what the others can check of it:

======================  ===================================================================
figure                  whose word
======================  ===================================================================
``stored``              its own: block versions it took (``rw.write.new``, repairs)
``served``              its own: reads it answered (``req.rw.read_latest``/``read_prev``/
                        ``batch``)
``verified``            its own: versions its lazy verification found complete
``notify_sent``         its own: NOTIFYs it sent of them
``notified_by``         the peers': NOTIFY entries each peer received *from* it (its
                        verification work as others saw it; ``lazy-coop`` makes each node
                        responsible for ``(b + 1) / n`` of the blocks, so a node that never
                        verifies shows 0 where the others show many)
``audits_answered``     its own: challenges it answered (``node/audits.py``)
audits passed/failed    the peers': each auditor's verdicts on it (``progress["audits"]``)
======================  ===================================================================

:func:`run` keeps ``progress["contributions"]`` current (every :data:`PUBLISH_SECONDS`);
:func:`rows` adds up what every node reports into one row per node for ``bftfs status``;
:func:`families` are the node's metrics of it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio

from bftfs.metrics import Family

if TYPE_CHECKING:
    from bftfs.node.service import Node

PROGRESS_KEY = "contributions"
PUBLISH_SECONDS = 1.0
AUDITS_KEY = "audits"


def snapshot(node: Node, notified_by: Counter[int]) -> dict[str, Any]:
    """The node's own contribution figures, from its counters and progress records."""
    stats = node.stats
    verify = node.progress.get("rw.verify") or {}
    return {
        "stored": stats.get("rw.write.new", 0) + stats.get("rw.write.repair", 0),
        "served": sum(stats.get(f"req.rw.{k}", 0) for k in ("read_latest", "read_prev", "batch")),
        "verified": int(verify.get("verified", 0)),
        "notify_sent": int(verify.get("notify_sent", 0)),
        "notified_by": {str(p): c for p, c in sorted(notified_by.items())},
        "audits_answered": stats.get("audits.answered", 0),
        "audits_missing": stats.get("audits.answered_missing", 0),
        "audits_fetched": stats.get("audits.fetched", 0),
    }


def publish(node: Node, notified_by: Counter[int] | None = None) -> None:
    """Refresh ``progress["contributions"]`` (``notified_by``: the NOTIFY entries this node
    received per sender, kept by its ``RWServer``)."""
    node.progress[PROGRESS_KEY] = snapshot(node, notified_by or Counter())


async def run(node: Node, notified_by: Counter[int]) -> None:
    """Keep ``progress["contributions"]`` current while the node runs."""
    while True:
        publish(node, notified_by)
        await trio.sleep(PUBLISH_SECONDS)


@dataclass
class Row:
    """One node's line of the contributions table: its own figures (None: it did not
    answer) and what its peers saw of it."""

    node: int
    stored: int | None = None
    served: int | None = None
    verified: int | None = None
    answered: int | None = None
    #: NOTIFY entries its peers received from it (their word).
    notifies_seen: int = 0
    passed: int = 0
    failed: int = 0
    missing: int = 0
    late: int = 0
    #: Peers whose audits of it failed.
    failed_by: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rows(stats_by_node: dict[int, dict[str, Any] | None]) -> list[Row]:
    """One :class:`Row` per node from every node's ``stats`` (None: down)."""
    out = {node: Row(node) for node in stats_by_node}
    failed_by: dict[int, set[int]] = {}
    for reporter, stats in stats_by_node.items():
        progress = (stats or {}).get("progress") or {}
        own = progress.get(PROGRESS_KEY) or {}
        if own:
            mine = out[reporter]
            mine.stored, mine.served = own.get("stored", 0), own.get("served", 0)
            mine.verified, mine.answered = own.get("verified", 0), own.get("audits_answered", 0)
        for peer, count in (own.get("notified_by") or {}).items():
            if int(peer) in out:
                out[int(peer)].notifies_seen += int(count)
        for peer, seen in ((progress.get(AUDITS_KEY) or {}).get("peers") or {}).items():
            row = out.get(int(peer))
            if row is None:
                continue
            row.passed += int(seen.get("passed", 0))
            row.failed += int(seen.get("failed", 0))
            row.missing += int(seen.get("missing", 0))
            row.late += int(seen.get("late", 0))
            if seen.get("failed"):
                failed_by.setdefault(int(peer), set()).add(reporter)
    for node, who in failed_by.items():
        out[node].failed_by = tuple(sorted(who))
    return [out[n] for n in sorted(out)]


def families(node: Node) -> list[Family]:
    """The node's contribution metrics: its own figures by kind, and its audits of each
    peer by verdict."""
    own = Family(
        "bftfs_node_contribution",
        "This node's own contribution figures (stored, served, verified, notify_sent, "
        "audits_answered, audits_missing, audits_fetched; docs/bar.md)",
        "gauge",
        ("kind",),
    )
    mine = node.progress.get(PROGRESS_KEY) or {}
    for kind, value in sorted(mine.items()):
        if isinstance(value, int):
            own.add(value, kind)
    audits = Family(
        "bftfs_node_audits_total",
        "This node's audits of each peer (proofs of storage), by verdict "
        "(passed, failed, missing, late, void)",
        "counter",
        ("peer", "verdict"),
    )
    for peer, seen in sorted(((node.progress.get(AUDITS_KEY) or {}).get("peers") or {}).items()):
        for verdict in ("passed", "failed", "missing", "late", "void"):
            audits.add(int(seen.get(verdict, 0)), peer, verdict)
    return [own, audits]
