"""What each Q/U method costs a node: requests answered, seconds from a request's start
here to its answer, and CPU seconds of its steps in store transactions.

A node's CPU for a request is its transaction step (``qu/replica.py`` ``handle_request``);
the rest of an update's time here is its wait for the group commit (the steps queued before
it and the commit's sync, ``node/store.py``) and for object sync.  Counting both per method
tells an operator and the benchmarks which file-system operations load the nodes and which
only wait: under PostMark a lease renewal of eight files was one round of 270-360 ms at
the mount, of which each node spent 3-7 ms of CPU in its step and the rest waiting for the
batch of the renewals sent with it (issue 62; ``benchmarks/results/``
``2026-11-30-postmark-writeback-pass.md``).  A node's own catch-up requests are counted
under their methods too: its work either way.

Method names come from clients: only the registered ones are counted by name, any other
under ``(unknown)`` (a Byzantine client cannot grow the table), repairs (a copy or a barrier,
no method) under ``(repair)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bftfs.qu.request import Request

#: Requests with no method: the copies and barriers of a repair.
REPAIR = "(repair)"
#: Requests naming a method this node does not know (refused; counted together).
UNKNOWN = "(unknown)"


@dataclass
class MethodCost:
    """One method's counters since the node started."""

    requests: int = 0
    #: From the request's start here to its answer (steps, commit waits, object sync).
    seconds: float = 0.0
    #: CPU of its transaction steps: the node's work for it (the running thread's CPU
    #: time, so a wait for the interpreter lock held by the node's loop is not counted; a
    #: step re-run after a sync counts each time).
    cpu_seconds: float = 0.0
    #: Transaction steps run: above ``requests`` by the re-runs after an object sync or a
    #: wait for a version this node was making.
    steps: int = 0


class MethodCosts:
    """The counters of every method, by name.  :meth:`answered` runs in the node's trio
    thread, :meth:`stepped` where the store runs the step (the committer's thread for a
    durable store): each writes its own field."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        self._costs: dict[str, MethodCost] = {}

    def key(self, req: Request) -> str:
        """The name ``req`` is counted under."""
        if req.op is None:
            return REPAIR
        return req.op.method if self._known(req.op.method) else UNKNOWN

    def answered(self, req: Request, seconds: float) -> None:
        """``req`` was answered ``seconds`` after it started here."""
        cost = self._cost(self.key(req))
        cost.requests += 1
        cost.seconds += seconds

    def stepped(self, req: Request, seconds: float) -> None:
        """A transaction step of ``req`` took ``seconds`` of CPU."""
        cost = self._cost(self.key(req))
        cost.cpu_seconds += seconds
        cost.steps += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Plain values for ``bftfs status --json`` and the metrics, by method."""
        return {
            name: {
                "requests": c.requests,
                "seconds": round(c.seconds, 6),
                "cpu_seconds": round(c.cpu_seconds, 6),
                "steps": c.steps,
            }
            for name, c in sorted(list(self._costs.items()))  # (a copy: two threads add)
        }

    def _cost(self, name: str) -> MethodCost:
        cost = self._costs.get(name)
        if cost is None:
            cost = self._costs.setdefault(name, MethodCost())
        return cost
