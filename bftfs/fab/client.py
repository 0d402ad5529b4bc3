"""A client's side of a FaB operation: its request and reply certificates (seed 003
L5379-5467).

A request carries the client's authenticator; it is sent to every node, and each node
answers after executing it.  ``f + 1`` matching replies (same slot, outcome and result)
include a correct node's, and correct nodes execute the same sequence deterministically,
so that answer is the operation's.
"""

from __future__ import annotations

from typing import Any

from bftfs.fab.auth import KeyLookup, sign
from bftfs.fab.execution import operation, request_value
from bftfs.fab.messages import Reply
from bftfs.qu.canon import canonical


def request(
    client: int,
    key: KeyLookup,
    nodes: int,
    rid: int,
    method: str,
    oids: list[int],
    arg: Any,
    stream: int = 0,
) -> bytes:
    """Client ``client``'s request ``rid`` on its ``stream`` (its mount's,
    ``fab/sessions.py``), authenticated for each of the ``nodes`` nodes (the seed's request
    certificate, L5379-5385); ``key`` is the client's key ring."""
    op = operation(client, rid, method, oids, arg, stream)
    return request_value(op, sign(client, key, op, nodes).macs)


class ReplyCollector:
    """Replies to one request ``rid`` of ``stream`` until ``f + 1`` match (the replies to
    another mount of the same client, pushed here too, do not count)."""

    def __init__(self, rid: int, f: int, stream: int = 0) -> None:
        self.rid, self.f, self.stream = rid, f, stream
        self.votes: dict[bytes, set[int]] = {}
        self.result: tuple[bool, Any] | None = None
        self.slot = 0  # the slot of the matching replies

    def add(self, node: int, reply: Reply) -> tuple[bool, Any] | None:
        """Count ``node``'s reply; ``(ok, result)`` once ``f + 1`` nodes agree."""
        if reply.rid != self.rid or reply.stream != self.stream or self.result is not None:
            return self.result
        key = canonical([reply.slot, reply.ok, reply.result])
        for voters in self.votes.values():
            voters.discard(node)  # a node's latest reply counts, once
        self.votes.setdefault(key, set()).add(node)
        if len(self.votes[key]) >= self.f + 1:
            self.result, self.slot = (reply.ok, reply.result), reply.slot
        return self.result
