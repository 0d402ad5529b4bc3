"""Request batching for the PASIS client: the ``rw.batch`` request kind.

A file is many blocks, so a client usually has many block operations in flight, and each
sends a request to (nearly) every node; the batcher (``bftfs/net/batch.py``) sends the
requests queued for a node as one ``rw.batch`` request, and the node runs the items
concurrently (writes still share one group commit) and answers with one frame.

Wire: ``rw.batch`` request = list of ``[kind, payload]`` (at most :data:`MAX_BATCH`, kinds
from ``rw.*`` other than ``rw.batch``); reply = list of the same length, each ``[0, reply]``
or ``[1, [code, message]]``.  The reply list is checked by the batcher; each item's reply is
checked by the caller as usual (messages.py).
"""

from __future__ import annotations

from typing import Any

import trio

from bftfs.net.batch import Batcher
from bftfs.net.endpoint import Endpoint
from bftfs.net.frames import DEFAULT_MAX_FRAME
from bftfs.rw.messages import KIND_READ_LATEST, KIND_READ_PREV, KIND_WRITE

KIND_BATCH = "rw.batch"
#: Largest number of items in one batch (a node refuses more).
MAX_BATCH = 128
#: Requests one node may have unanswered before new ones to it fail at once (the
#: batcher's ``max_pending``): 256 items, sixteen of ``write_blocks``' waves behind the
#: others, and at most :data:`MAX_PENDING_BYTES` of fragments (22 MiB were 256 fragments
#: of 256 KiB blocks; 1 MiB blocks have four times the fragment).
MAX_PENDING = 256
MAX_PENDING_BYTES = 32 * 1024 * 1024
#: Fragment bytes one batch carries at most, written (request) or read (reply): three
#: quarters of the frame limit, the rest for the items' timestamps, cross checksums and
#: histories.  A wave of ``write_blocks`` (16 fragments of 349 KB at 1 MiB blocks, m = 3)
#: still fits one frame; a hundred reads of 256 KiB blocks (8.7 MB of fragments) do not,
#: and were refused by the client's frame limit as one batch (issue 34).
MAX_BATCH_BYTES = DEFAULT_MAX_FRAME * 3 // 4


def fragment_bytes(kind: str, payload: Any, max_fragment: int) -> tuple[int, int]:
    """The fragment bytes an ``rw`` request adds to its batch's request and reply: a
    WRITE's fragment, or ``max_fragment`` in the reply of a read that asks for data."""
    if not isinstance(payload, dict):
        return 0, 0
    if kind == KIND_WRITE:
        fragment = payload.get("f")
        return (len(fragment) if isinstance(fragment, bytes | bytearray | memoryview) else 0), 0
    if kind in (KIND_READ_LATEST, KIND_READ_PREV) and payload.get("d") is True:
        return 0, max_fragment
    return 0, 0


def rw_batcher(
    endpoint: Endpoint, nursery: trio.Nursery, *, timeout: float | None, max_fragment: int
) -> Batcher:
    """A batcher sending ``rw.batch`` requests through ``endpoint``, each carrying at most
    :data:`MAX_BATCH_BYTES` of fragments of at most ``max_fragment`` bytes."""
    return Batcher(
        endpoint,
        nursery,
        kind=KIND_BATCH,
        max_batch=MAX_BATCH,
        timeout=timeout,
        max_pending=MAX_PENDING,
        max_pending_bytes=MAX_PENDING_BYTES,
        max_bytes=MAX_BATCH_BYTES,
        item_bytes=lambda kind, payload: fragment_bytes(kind, payload, max_fragment),
    )
