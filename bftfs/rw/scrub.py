"""Scrub and repair of PASIS blocks (``bftfs verify``, issue 16), like ``zpool scrub`` or
``tahoe deep-check --repair``.

For one block: READ its latest complete version as any reader does (classification, cross
checksum), regenerating all ``N`` fragments from
``m`` valid ones; then ask every node for *its* fragment of that version and compare it
with the regenerated one.  A node that lacks the version (it was down, or lost its disk)
or holds a damaged copy (bit rot) is written its fragment again at the same timestamp
(``RWClient.do_write`` to that node alone; a node replaces a damaged copy,
``replica.store_write``).  A node that does not answer is counted, not waited for.

The caller (``bftfs/fs/scrub.py``) decides which blocks: those of every file reachable
from the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.net.errors import RemoteError, TransportError
from bftfs.outcome import ClusterUnavailable
from bftfs.rw.client import RWClient
from bftfs.rw.messages import BlockId, MessageError, ReadReply, ReadRequest
from bftfs.rw.timestamp import ZERO

#: Seconds a node may take to show its fragment before it counts as unreachable.
NODE_TIMEOUT = 5.0


@dataclass
class BlockReport:
    """What the scrub found for one block."""

    block: int
    #: Nodes whose fragment of the latest complete version is intact.
    intact: list[int] = field(default_factory=list)
    #: Nodes that lacked it or held it damaged, and were written it again.
    repaired: list[int] = field(default_factory=list)
    #: Nodes that did not answer (or refused the repair).
    unreachable: list[int] = field(default_factory=list)
    #: The block's value is the initial empty one (never written): nothing to check.
    empty: bool = False


async def scrub_block(rw: RWClient, block: int) -> BlockReport:
    """Check every node's fragment of ``block``'s latest complete version; rewrite the
    missing and damaged ones (module docstring).

    Raises:
        ClusterUnavailable: the block cannot be read at all (more than ``t`` nodes down).
    """
    report = BlockReport(block)
    # No write-back by the read itself: the per-node check below rewrites exactly the nodes
    # that lack the version (which also completes a repairable candidate), and says which.
    outcome = await rw.read_version(BlockId(block), repair=False)
    if outcome.ts == ZERO:
        report.empty = True
        return report
    cc = outcome.cross_checksum
    assert cc is not None and len(outcome.fragments) == rw.th.n, "scrub needs regeneration"
    req = ReadRequest(BlockId(block), data=True, below=outcome.ts, inclusive=True)

    async def check(node: int) -> None:
        try:
            with trio.fail_after(NODE_TIMEOUT):
                raw = await rw.endpoint.call(NodeId(node), req.kind, req.to_wire())
            reply = ReadReply.from_wire(raw, req, n=rw.th.n, max_fragment=rw.max_fragment)
        except (TransportError, RemoteError, trio.TooSlowError):
            report.unreachable.append(node)
            return
        except MessageError:
            reply = None  # a garbled answer: treated as a damaged copy, rewritten
        good = (
            reply is not None
            and reply.history[:1] == (outcome.ts,)
            and reply.cross_checksum == cc
            and reply.fragment == outcome.fragments[node]
        )
        if good:
            report.intact.append(node)
            return
        try:
            await rw.do_write(BlockId(block), outcome.ts, outcome.fragments, cc, targets=[node])
        except ClusterUnavailable:
            report.unreachable.append(node)
            return
        report.repaired.append(node)

    async with trio.open_nursery() as nursery:
        for node in range(rw.th.n):
            nursery.start_soon(check, node)
    for part in (report.intact, report.repaired, report.unreachable):
        part.sort()
    return report


def summarize(reports: list[BlockReport]) -> dict[str, Any]:
    """Totals over many blocks, for the command's summary and ``--json``."""
    checked = [r for r in reports if not r.empty]
    return {
        "blocks": len(reports),
        "checked": len(checked),
        "fragments_intact": sum(len(r.intact) for r in checked),
        "fragments_repaired": sum(len(r.repaired) for r in checked),
        "fragments_unreachable": sum(len(r.unreachable) for r in checked),
        "blocks_repaired": sum(1 for r in checked if r.repaired),
        "repaired_by_node": {
            str(node): sum(1 for r in checked if node in r.repaired)
            for node in sorted({n for r in checked for n in r.repaired})
        },
    }
