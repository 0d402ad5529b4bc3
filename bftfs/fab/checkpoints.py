"""Stable checkpoints and the log they let go of (seed 003 L5896-5933).

After executing a slot that is a multiple of ``interval``, a node states
``CHECKPOINT(seq, digest)`` of its execution state to every node.  ``f + 1`` matching
statements make the checkpoint stable (the seed's ``g + 1`` with ``g = f``, L5923):
one of them is correct, so every slot up to ``seq`` was learned (hence chosen), and the
digest is the state a correct node reached.  The statements themselves are the
certificate: a node forwards them in a REP and a new leader in its NEWVIEW, so others can
check the ``low`` the leader starts from (:func:`bftfs.fab.certificates.check_low`).

Only checkpoints above the stable one and within ``horizon`` of it are kept, one statement
per node each, so a Byzantine node cannot make a correct one store unbounded votes.
"""

from __future__ import annotations

from bftfs.fab.auth import KeyLookup, sign, verify
from bftfs.fab.certificates import checkpoint_body, parse_checkpoint
from bftfs.fab.messages import Signed
from bftfs.quorums.fab import FabQuorums


class Checkpoints:
    """Votes for checkpoints and the latest stable one with its certificate."""

    def __init__(
        self, me: int, key: KeyLookup, q: FabQuorums, nodes: int, interval: int, horizon: int
    ) -> None:
        self.me, self.key, self.q, self.nodes = me, key, q, nodes
        self.interval, self.horizon = interval, horizon
        self.stable = 0
        self.digest = b""
        self.certificate: tuple[Signed, ...] = ()
        self.mine: Signed | None = None  # my latest statement, resent until stable
        self.votes: dict[int, dict[int, tuple[bytes, Signed]]] = {}

    def due(self, executed: int) -> bool:
        return executed > 0 and executed % self.interval == 0

    def state(self, seq: int, digest: bytes) -> Signed:
        """My statement for the state after ``seq``; recorded as my own vote."""
        statement = sign(self.me, self.key, checkpoint_body(seq, digest), self.nodes)
        self.mine = statement
        self._vote(self.me, seq, digest, statement)  # may already make it stable
        return statement

    def on_checkpoint(self, statement: Signed) -> bool | str:
        """Record a statement: whether it made a new checkpoint stable, or why refused."""
        parsed = parse_checkpoint(statement.body)
        if parsed is None or not 0 <= statement.signer < self.nodes:
            return "not a checkpoint statement"
        if not verify(self.me, self.key, statement, self.nodes):
            return f"checkpoint by {statement.signer}: authenticator does not verify"
        seq, digest = parsed
        if seq <= self.stable:
            return False
        if seq > self.stable + self.horizon or seq % self.interval:
            return f"checkpoint {seq} is not a checkpoint slot within the horizon"
        return self._vote(statement.signer, seq, digest, statement)

    def _vote(self, signer: int, seq: int, digest: bytes, statement: Signed) -> bool:
        self.votes.setdefault(seq, {})[signer] = (digest, statement)
        matching = [s for d, s in self.votes[seq].values() if d == digest]
        if len(matching) < self.q.f + 1 or seq <= self.stable:
            return False
        self.stable, self.digest, self.certificate = seq, digest, tuple(matching)
        self.votes = {s: v for s, v in self.votes.items() if s > seq}
        if self.mine is not None and (parse_checkpoint(self.mine.body) or (0, b""))[0] <= seq:
            self.mine = None
        return True
