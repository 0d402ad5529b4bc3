"""How the PASIS client's parts reach the nodes and the CPU: one :class:`RWCalls` shared by
the write path (``rw/write.py``), the read rounds (``rw/readround.py``) and the read loop
(``rw/read.py``).

It holds what every part needs and nothing they decide: the endpoint, the thresholds, the
nodes asked, a quorum call's patience, the batcher (concurrent operations share
``rw.batch`` frames, ``rw/batch.py``) and the client's counters.  Erasure coding and
hashing of blocks of ``thread_threshold`` bytes or more run in a worker thread.

**Slow is not unavailable** (issue 60, and this round's "timeouts take slowness for
failure").  A quorum call that ends without ``enough`` tells two kinds of target apart:
those that *failed* (refused, connection refused or closed, a reply ``accept`` rejected:
an error in the result) and those that were merely *silent* - still asked, no answer
within the call's patience (:func:`silent_targets`).  A silent node is not faulty: a
machine at load 12-18 answers in seconds.  The client's parts (``rw/read.py``,
``rw/write.py``) first go on without them (the read widens to other nodes, exactly as
before, so a node that never answers costs at most one patience), and only when nobody
else is left ask the silent ones again, each time with twice the patience
(:meth:`RWCalls.patient_timeout`, at most :data:`MAX_STRETCH` times the base timeout,
:data:`MAX_PATIENT_ROUNDS` times per operation).  They give up - ``ReadFailed`` /
``WriteFailed`` as before - only when none of the silent nodes is live by the transport's
own judgement (connection refused or closed, or silent for several of its own response
times though it was sent heartbeats: ``Endpoint.node_live``), when the caller's patience
ran out (the mount's ``timeo``; a cancel scope cancels the call itself), or when the
rounds are spent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from bftfs.ids import NodeId
from bftfs.net.batch import Batcher, batch_quorum
from bftfs.net.endpoint import Endpoint
from bftfs.net.quorum import INVALID_REPLY, QuorumResult, QuorumUnavailable
from bftfs.outcome import current_patience
from bftfs.rw.classify import RWThresholds

#: Blocks at least this large are coded and hashed in a worker thread (below it the thread
#: hand-off costs more than the work: zfec and BLAKE2b run near 1 GB/s).
DEFAULT_THREAD_THRESHOLD = 256 * 1024
#: Default number of blocks in flight in ``read_blocks`` / ``write_blocks``.
DEFAULT_CONCURRENCY = 32
#: How many times one read attempt or one write round asks silent nodes again (module
#: docstring): with the patience doubling up to :data:`MAX_STRETCH`, at most about
#: ``2 + 4 + 8 + 16 + 16 + 16 = 62`` base timeouts of waiting for nodes that are up.
MAX_PATIENT_ROUNDS = 6
#: The most a silent node's patience is stretched, in base timeouts (bounded back-off).
MAX_STRETCH = 16.0
#: Seconds between two looks at the liveness of a patient round's outstanding targets.
LIVENESS_POLL = 0.5
#: The endpoint's wording for a target silent until a call's own deadline (connection up).
_NO_REPLY = "no reply"


def silent_targets(result: QuorumResult, targets: Iterable[int]) -> list[NodeId]:
    """The ``targets`` of a failed quorum call that neither answered nor failed: still
    in flight at its deadline (no error recorded), or timed out on an open connection
    (``no reply within ...``).  Refusals, unreachable nodes and invalid replies are not
    silent: those are failures, judged as before."""
    out: list[NodeId] = []
    for t in dict.fromkeys(NodeId(t) for t in targets):
        if t in result.replies:
            continue
        why = result.errors.get(t)
        if why is None or (why != INVALID_REPLY and _NO_REPLY in why and "refused" not in why):
            out.append(t)
    return out


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
        timeout: float | None = None,
    ) -> Mapping[NodeId, Any]:
        """One quorum call to ``targets``, batched when the client has a batcher; the
        accepted replies; ``refused(node)`` for each target that refused its request, by
        the time the call ended.  ``timeout``: this call's patience (default the
        client's; :meth:`patient_timeout` gives a longer one for silent nodes, and such a
        call - a patient round - watches its outstanding targets' liveness,
        :meth:`_watched`).  Raises ``QuorumUnavailable`` as ``Endpoint.quorum_call``
        does."""
        try:
            if timeout is None:
                result = await self._quorum(targets, kind, payload, enough, accept, initial)
            else:
                result = await self._watched(
                    targets, kind, payload, enough, accept, initial, timeout
                )
        except QuorumUnavailable as e:
            _refusals(e.result, refused)
            raise
        _refusals(result, refused)
        return result.replies

    async def _watched(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool],
        initial: int | None,
        timeout: float,
    ) -> QuorumResult:
        """A patient round: :meth:`_quorum` with ``timeout``, ended early once none of
        its targets still outstanding is live (``Endpoint.node_live``, asked every
        :data:`LIVENESS_POLL` seconds at most).  Asking also sends a silent node the
        transport's heartbeat (``net/liveness.py``): a node that is merely slow answers
        it and stays live however long its request takes, while a hung one (connection
        up, nothing answered) is taken for absent after its liveness window and ends the
        round then, not at its stretched deadline.  Ended so, the call raises
        ``QuorumUnavailable`` with the outstanding targets' error ``no reply, not live``."""
        replies: dict[NodeId, Any] = {}
        errors: dict[NodeId, str] = {}

        def accepting(node: NodeId, raw: Any) -> bool:
            ok = accept(node, raw)
            if ok:
                replies[node] = raw
            else:
                errors[node] = INVALID_REPLY
            return ok

        #: The call's result, or what it raised (re-raised here, not in an exception group).
        got: list[QuorumResult | Exception] = []
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                try:
                    got.append(
                        await self._quorum(
                            targets, kind, payload, enough, accepting, initial, timeout
                        )
                    )
                except Exception as e:  # noqa: BLE001 - re-raised below, as it was
                    got.append(e)
                nursery.cancel_scope.cancel()

            nursery.start_soon(call)
            poll = min(LIVENESS_POLL, timeout / 4)
            while True:
                await trio.sleep(poll)
                now = trio.current_time()
                outstanding = [NodeId(n) for n in targets if n not in replies and n not in errors]
                if not any(self.endpoint.node_live(n, now) for n in outstanding):
                    nursery.cancel_scope.cancel()
                    break
        if got:
            if isinstance(got[0], Exception):
                raise got[0]
            return got[0]
        self.stats["patient_rounds_not_live"] += 1
        result = QuorumResult(dict(replies), dict(errors))
        for n in outstanding:
            result.errors[n] = "no reply, not live"
        raise QuorumUnavailable(
            f"{kind}: quorum not reached; {outstanding} not live (transport liveness)", result
        )

    async def _quorum(
        self,
        targets: Sequence[int],
        kind: str,
        payload: Any,
        enough: Callable[[Mapping[NodeId, Any]], bool],
        accept: Callable[[NodeId, Any], bool],
        initial: int | None,
        timeout: float | None = None,
    ) -> QuorumResult:
        """The quorum call, through the batcher unless ``timeout`` is given: a patient
        round's requests go on their own, since the batcher's calls keep the client's
        timeout per batch (its items failed ``no reply within`` it, whatever the
        round's patience); such rounds are rare (nobody else was left to ask)."""
        kwargs: dict[str, Any] = {"probe_after": self.probe_after}
        batcher = self.batcher if timeout is None else None
        if timeout is None:
            timeout = self.timeout
        if timeout is not None:
            kwargs["timeout"] = timeout
        if batcher is not None:
            kwargs.setdefault("timeout", self.endpoint.timeout)
            result = await batch_quorum(
                batcher,
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

    def patient_timeout(self, silent: Iterable[int], rounds: int) -> float | None:
        """The patience for asking ``silent`` nodes again after ``rounds`` such rounds of
        this operation (module docstring): twice the last, at most :data:`MAX_STRETCH`
        base timeouts; None when not to ask again - no silent node is live by the
        transport's judgement, the caller's patience ran out, or the rounds are spent."""
        silent = list(silent)
        if not silent or rounds >= MAX_PATIENT_ROUNDS:
            return None
        now = trio.current_time()
        p = current_patience()
        if p is not None and p.expired(now):
            return None
        if not any(self.endpoint.node_live(NodeId(n), now) for n in silent):
            return None
        base = self.endpoint.timeout if self.timeout is None else self.timeout
        self.stats["patient_rounds"] += 1
        return base * min(MAX_STRETCH, 2.0 ** (rounds + 1))


def _refusals(result: QuorumResult, refused: Callable[[NodeId], None] | None) -> None:
    """Tell ``refused`` of each node whose error in ``result`` is a refusal."""
    if refused is None:
        return
    for node, why in result.errors.items():
        if why.startswith("refused"):
            refused(node)
