"""The learner of FaB Paxos, one instance per slot (seed 003 Fig. 6.6 lines 25-44).

A learner learns ``(value, pn)`` at a slot when ``learn = ceil((a + 3f + 1) / 2)``
acceptors report accepting it (line 27), or when ``f + 1`` learners answer its PULL with it
(line 42), or, in Parameterized FaB, when ``commit = ceil((a + f + 1) / 2)`` acceptors
sent valid commit proofs for it (Fig. 6.9 lines 260-265: then the value is chosen by the
section's definition, L7255).  The seed takes the value from the sender's last ACCEPTED
(line 262); here it is the proof's own, which the proof's statements name: as safe (a valid
proof is all the counting needs) and live when the COMMITPROOF overtakes the ACCEPTED.
A proof is checked (``certificates.check_commit``, given by the caller) before it counts.

Only each acceptor's latest report per slot is kept (``accepted[j]`` is
overwritten, Fig. 6.5), and only for slots in the window above the stable checkpoint.

A slot is learned once: later reports for it are not counted (a second, different value
would be a safety violation, which the tests look for across nodes, tests/fab_sim.py).
"""

from __future__ import annotations

from collections.abc import Callable

from bftfs.fab.messages import Accepted, CommitProof, Learned
from bftfs.quorums.fab import FabQuorums


class Learner:
    """Reports from acceptors and learners, and the learned log above ``low``."""

    def __init__(self, q: FabQuorums, window: int) -> None:
        self.q = q
        self.window = window
        self.low = 0
        self.reports: dict[int, dict[int, tuple[int, bytes]]] = {}  # slot -> acceptor -> pv
        self.pulled: dict[int, dict[int, tuple[int, bytes]]] = {}  # slot -> learner -> pv
        self.proven: dict[int, dict[int, tuple[int, bytes]]] = {}  # slot -> acceptor -> pv
        self.learned: dict[int, tuple[int, bytes]] = {}  # slot -> (pn, value)

    def _in_window(self, slot: int) -> bool:
        return self.low < slot <= self.low + self.window

    def _learn(self, slot: int, pv: tuple[int, bytes]) -> bool:
        # callers check first that the slot is not learned yet
        self.learned[slot] = pv
        self.reports.pop(slot, None)
        self.pulled.pop(slot, None)
        self.proven.pop(slot, None)
        return True

    def on_accepted(self, acceptor: int, m: Accepted) -> bool | str:
        """Whether this report made the slot learned now, or why it was refused."""
        if acceptor >= self.q.a:
            return f"node {acceptor} is not an acceptor"
        if not self._in_window(m.slot):
            return f"slot {m.slot} outside the learner's window"
        if m.slot in self.learned:
            return False
        reports = self.reports.setdefault(m.slot, {})
        reports[acceptor] = (m.pn, m.value)
        pv = (m.pn, m.value)
        if sum(1 for r in reports.values() if r == pv) >= self.q.learn:
            return self._learn(m.slot, pv)
        return False

    def on_commit_proof(
        self, acceptor: int, m: CommitProof, valid: Callable[[CommitProof], str | None]
    ) -> bool | str:
        """A commit proof from ``acceptor`` (line 261, its latest per slot), checked by
        ``valid`` (its MACs) unless the slot is learned: whether ``commit`` of them for one
        value and number made the slot learned now (line 263), or why it was refused."""
        if acceptor >= self.q.a:
            return f"node {acceptor} is not an acceptor"
        if not self._in_window(m.slot):
            return f"slot {m.slot} outside the learner's window"
        if m.slot in self.learned:
            return False
        if (why := valid(m)) is not None:
            return why
        proofs = self.proven.setdefault(m.slot, {})
        have = proofs.get(acceptor)
        if have is None or have[0] < m.pn:
            proofs[acceptor] = (m.pn, m.value)
        pv = (m.pn, m.value)
        if sum(1 for r in proofs.values() if r == pv) >= self.q.commit:
            return self._learn(m.slot, pv)
        return False

    def on_learned(self, learner: int, m: Learned) -> bool | str:
        """A PULL answer: whether it made the slot learned now, or why it was refused."""
        if learner >= self.q.l:
            return f"node {learner} is not a learner"
        if not self._in_window(m.slot):
            return f"slot {m.slot} outside the learner's window"
        if m.slot in self.learned:
            return False
        answers = self.pulled.setdefault(m.slot, {})
        answers[learner] = (m.pn, m.value)
        pv = (m.pn, m.value)
        if sum(1 for r in answers.values() if r == pv) >= self.q.pull:
            return self._learn(m.slot, pv)
        return False

    def answer(self, slot: int) -> Learned | None:
        """The answer to a PULL for ``slot`` (line 37), if learned."""
        pv = self.learned.get(slot)
        return None if pv is None else Learned(slot, pv[0], pv[1])

    def missing(self, executed: int) -> list[int]:
        """Slots after ``executed`` not learned, up to the highest slot anyone reported."""
        seen = [*self.reports, *self.pulled, *self.proven, *self.learned, executed]
        top = max(seen, default=executed)
        return [s for s in range(max(executed, self.low) + 1, top + 1) if s not in self.learned]

    def collect(self, low: int, executed: int) -> None:
        """Forget reports at or below the stable checkpoint ``low`` and learned values that
        are both executed and at or below it."""
        if low > self.low:
            self.low = low
            self.reports = {s: r for s, r in self.reports.items() if s > low}
            self.pulled = {s: r for s, r in self.pulled.items() if s > low}
            self.proven = {s: r for s, r in self.proven.items() if s > low}
        keep = min(self.low, executed)  # (an installed state: executed moved, low did not)
        self.learned = {s: pv for s, pv in self.learned.items() if s > keep}
