"""How the PASIS client's parts reach the nodes and the CPU: one :class:`RWCalls` shared by
the write path (``rw/write.py``), the read rounds (``rw/readround.py``) and the read loop
(``rw/read.py``).

It holds what every part needs and nothing they decide: the endpoint, the thresholds, the
nodes asked, a quorum call's patience, the batcher (concurrent operations share
``rw.batch`` frames, ``rw/batch.py``) and the client's counters.  Erasure coding and
hashing of blocks of ``thread_threshold`` bytes or more run in a worker thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.net.batch import Batcher, batch_quorum
from bftfs.net.endpoint import Endpoint
from bftfs.net.quorum import QuorumResult, QuorumUnavailable
from bftfs.rw.classify import RWThresholds

#: Blocks at least this large are coded and hashed in a worker thread (below it the thread
#: hand-off costs more than the work: zfec and BLAKE2b run near 1 GB/s).
DEFAULT_THREAD_THRESHOLD = 256 * 1024
#: Default number of blocks in flight in ``read_blocks`` / ``write_blocks``.
DEFAULT_CONCURRENCY = 32


class RWCalls:
    """The quorum calls and CPU work of one PASIS client (see the module docstring).

    Args:
        endpoint: the client's transport endpoint (its principal id is the writer id).
        th: the thresholds.
        nodes: the nodes asked (a storage node reading as a client leaves itself out).
        timeout: per quorum call; None uses the endpoint's.
        probe_after: seconds before a quorum call probes one more node.
        batcher: send requests through it; None sends each request on its own.
        thread_threshold: blocks of at least this many bytes are coded in a worker thread.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        th: RWThresholds,
        nodes: Iterable[int],
        *,
        timeout: float | None,
        probe_after: float,
        batcher: Batcher | None,
        thread_threshold: int,
    ) -> None:
        self.endpoint = endpoint
        self.th = th
        self.nodes: list[NodeId] = [NodeId(i) for i in nodes]
        self.timeout = timeout
        self.probe_after = probe_after
        self.batcher = batcher
        self.thread_threshold = thread_threshold
        #: Counters of reads, writes, rounds, repairs, restarts, ... (``statistics()``).
        self.stats: Counter[str] = Counter()

    async def cpu(self, size: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, in a worker thread when ``size`` bytes make it worth the hand-off."""
        if size >= self.thread_threshold:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def quorum(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        *,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool],
        initial: int | None = None,
        refused: Callable[[NodeId], None] | None = None,
    ) -> Mapping[NodeId, Any]:
        """One quorum call to ``targets``, batched when the client has a batcher; the
        accepted replies; ``refused(node)`` for each target that refused its request, by
        the time the call ended.  Raises ``QuorumUnavailable`` as
        ``Endpoint.quorum_call`` does."""
        try:
            result = await self._quorum(targets, kind, payload, enough, accept, initial)
        except QuorumUnavailable as e:
            _refusals(e.result, refused)
            raise
        _refusals(result, refused)
        return result.replies

    async def _quorum(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool],
        initial: int | None,
    ) -> QuorumResult:
        kwargs: dict[str, Any] = {"probe_after": self.probe_after}
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        if self.batcher is not None:
            kwargs.setdefault("timeout", self.endpoint.timeout)
            result = await batch_quorum(
                self.batcher,
                [NodeId(t) for t in targets],
                kind,
                payload,
                enough=enough,
                accept=accept,
                initial=initial,
                **kwargs,
            )
            return result
        return await self.endpoint.quorum_call(
            [NodeId(t) for t in targets],
            kind,
            payload,
            enough=enough,
            accept=accept,
            initial=initial,
            **kwargs,
        )


def _refusals(result: QuorumResult, refused: Callable[[NodeId], None] | None) -> None:
    """Tell ``refused`` of each node whose error in ``result`` is a refusal."""
    if refused is None:
        return
    for node, why in result.errors.items():
        if why.startswith("refused"):
            refused(node)
