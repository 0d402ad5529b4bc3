"""Repairs on a PASIS storage node: when a write at another writer's timestamp is taken.

* :func:`is_repair` - a write at another writer's timestamp is a repair (a reader's or a
  node's, a scrub's rewrite);
* :func:`repair_proven` - it is taken only when ``b + 1`` other nodes host that version
  (asked with :func:`proof_request`), and charged to its writer (node/rw_server.py;
  docs/rw.md, "Repairs are charged to the version's writer").

Pure functions over messages; the node does the asking.
"""

from __future__ import annotations

from collections.abc import Mapping

from bftfs.rw.messages import BlockId, ReadReply, ReadRequest, WriteRequest
from bftfs.rw.timestamp import Timestamp


def is_repair(req: WriteRequest, sender: int) -> bool:
    """Whether a write re-creates someone else's version: its timestamp names another
    writer than the principal that sent it (a reader's or a node's repair, a scrub's
    rewrite).  A client's own writes always carry its own id (``RWClient``), so every
    version a correct node stored as an original write was sent by the writer its
    timestamp names; a repair is taken only as a copy of a version that exists already
    (:func:`repair_proven`), so that stays true of every version a correct node holds."""
    return req.ts.writer != sender


def proof_request(block: int, ts: Timestamp) -> ReadRequest:
    """The read witness that asks a peer whether it hosts exactly version ``ts``."""
    return ReadRequest(BlockId(block), data=False, below=ts, inclusive=True)


def hosts_exactly(reply: ReadReply, ts: Timestamp) -> bool:
    """Whether a peer's answer to :func:`proof_request` says it hosts ``ts`` itself."""
    return bool(reply.history) and reply.history[0] == ts


def repair_proven(replies: Mapping[int, ReadReply], ts: Timestamp, b: int) -> bool:
    """Whether ``b + 1`` other nodes host version ``ts``: then one of them is correct and
    stored it as its writer's own write or as a proven repair, so the version exists and
    belongs to the writer its timestamp names (pure; docs/rw.md, "Repairs are charged to
    the version's writer").  ``replies``: peers' answers to :func:`proof_request`."""
    return sum(hosts_exactly(r, ts) for r in replies.values()) >= b + 1
