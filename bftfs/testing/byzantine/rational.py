"""The ``rational`` node profile (issue 68; BAR, seed 003 chapter 7): a node that does the
work it is paid for (answering writes and reads, so that it keeps its place) and skips
what it thinks nobody checks, to save disk, CPU and bandwidth:

- no lazy verification, no scrub, no audits of its peers, no catch-up of the blocks it
  lacks (the profile's :attr:`skips`, which ``node/rw_server.py`` and ``node/audits.py``
  read at start): a catch-up, at start or after a partition (``node/rejoin.py``; a loaded
  machine's missed heartbeats look like one), would fetch the very fragments it dropped;
- it drops a share (:data:`DROP_ONE_IN`: one block in two) of the fragments it is asked to
  store, chosen by a keyed hash of the block id so that its choice is stable (a repair of a
  dropped block is dropped again), while answering those writes OK as if stored;
- it answers audits as cheaply as it can: with the fragment it holds when it holds it
  (cheap: one read), else with the newest older fragment of the block it kept (stale) or,
  holding none, bytes made up to the usual length; never ``missing`` (it would have to
  fetch the fragment, which costs more than it saved).

Readers survive it as they survive the ``stale`` behaviour (``byzantine/rw.py``): it is
one of the ``b`` nodes the protocols tolerate.  The audits must catch it within one audit
period and ``bftfs status`` report it (tests/t4_rational.py).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from bftfs.node.auditcore import KIND_CHALLENGE, Answer, Challenge, answer_step
from bftfs.rw.messages import KIND_WRITE, MessageError, WriteRequest
from bftfs.rw.schema import DB_VERSIONS, StoredVersion, block_prefix, version_key

if TYPE_CHECKING:
    from bftfs.config import ClusterConfig
    from bftfs.kv import KV
    from bftfs.testing.byzantine import NodeWrapper

#: One block in this many has its fragments dropped.
DROP_ONE_IN = 2
#: The ``skips`` a rational node declares (read by the node's start-up hooks).
SKIPS = frozenset({"verify", "scrub", "audit", "catchup"})


def drops(node: int, block: int) -> bool:
    """Whether the rational node ``node`` drops its fragments of ``block`` (a keyed hash:
    stable per block, different per node, about one block in :data:`DROP_ONE_IN`)."""
    digest = hashlib.blake2b(block.to_bytes(16, "big"), key=b"rational%d" % node).digest()
    return digest[0] % DROP_ONE_IN == 0


def cheap_answer(kv: KV, challenge: Challenge, size_hint: int) -> Answer:
    """What the rational node answers a challenge with: the true fragment when it kept it,
    else a stale one (the newest older version of the block it kept), else made-up bytes."""
    honest = answer_step(kv, challenge)
    if not honest.missing:
        return honest
    below = kv.lower_key(DB_VERSIONS, version_key(challenge.block, challenge.ts))
    if below is not None and bytes(below).startswith(block_prefix(challenge.block)):
        raw = kv.get(DB_VERSIONS, bytes(below))
        if raw is not None:
            return Answer(fragment=StoredVersion.decode(bytes(raw)).fragment)
    return Answer(fragment=bytes(size_hint))


class Rational:
    """The profile's node wrappers (see the module docstring)."""

    def __init__(self, config: ClusterConfig, node: int) -> None:
        self.node = node
        self.n = config.n
        self.size_hint = max(1, config.block_size // max(1, config.m))
        self.dropped = 0

    async def write(self, ctx: Any, payload: Any, honest: Any) -> Any:
        """Answer OK without storing the fragment of a block it drops."""
        try:
            block = WriteRequest.from_wire(payload, n=self.n, max_fragment=1 << 30).block
        except MessageError:
            return await honest(ctx, payload)
        if drops(self.node, int(block)):
            self.dropped += 1
            ctx.node.stats["rational.dropped"] += 1
            return {"ok": True, "new": True}
        return await honest(ctx, payload)

    async def challenge(self, ctx: Any, payload: Any, honest: Any) -> Any:
        """Answer an audit as cheaply as it can (:func:`cheap_answer`)."""
        try:
            challenge = Challenge.from_wire(payload)
        except MessageError:
            return await honest(ctx, payload)
        ctx.node.stats["audits.answered"] += 1
        return ctx.node.store.read(lambda kv: cheap_answer(kv, challenge, self.size_hint)).to_wire()

    def wrappers(self) -> dict[str, NodeWrapper]:
        # Batched writes reach ``write`` too: each batch item goes through the node's fault
        # hooks as a request of its own (node/batching.py).
        return {KIND_WRITE: self.write, KIND_CHALLENGE: self.challenge}
