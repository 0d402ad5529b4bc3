"""Pushing lease recalls to their holders (issue 33; ``bftfs/fsobjects/leases.py``).

When this node takes a client's ``fs.recall`` (the update that records that a client wants
an object other clients hold leases on), its answer names the holders of each object; the
node then pushes ``{"recall": [oid, ...]}`` to each holder over the holder's own
authenticated connections (``Server.push``).  The holder believes a recall only once
``b + 1`` nodes pushed it (``fs/leases.py``), so a Byzantine node can neither make a holder
give a lease up nor, by withholding its push, keep a recall from arriving: every correct
node of the update's quorum pushes.

The answer pushed is the one the update stored (the applied table answers a retried
recall the same), so a recall sent again pushes again: a holder that lost a push is told
at the requester's next try.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from bftfs.fsobjects.leases import MAX_RECALLED
from bftfs.ids import PrincipalId
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request

#: The method whose answer names the holders to push to.
RECALL = "fs.recall"


class Recalls:
    """Pushes a recall to each holder an accepted ``fs.recall`` names."""

    def __init__(self, push: Callable[[PrincipalId, Any], int], stats: Counter[str]) -> None:
        """``push``: the node server's ``Server.push``."""
        self._push = push
        self.stats = stats
        #: Off in the ``withhold-recalls`` Byzantine profile (testing/byzantine).
        self.enabled = True

    def accepted(self, req: Request, reply: Reply) -> None:
        """An update this node took: push the recalls its answer names."""
        op = req.op
        if op is None or op.method != RECALL or not isinstance(reply.answer, list):
            return
        if not self.enabled:
            self.stats["qu.recalls.withheld"] += 1
            return
        per_holder: dict[int, list[int]] = {}
        for item in reply.answer:
            if not (isinstance(item, list) and len(item) == 2):
                continue
            oid, holders = item
            if isinstance(oid, int) and isinstance(holders, list):
                for h in holders:
                    if isinstance(h, int) and not isinstance(h, bool):
                        per_holder.setdefault(h, []).append(oid)
        for holder, oids in per_holder.items():
            sent = self._push(PrincipalId(holder), {"recall": oids[:MAX_RECALLED]})
            self.stats["qu.recalls.pushed" if sent else "qu.recalls.unconnected"] += 1
