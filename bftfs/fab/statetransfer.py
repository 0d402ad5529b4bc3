"""Catching up, for one FaB replica (seed 003, chapter 6): the ``PULL`` of missing slots
(paced by :mod:`bftfs.fab.pacing`), and state transfer at checkpoints: the snapshots it
keeps, the ``FETCH`` it sends when execution stays behind the stable checkpoint, and the
``SNAPSHOT`` it installs.

A snapshot is trusted by its digest, which the stable checkpoint's certificate (``f + 1``
matching statements) names, never by its sender: one answer is enough, and a wrong one
is refused with its reason.  :class:`~bftfs.fab.replica.Replica` owns one and routes
``FETCH``/``SNAPSHOT`` here.
"""

from __future__ import annotations

from collections.abc import Callable

from bftfs.fab.checkpoints import Checkpoints
from bftfs.fab.execution import Execution, digest_of
from bftfs.fab.learner import Learner
from bftfs.fab.messages import Fetch, Message, Pull, Snapshot
from bftfs.fab.pacing import Backoff


class StateTransfer:
    """Snapshots kept, fetched and installed (module docstring)."""

    def __init__(
        self,
        me: int,
        nodes: int,
        checkpoints: Checkpoints,
        execution: Execution,
        send: Callable[[int | None, Message], None],
        pacing: tuple[int, int] = (1, 1),
    ) -> None:
        self.me = me
        self.nodes = nodes
        self.checkpoints = checkpoints
        self.execution = execution
        self._send = send
        #: Sequence number -> the state there (this node's checkpoints, one installed).
        self.snapshots: dict[int, bytes] = {}
        #: Snapshots installed to catch up past a collected log.
        self.installed = 0
        #: When to PULL each missing slot, and FETCH the stable state, again
        #: (``pacing``: ticks before the first send, longest interval).
        self.pulls: Backoff[int] = Backoff(*pacing)
        #: Slots above the highest learned one are usually still being learned the usual
        #: way (under load, every slot in flight): they are pulled only after the
        #: longest interval.
        self.tail_pulls: Backoff[int] = Backoff(pacing[1], pacing[1])
        self.fetches: Backoff[int] = Backoff(*pacing)

    def pull(self, now: int, learner: Learner, holding: bool, per_tick: int) -> None:
        """PULL slots missing for a while (Fig. 6.6 lines 32-34: after a timeout, so a slot
        still being learned the usual way costs no pull): a gap below a learned slot
        after ``pacing[0]`` ticks, a slot above every learned one after ``pacing[1]``."""
        missing = learner.missing(self.execution.executed)
        if not missing and holding:
            # Holding a request and hearing of no slot to learn: perhaps behind a log the
            # others collected; a PULL of the next slot is answered with the checkpoint.
            missing = [max(self.execution.executed, learner.low) + 1]
        top = max(learner.learned, default=0)
        gaps, tail = [s for s in missing if s < top], [s for s in missing if s > top]
        late = self.pulls.due(gaps, now) + self.tail_pulls.due(tail, now)
        for slot in late[:per_tick]:
            self._send(None, Pull(slot))

    def keep(self, seq: int, snapshot: bytes) -> None:
        self.snapshots[seq] = snapshot

    def collect(self, low: int) -> None:
        """Forget the snapshots below the stable checkpoint ``low``."""
        self.snapshots = {s: v for s, v in self.snapshots.items() if s >= low}

    def on_fetch(self, sender: int, m: Fetch) -> str | None:
        snapshot = self.snapshots.get(m.seq)
        if snapshot is not None:
            self._send(sender, Snapshot(m.seq, snapshot))
        return None

    def on_snapshot(self, sender: int, m: Snapshot) -> str | bool:
        """Install ``m`` if it is the certified stable state this node lacks: True when
        installed, False when not needed, else why it was refused."""
        cp = self.checkpoints
        if m.seq != cp.stable or m.seq <= self.execution.executed:
            return False  # not needed (any longer)
        if digest_of(m.state) != cp.digest:
            return f"snapshot {m.seq} from {sender} does not match the certified digest"
        if not self.execution.install(m.state) or self.execution.executed != m.seq:
            return f"snapshot {m.seq} from {sender} is malformed"
        self.snapshots[m.seq] = m.state
        self.installed += 1
        return True

    def maybe_fetch(self, now: int) -> None:
        """FETCH the stable state when execution has been behind it for a while, from one
        other node per try in turn (tries paced as PULLs are): a node just behind usually
        learns the slots a moment later, and a snapshot is the whole state (its digest, not
        its sender, makes it trusted, so one answer is enough)."""
        stable = self.checkpoints.stable
        behind = [stable] if stable > self.execution.executed else []
        if self.fetches.due(behind, now):
            peer = (self.me + 1 + now % (self.nodes - 1)) % self.nodes
            self._send(peer, Fetch(self.checkpoints.stable))
