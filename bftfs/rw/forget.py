"""Forgetting given-back blocks on a PASIS storage node (docs/lazy.md "Forgetting given-back
blocks"): synchronous steps over a ``KV`` and one pure agreement check.

* :func:`forget_target` - the empty, verified, lone version a block may be forgotten at;
* :func:`forget_agreed` - whether every node's witness allows it (pure);
* :func:`forget_step` - delete it with the block's floor and verified mark;
* :func:`given_back_page` - the blocks that may be forgotten, one page at a time
  (node/rw_forgetter.py).
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
    DB_VERIFIED,
    DB_VERSIONS,
    StoredVersion,
    block_prefix,
    split_key,
    version_key,
)
from bftfs.rw.timestamp import Timestamp


def forget_target(kv: KV, block: int) -> Timestamp | None:
    """The empty version ``block`` may be forgotten at, once every node agrees, or None.

    The block must be down to one version here, empty (a file's contents given back,
    fs/reclaim.py), verified complete (it is the block's verified mark) with nothing kept
    below it.  Forgetting it deletes that version, the floor and the mark: the block
    then reads as never written here, which is the same value, the empty block.
    """
    hosted = hosted_step(kv, block)
    if len(hosted) != 1 or verified_of(kv, block) != hosted[0]:
        return None
    raw = kv.get(DB_VERSIONS, version_key(block, hosted[0]))
    if raw is None or erasure.cc_length(StoredVersion.decode(raw).cross_checksum) != 0:
        return None
    return hosted[0]


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


def forget_step(kv: KV, block: int, ts: Timestamp) -> int:
    """Forget given-back ``block`` (re-checks :func:`forget_target`): its last version, with
    its charge, and its floor and verified mark; how many records were deleted."""
    if forget_target(kv, block) != ts:
        return 0
    deleted = int(drop_version(kv, version_key(block, ts)))
    deleted += int(kv.delete(DB_FLOOR, block_prefix(block)))
    deleted += int(kv.delete(DB_VERIFIED, block_prefix(block)))
    return deleted


def given_back_page(
    kv: KV, after: int | None, limit: int
) -> tuple[list[tuple[int, Timestamp]], int | None]:
    """Blocks above ``after`` that :func:`forget_target` names, looking at up to ``limit``
    blocks, and where the next page starts (None: the last page)."""
    out: list[tuple[int, Timestamp]] = []
    start = 0 if after is None else after + 1
    for _ in range(limit):
        if start >= BLOCK_ID_LIMIT:
            return out, None
        first = next(iter(kv.scan(DB_VERSIONS, block_prefix(start), VERSIONS_END)), None)
        if first is None:
            return out, None
        block = split_key(first[0])[0]
        ts = forget_target(kv, block)
        if ts is not None:
            out.append((block, ts))
        start = block + 1
    return out, start - 1
