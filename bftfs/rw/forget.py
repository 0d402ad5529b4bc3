"""Forgetting given-back blocks on a PASIS storage node (docs/lazy.md "Forgetting given-back
blocks"): synchronous steps over a ``KV`` and pure agreement checks.

* :func:`lone_empty` - the empty version a block is down to here, verified or not;
* :func:`forget_target` - that version when it is verified (the block's verified mark);
* :func:`forget_agreed` - whether every node's witness allows forgetting a verified one;
* :func:`forgotten_elsewhere` - whether every other node holds nothing of the block,
  which allows forgetting an unverified one (pure);
* :func:`forget_step` - delete it with the block's floor and verified mark;
* :func:`given_back_page` - the blocks that may be forgotten, one page at a time
  (node/rw_forgetter.py).

The unverified case: a node that was away holds none of a removed file's blocks written
meanwhile; its catch-up (node/rw_catchup.py) may read and store a block's empty version
just before the others, who need its word only that it holds nothing older, forget it.
Its own verifier then finds nothing on the others and never marks that version verified:
before, the node kept it for good.
"""

from __future__ import annotations

from collections.abc import Mapping

from bftfs import erasure
from bftfs.kv import KV
from bftfs.rw.collect import hosted_step, verified_of
from bftfs.rw.messages import BLOCK_ID_LIMIT, ReadReply
from bftfs.rw.replica import VERSIONS_END, drop_version
from bftfs.rw.schema import (
    DB_FLOOR,
    DB_THINNED,
    DB_VERIFIED,
    DB_VERSIONS,
    StoredVersion,
    block_end,
    block_prefix,
    split_key,
    version_key,
)
from bftfs.rw.timestamp import Timestamp


def lone_empty(kv: KV, block: int) -> Timestamp | None:
    """The one version ``block`` is down to here, if it is empty (a file's contents given
    back, fs/files/reclaim.py), verified or not; else None.

    Forgetting it deletes that version, the floor and the mark: the block then reads as
    never written here, which is the same value, the empty block.
    """
    hosted = hosted_step(kv, block)
    if len(hosted) != 1:
        return None
    raw = kv.get(DB_VERSIONS, version_key(block, hosted[0]))
    if raw is None or erasure.cc_length(StoredVersion.decode(raw).cross_checksum) != 0:
        return None
    return hosted[0]


def forget_target(kv: KV, block: int) -> Timestamp | None:
    """The empty version ``block`` may be forgotten at once every node lists it alone or
    nothing (:func:`forget_agreed`): :func:`lone_empty`, verified complete (it is the
    block's verified mark).  None otherwise."""
    ts = lone_empty(kv, block)
    return ts if ts is not None and verified_of(kv, block) == ts else None


def forget_agreed(ts: Timestamp, replies: Mapping[int, ReadReply], n: int) -> bool:
    """Whether all ``n`` nodes' READ_LATEST witnesses list ``ts`` as the only version of
    the block, or none at all (they forgot it already, or never had it) (pure).

    Then no node holds a version below ``ts``, so whatever mix of ``ts`` and nothing a
    reader meets, it returns the empty block: no older contents can resurface.  A lying
    node speaks only for itself: the older versions it may keep are at one node, too few
    to be returned (``QC - missing > b``, rw/classify.py).
    """
    if len(replies) != n:
        return False
    return all(r.history in ((ts,), ()) and not r.more for r in replies.values())


def forgotten_elsewhere(ts: Timestamp, replies: Mapping[int, ReadReply], n: int, me: int) -> bool:
    """Whether every other node's READ_LATEST witness lists nothing for the block: they
    all forgot it (or never had it), so ``ts``, the lone empty version ``me`` holds, may go
    though it is not verified here (pure).

    No node holds anything else of the block, so readers meet ``ts`` at this node alone
    or nothing at all: the empty block either way.  A lying node speaks only for itself,
    as in :func:`forget_agreed`.
    """
    if len(replies) != n or me not in replies or replies[me].history != (ts,):
        return False
    return all(r.history == () and not r.more for i, r in replies.items() if i != me)


def forget_step(kv: KV, block: int, ts: Timestamp) -> int:
    """Forget given-back ``block`` (re-checks that ``ts`` is still its :func:`lone_empty`
    version: nothing came meanwhile): that version, with its charge, and its floor and
    verified mark; how many records were deleted."""
    if lone_empty(kv, block) != ts:
        return 0
    deleted = int(drop_version(kv, version_key(block, ts)))
    deleted += int(kv.delete(DB_FLOOR, block_prefix(block)))
    deleted += int(kv.delete(DB_VERIFIED, block_prefix(block)))
    for key in [k for k, _ in kv.scan(DB_THINNED, block_prefix(block), block_end(block))]:
        deleted += int(kv.delete(DB_THINNED, key))
    return deleted


def given_back_page(
    kv: KV, after: int | None, limit: int
) -> tuple[list[tuple[int, Timestamp]], int | None]:
    """Blocks above ``after`` that :func:`lone_empty` names (verified or not), looking at
    up to ``limit`` blocks, and where the next page starts (None: the last page)."""
    out: list[tuple[int, Timestamp]] = []
    start = 0 if after is None else after + 1
    for _ in range(limit):
        if start >= BLOCK_ID_LIMIT:
            return out, None
        first = next(kv.scan_keys(DB_VERSIONS, block_prefix(start), VERSIONS_END), None)
        if first is None:
            return out, None
        block = split_key(first)[0]
        ts = lone_empty(kv, block)
        if ts is not None:
            out.append((block, ts))
        start = block + 1
    return out, start - 1
