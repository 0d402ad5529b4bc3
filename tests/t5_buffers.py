"""Bounded buffers on the answering side, in process (issue 39, docs/buffers.md): a
principal that never reads what a node pushes it costs the node at most ``REPLY_BACKLOG``
and a push, not a push per recall.

Real nodes of an in-process cluster on loopback TCP; the principal is a raw handshake
that never reads its socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

from bftfs.crypto import KeyRing
from bftfs.ids import NodeId
from bftfs.net.errors import RemoteError
from bftfs.net.frames import DEFAULT_MAX_FRAME, FrameReader
from bftfs.net.server import REPLY_BACKLOG
from bftfs.net.session import client_handshake
from bftfs.rw.batch import MAX_BATCH_BYTES
from bftfs.rw.client import max_fragment_of
from bftfs.rw.messages import RW_WIRE_VERSION
from bftfs.testing.cluster import open_cluster

PUSH = 1 << 20
PUSHES = 64


async def test_pushes_to_a_principal_that_never_reads_stop_at_the_backlog_mark(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, t=0, b=0, n=2, clients=1) as cluster:
        node = cluster.nodes[0]
        ident = cluster.client_identity(0)
        ring = KeyRing(ident, cluster.config.node_public_keys())
        host, port = cluster.addresses[NodeId(node.id)]
        stream = await trio.open_tcp_stream(host, port)
        try:
            reader = FrameReader(stream, DEFAULT_MAX_FRAME)
            await client_handshake(stream, reader, ring, NodeId(node.id))
            with trio.fail_after(5):
                while True:  # the node records the connection after the hello
                    if node.server.connected(ident.pid):
                        break
                    await trio.sleep(0.005)
            conn = node.server._open[ident.pid][0]
            most = 0
            for _ in range(PUSHES):
                node.server.push(ident.pid, {"x": b"\0" * PUSH})
                most = max(most, conn.writer.pending)
                await trio.lowlevel.checkpoint()  # the writer drains what the kernel takes
            assert node.stats["pushes_dropped"] > 0
            assert most <= REPLY_BACKLOG + PUSH + 1024, f"{most} bytes held for a non-reader"
        finally:
            await stream.aclose()


async def test_a_batch_asking_for_more_than_max_batch_bytes_of_fragments_is_refused(
    tmp_path: Path,
) -> None:
    """An honest client cuts its batches at ``MAX_BATCH_BYTES`` of fragments asked for
    (``net/batch.py``); a node refuses a batch asking for more, whose reply it would hold
    whole (128 data reads of 1 MiB blocks: 43 MiB), and answers one within the limit."""
    async with open_cluster(tmp_path, t=0, b=0, n=2, clients=1) as cluster:
        ep = cluster.client(0)
        node = NodeId(cluster.nodes[0].id)
        most = MAX_BATCH_BYTES // max_fragment_of(cluster.config)
        read = ["rw.read_latest", {"v": RW_WIRE_VERSION, "b": bytes(16), "d": True}]
        witness = ["rw.read_latest", {"v": RW_WIRE_VERSION, "b": bytes(16), "d": False}]
        answered = await ep.call(node, "rw.batch", [read] * most + [witness] * 8)
        assert len(answered) == most + 8
        with pytest.raises(RemoteError) as refused:
            await ep.call(node, "rw.batch", [read] * (most + 1))
        assert refused.value.code == "malformed"
