"""Tier 2: a Q/U request every node refuses as malformed fails at once, with the nodes'
reason (issue 39), on the in-process cluster (real node services, TCP, LMDB).

Requests carrying more links than one may (``request.MAX_LINKS``) were refused by all six
nodes as ``bad-request``; the client counted three rounds without a reply and the mount
logged "fewer than q=5 servers answer (3 rounds in a row; 0 answered, none from nodes
[0, 1, 2, 3, 4, 5])", which reads as six silent nodes.  The client here is made to send
such a request (its proven links replaced by too many).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from qu_helpers import counting_client

from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.classify import View
from bftfs.qu.request import MAX_LINKS, MAX_PROOF, Link
from bftfs.qu.timestamp import ZERO, Timestamp
from bftfs.testing.cluster import open_cluster

OID = 21


async def test_a_request_the_nodes_refuse_as_malformed_fails_at_once_with_their_reason(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, clients=1, seed=3) as cl:
        c = await counting_client(cl, OID)
        too_many = tuple(
            Link(OID, Timestamp(k + 1, False, 1, bytes(32)), ZERO, None)
            for k in range(MAX_LINKS + 1)
        )

        def links_for(_view: View) -> tuple[Link, ...]:
            return too_many

        c._links.links_for = links_for  # type: ignore[method-assign]
        before = c.statistics().rounds
        with pytest.raises(QUUnavailable, match="refused the request as malformed") as e:
            await c.update(OID, "counter.increment", 1)
        assert "links must be a short list" in str(e.value)
        assert c.statistics().rounds == before + 1  # not tried again: it would be refused


async def test_a_request_over_the_frame_limit_fails_at_once_as_unavailable(
    tmp_path: Path,
) -> None:
    """A request larger than a node reads (a walk's link proofs, megabytes: two PostMarks
    in one directory) is refused by the endpoint before it is sent; the Q/U client answers
    it as unavailable, with the reason, as it does the nodes' own refusal.  It escaped as
    a transport-level error instead, which a listing's nursery carried to the FUSE handler
    as an "unexpected ExceptionGroup"."""
    async with open_cluster(tmp_path, clients=1, seed=4) as cl:
        c = await counting_client(cl, OID)
        heavy = tuple(
            Link(OID, Timestamp(k + 1, False, 1, bytes(32)), ZERO, bytes(MAX_PROOF))
            for k in range(9)
        )

        def links_for(_view: View) -> tuple[Link, ...]:
            return heavy

        c._links.links_for = links_for  # type: ignore[method-assign]
        with trio.fail_after(10), pytest.raises(QUUnavailable, match="over the limit"):
            await c.update(OID, "counter.increment", 1)
