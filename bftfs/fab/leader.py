"""The proposer while it leads a regency (seed 003 Fig. 6.6 lines 1-4, Fig. 6.8 101-111).

Regency 0 has nothing to recover: its leader proposes at once.  The leader of a later
regency first gathers a progress certificate: it sends QUERY with the election's proof
until ``a - f`` acceptors answered with a verified REP (line 107-108).  It starts from the
highest checkpoint a REP proves stable (``low``), and for every slot above it that some
REP reports it proposes the value the certificate is bound to, or a no-op where the
certificate leaves the slot free (lines 109-110).  It sends the REPs to every acceptor in
a NEWVIEW, so each can check that the certificate vouches for what it is asked to accept
(lines 123-125); new requests take the slots after.
"""

from __future__ import annotations

from bftfs.fab.auth import KeyLookup, verify
from bftfs.fab.certificates import check_low, parse_rep, progress_certificate
from bftfs.fab.execution import NOOP
from bftfs.fab.messages import NewView, Propose, Query, Rep, Signed
from bftfs.quorums.fab import FabQuorums


class Leader:
    """The proposals of the regency this node leads (``regency`` is -1 when none)."""

    def __init__(self, me: int, key: KeyLookup, q: FabQuorums, nodes: int, window: int) -> None:
        self.me, self.key, self.q, self.nodes, self.window = me, key, q, nodes, window
        self.regency = -1
        self.proof: tuple[Signed, ...] = ()
        self.recovering = False
        self.reps: dict[int, Rep] = {}
        self.new_view: NewView | None = None
        self.proposals: dict[int, bytes] = {}  # slot -> value, this regency
        #: slot -> learners that said they learned the proposed value: the leader resends
        #: a proposal until ``ceil((l + f + 1) / 2)`` did (Fig. 6.6 lines 4 and 8, folded
        #: into the leader: f + 1 of them are correct and answer the others' PULLs).
        self.acks: dict[int, set[int]] = {}
        self.proposed: set[bytes] = set()  # values proposed this regency
        self.next_slot = 1
        self.low = 0
        self.low_certificate: tuple[Signed, ...] = ()

    def begin(
        self, regency: int, proof: tuple[Signed, ...], low: int, low_certificate: tuple[Signed, ...]
    ) -> Query | None:
        """Lead ``regency`` from my stable checkpoint ``low`` (with its certificate); the
        QUERY to send when it must recover first."""
        self.regency, self.proof, self.low = regency, proof, low
        self.low_certificate = low_certificate
        self.reps, self.new_view = {}, None
        self.proposals, self.proposed, self.acks = {}, set(), {}
        self.next_slot = low + 1
        self.recovering = regency > 0
        return Query(regency, proof) if self.recovering else None

    def stop(self) -> None:
        self.regency, self.recovering = -1, False
        self.proposals, self.proposed, self.acks = {}, set(), {}

    def on_learned(self, learner: int, slot: int, value: bytes) -> None:
        """Learner ``learner`` says it learned ``value`` at ``slot``."""
        if self.proposals.get(slot) == value and learner < self.q.l:
            self.acks.setdefault(slot, set()).add(learner)

    def satisfied(self, slot: int) -> bool:
        """Whether enough learners acknowledged the proposal at ``slot`` to stop resending."""
        return len(self.acks.get(slot, ())) >= -(-(self.q.l + self.q.f + 1) // 2)

    def unsatisfied(self) -> list[int]:
        """Slots whose proposal too few learners have acknowledged: resend them."""
        return [s for s in self.proposals if not self.satisfied(s)]

    def query(self) -> Query | None:
        return Query(self.regency, self.proof) if self.recovering else None

    def on_rep(self, sender: int, rep: Rep) -> list[Propose] | str:
        """Count a REP; the recovery proposals once ``a - f`` are in (then a NEWVIEW is in
        ``new_view``), an empty list while waiting, or why the REP is refused."""
        if not self.recovering:
            return []
        parsed = parse_rep(rep.statement)
        if parsed is None or parsed.signer != sender or sender >= self.q.a:
            return "REP: malformed or not from its signer"
        if parsed.pn != self.regency or not verify(self.me, self.key, rep.statement, self.nodes):
            return "REP: another proposal number, or its authenticator does not verify"
        digest = check_low(self.me, self.key, self.q, self.nodes, parsed.low, rep.low_certificate)
        if isinstance(digest, str):
            return f"REP: {digest}"
        self.reps[sender] = rep
        if len(self.reps) < self.q.certificate:
            return []
        return self._recover()

    def _recover(self) -> list[Propose] | str:
        chosen = list(self.reps.values())[: self.q.certificate]
        low, certificate = self.low, self.low_certificate
        for rep in chosen:
            parsed = parse_rep(rep.statement)
            if parsed is not None and parsed.low > low:
                low, certificate = parsed.low, rep.low_certificate
        pc = progress_certificate(self.me, self.key, self.q, self.nodes, self.regency, low, chosen)
        if isinstance(pc, str):
            return pc
        self.recovering = False
        self.low = low
        self.new_view = NewView(self.regency, self.proof, low, certificate, tuple(chosen))
        out = []
        top = max(pc.slots(), default=low)
        for slot in range(low + 1, top + 1):
            value = pc.bound(slot) or NOOP
            out.append(self._propose_at(slot, value))
        self.next_slot = top + 1
        return out

    def _propose_at(self, slot: int, value: bytes) -> Propose:
        self.proposals[slot] = value
        self.proposed.add(value)
        return Propose(self.regency, slot, value)

    def propose(self, value: bytes, acceptor_low: int) -> Propose | None:
        """Propose a new value in the next slot; None while recovering, when already
        proposed, or when the window above ``acceptor_low`` is full."""
        if self.regency < 0 or self.recovering or value in self.proposed:
            return None
        if self.next_slot > acceptor_low + self.window:
            return None
        slot = self.next_slot
        self.next_slot += 1
        return self._propose_at(slot, value)

    def collect(self, low: int) -> None:
        self.proposals = {s: v for s, v in self.proposals.items() if s > low}
        self.acks = {s: a for s, a in self.acks.items() if s > low}
        self.next_slot = max(self.next_slot, low + 1)
