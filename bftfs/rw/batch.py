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

import trio

from bftfs.net.batch import Batcher
from bftfs.net.endpoint import Endpoint

KIND_BATCH = "rw.batch"
#: Largest number of items in one batch (a node refuses more).
MAX_BATCH = 128
#: Requests one node may have unanswered before new ones to it fail at once (the
#: batcher's ``max_pending``): 256 items of at most a fragment of a big block (87 KiB at
#: 256 KiB blocks, m = 3), about 22 MiB held per node at most, eight of
#: ``write_blocks``' waves behind the others.
MAX_PENDING = 256


def rw_batcher(endpoint: Endpoint, nursery: trio.Nursery, *, timeout: float | None) -> Batcher:
    """A batcher sending ``rw.batch`` requests through ``endpoint``."""
    return Batcher(
        endpoint,
        nursery,
        kind=KIND_BATCH,
        max_batch=MAX_BATCH,
        timeout=timeout,
        max_pending=MAX_PENDING,
    )
