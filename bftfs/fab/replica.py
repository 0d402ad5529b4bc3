"""One FaB Paxos node as a pure step function: bytes in, messages out (like raft's ``Step``).

Every node of ``5f + 1`` plays the seed's three roles (L6439: "each process can play one or
more"): acceptor (:mod:`~bftfs.fab.acceptor`), proposer (:mod:`~bftfs.fab.election`,
:mod:`~bftfs.fab.leader`) and learner (:mod:`~bftfs.fab.learner`), and executes what it
learns (:mod:`~bftfs.fab.execution`) with checkpoints (:mod:`~bftfs.fab.checkpoints`);
clients' requests are taken in and held by :mod:`~bftfs.fab.intake`.  This module only
routes: it decodes, checks who may send what, hands the message to the
role, and collects what to send.

No I/O, no clock, no randomness.  Time is :meth:`Replica.tick`, called by the driver at a
fixed period: it drives the seed's retransmissions (the leader resends until it hears
back, L6569-6600; learners pull, Fig. 6.6 line 34) and the proposer's suspicion timeout
(line 12).  Who sent a message is the transport's to say (MACs on every frame,
``bftfs/net``): ``step(sender, data)`` trusts ``sender``.

With fewer than ``5f + 1`` nodes (``q.commits``: Parameterized FaB, Fig. 6.9) each ACCEPTED
carries the acceptor's statement (one message to learners and acceptors), acceptors gather
commit proofs (:mod:`~bftfs.fab.commits`) and send them to every learner, and REPs carry
them into progress certificates.

A proposer suspects the regent when a request it holds is not executed ``timeout`` ticks
after it arrived.  The seed's proposers count LEARNED notifications from
``ceil((l + f + 1) / 2)`` learners instead (Fig. 6.6 lines 6-15); with every role on each
node, the node's own learner is the witness it trusts, and the ``f + 1`` rule of the
election (:mod:`~bftfs.fab.election`) brings the others along.

A malformed message, one from a node that may not send it, or one that fails a check is
*rejected*: nothing changes, :attr:`Step.rejection` says why, and :meth:`statistics` counts
it.  No input raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bftfs.fab.acceptor import Acceptor
from bftfs.fab.auth import KeyLookup, sign
from bftfs.fab.certificates import check_low, progress_certificate
from bftfs.fab.checkpoints import Checkpoints
from bftfs.fab.commits import Commits
from bftfs.fab.durable import Image
from bftfs.fab.election import Election
from bftfs.fab.execution import Execution, Operation
from bftfs.fab.intake import Admit, Intake
from bftfs.fab.leader import Leader
from bftfs.fab.learner import Learner
from bftfs.fab.messages import (
    Accepted,
    Checkpoint,
    CommitProof,
    Fetch,
    Learned,
    MalformedMessage,
    Message,
    NewView,
    Propose,
    Pull,
    Query,
    Rep,
    Reply,
    Request,
    Signed,
    Snapshot,
    Suspect,
    decode,
)
from bftfs.fab.pacing import Resends
from bftfs.fab.statetransfer import StateTransfer
from bftfs.qu.objects import Registry
from bftfs.quorums.fab import FabQuorums

#: ``(destination, message)``: a node id, a client id (a :class:`Reply`), or None: every node.
Send = tuple[int | None, Message]


@dataclass(frozen=True)
class Settings:
    """Sizes of one cluster's FaB engine (all in slots or ticks)."""

    window: int = 64  # slots an acceptor takes above the stable checkpoint
    interval: int = 16  # a checkpoint every `interval` slots (the seed's CP_FREQ)
    timeout: int = 8  # ticks a held request may wait before the regent is suspected
    pulls_per_tick: int = 8
    #: Ticks before a retransmission (of a proposal, a PULL, a FETCH, a checkpoint or a
    #: suspicion), doubling after each one up to ``resend_cap`` (:mod:`bftfs.fab.pacing`).
    resend: int = 1
    resend_cap: int = 8

    def __post_init__(self) -> None:
        # The window only moves at a stable checkpoint: one smaller than two intervals
        # fills before the next checkpoint can become stable, and proposing stops for good
        # (PBFT's log size L >= 2K for the same reason).
        if min(self.window, self.interval, self.timeout, self.pulls_per_tick, self.resend) < 1:
            raise ValueError(f"FaB settings must be positive: {self}")
        if self.resend_cap < self.resend:
            raise ValueError(f"resend_cap {self.resend_cap} < resend {self.resend}")
        if self.window < 2 * self.interval:
            raise ValueError(
                f"window {self.window} < 2 x checkpoint interval {self.interval}: the log "
                f"would fill before a checkpoint could collect it"
            )


@dataclass(frozen=True)
class Step:
    """What one input produced: messages to send, and why it was refused (or None)."""

    sends: tuple[Send, ...]
    rejection: str | None = None


@dataclass(frozen=True)
class Statistics:
    regency: int
    executed: int
    stable: int
    rejected: int
    log_entries: int  # accepted + learned slots held: bounded by the window after GC
    installed: int  # snapshots installed to catch up past a collected log


@dataclass
class Replica:
    """One node: ``me`` in ``0 .. q.a - 1``."""

    me: int
    q: FabQuorums
    key: KeyLookup
    registry: Registry
    settings: Settings = field(default_factory=Settings)
    #: Called with ``(slot, value)`` whenever this node learns a slot (tests record these).
    on_learn: Callable[[int, bytes], None] | None = None
    #: Called with each operation this node runs and its reply, once per request, in slot
    #: order (the node pushes the lease recalls and lock wake-ups a reply names, as a Q/U
    #: node does for an update it accepts: ``node/recalls.py``).
    on_execute: Callable[[Operation, Reply], None] | None = None
    #: Why this node does not take a client's operation now (None: it does): the node's
    #: check of the times it declares against its clock (``qu/clocks.py``), outside the
    #: pure core.  Such a request is answered with a refusal (slot 0) and not held, and an
    #: acceptor does not accept it unless the regency's certificate binds it.
    admit: Admit | None = None
    #: Bytes of object states one client may be charged (``[limits]``, the same figure on
    #: every node; None: no quota), :class:`~bftfs.fab.execution.Execution`.
    quota: int | None = None

    def __post_init__(self) -> None:
        n, s = self.q.a, self.settings
        self.nodes = n
        self.acceptor = Acceptor(s.window, Commits.of(self.me, self.key, self.q, n, s.window))
        self.learner = Learner(self.q, s.window)
        self.election = Election(self.me, self.key, self.q, n)
        self.leader = Leader(self.me, self.key, self.q, n, s.window)
        self.checkpoints = Checkpoints(self.me, self.key, self.q, n, s.interval, 4 * s.window)
        self.execution = Execution(self.registry, self.quota)
        #: The client requests taken in: checked, answered or held until they execute.
        self.intake = Intake(self.me, self.key, n, self.execution, self._send)
        self.now = 0
        #: Ticks a held request may wait: doubles with each suspicion that brought no
        #: progress (eventual synchrony: some regency lasts long enough), back to
        #: ``settings.timeout`` when a slot executes.
        self.patience = self.settings.timeout
        self.rejected = 0
        pacing = (s.resend, s.resend_cap)
        self.transfer = StateTransfer(
            self.me, n, self.checkpoints, self.execution, self._send, pacing
        )
        self.resends = Resends(*pacing)  # when to send again what is not answered
        self._out: list[Send] = []
        self._begin_regency()

    # -- the driver's interface -----------------------------------------------------

    def step(self, sender: int, data: bytes) -> Step:
        """Handle one message ``sender`` sent (already authenticated by the transport)."""
        self._out = []
        try:
            m = decode(data)
        except MalformedMessage as e:
            return self._reject(f"malformed: {e}")
        why = self._dispatch(sender, m)
        if why is not None:
            return self._reject(why)
        return Step(tuple(self._out))

    def tick(self) -> Step:
        """One period of time passed: retransmit, pull, suspect."""
        self._out = []
        self.now += 1
        self._retransmit()
        held = bool(self.intake.held)
        self.transfer.pull(self.now, self.learner, held, self.settings.pulls_per_tick)
        self._maybe_suspect()
        return Step(tuple(self._out))

    def restore(self, image: Image) -> Step:
        """Continue from what an earlier run of this node kept (:mod:`bftfs.fab.durable`):
        its snapshot at the stable checkpoint, that checkpoint, what it accepted and
        learned above it, and its regency.  The slots learned above the snapshot run
        again; what this node missed it pulls or fetches as any lagging node does."""
        self._out = []
        ex = self.execution
        if image.state is not None and ex.install_image(image.state):
            self.transfer.keep(image.state.seq, image.state)
        elif image.snapshot is not None and ex.install(image.snapshot[1]):
            self.transfer.keep(ex.executed, ex.image())  # a store written before chunks
        cp = self.checkpoints
        cp.stable, cp.digest, cp.certificate = image.stable, image.digest, image.certificate
        self.acceptor.restore(image.accepted, image.proofs, cp.stable)
        self.learner.learned = dict(image.learned)
        self.learner.collect(cp.stable, self.execution.executed)
        self.leader.collect(cp.stable)
        if image.regency > 0:
            self.election.consider(image.regency, image.proof)
        self._begin_regency()
        # Leading again a regency it led before: never propose again at a slot it may
        # have proposed at (acceptors would refuse a second value at one proposal number).
        used = [*self.acceptor.accepted, *self.learner.learned, self.execution.executed]
        self.leader.next_slot = max(self.leader.next_slot, max(used) + 1)
        self._execute()
        return Step(tuple(self._out))

    def statistics(self) -> Statistics:
        entries = len(self.acceptor.accepted) + len(self.learner.learned)
        return Statistics(
            self.election.regency,
            self.execution.executed,
            self.checkpoints.stable,
            self.rejected,
            entries,
            self.transfer.installed,
        )

    # -- routing --------------------------------------------------------------------

    def _reject(self, why: str) -> Step:
        self.rejected += 1
        return Step(tuple(self._out), why)

    def _send(self, to: int | None, m: Message) -> None:
        self._out.append((to, m))

    def _dispatch(self, sender: int, m: Message) -> str | None:
        if isinstance(m, Request):
            return self._on_request(sender, m)
        if not 0 <= sender < self.nodes:
            return f"{type(m).__name__} from {sender}, not a node"
        handler: dict[type, Callable[[int, Any], str | None]] = {
            Propose: self._on_propose,
            Accepted: self._on_accepted,
            Pull: self._on_pull,
            Learned: self._on_learned,
            Suspect: self._on_suspect,
            Query: self._on_query,
            Rep: self._on_rep,
            NewView: self._on_new_view,
            Checkpoint: self._on_checkpoint,
            Fetch: self.transfer.on_fetch,
            Snapshot: self._on_snapshot,
            CommitProof: self._on_commit_proof,
        }
        h = handler.get(type(m))
        if h is None:
            return f"{type(m).__name__} is not for nodes"
        return h(sender, m)

    # -- requests and proposing -----------------------------------------------------

    def _on_request(self, sender: int, m: Request) -> str | None:
        taken = self.intake.take(sender, m, self.admit, self.now)
        if isinstance(taken, str):
            return taken
        if taken:
            self._propose_held()
        return None

    def _propose_held(self) -> None:
        for value in self.intake.values():
            p = self.leader.propose(value, self.acceptor.low)
            if p is not None:
                self._propose(p)

    def _propose(self, p: Propose) -> None:
        """Send a new proposal, and start its round and its resend clock."""
        self.resends.rounds.start(p.slot, self.now)
        self.resends.proposals.sent(p.slot, self.now, self.resends.rounds.first())
        self._send(None, p)

    # -- acceptor -------------------------------------------------------------------

    def _on_propose(self, sender: int, m: Propose) -> str | None:
        if sender != self.election.leader(m.pn):
            return f"PROPOSE for {m.pn} from {sender}, not its leader"
        learned = self.learner.learned.get(m.slot)
        if learned is not None and learned[1] == m.value:  # tell the leader it can stop
            self._send(sender, Learned(m.slot, learned[0], learned[1]))
        if not self.intake.authentic(m, self.acceptor.certificate, self.admit):
            return f"slot {m.slot}: the value is not a request its client authenticated"
        answer = self.acceptor.on_propose(self.election.regency, m)
        if isinstance(answer, str):
            return answer
        self._send(None, answer)  # to learners and acceptors alike (Fig. 6.9 lines 236-238)
        self._out.extend((None, proof) for proof in self.acceptor.again(m))
        return None

    def _from_regent(
        self, kind: str, sender: int, pn: int, proof: tuple[Signed, ...]
    ) -> str | None:
        """Why a ``kind`` message of regency ``pn`` from ``sender`` is refused (None: it
        comes from that regency's leader, whose ``proof`` moved this node to ``pn`` if it
        was behind)."""
        if sender != self.election.leader(pn):
            return f"{kind} for {pn} from {sender}, not its leader"
        moved = self.election.consider(pn, proof)
        if isinstance(moved, str):
            return moved
        if moved:
            self._begin_regency()
        if self.election.regency != pn:
            return f"{kind} for {pn} in regency {self.election.regency}"
        return None

    def _on_query(self, sender: int, m: Query) -> str | None:
        refused = self._from_regent("QUERY", sender, m.pn, m.proof)
        if refused is not None:
            return refused
        body = self.acceptor.rep(m.pn)
        statement = sign(self.me, self.key, body, self.nodes)
        self._send(sender, Rep(statement, self.checkpoints.certificate))
        return None

    def _on_new_view(self, sender: int, m: NewView) -> str | None:
        refused = self._from_regent("NEWVIEW", sender, m.pn, m.proof)
        if refused is not None:
            return refused
        digest = check_low(self.me, self.key, self.q, self.nodes, m.low, m.low_certificate)
        if isinstance(digest, str):
            return f"NEWVIEW: {digest}"
        pc = progress_certificate(self.me, self.key, self.q, self.nodes, m.pn, m.low, m.reps)
        if isinstance(pc, str):
            return f"NEWVIEW: {pc}"
        self.acceptor.adopt_certificate(pc)
        if m.low > self.checkpoints.stable:
            self.checkpoints.stable, self.checkpoints.digest = m.low, digest
            self.checkpoints.certificate = m.low_certificate
            self._collect()
        return None

    # -- learner and execution ------------------------------------------------------

    def _on_accepted(self, sender: int, m: Accepted) -> str | None:
        why = self._took(m, self.learner.on_accepted(sender, m))  # Fig. 6.9 lines 254-258
        proof = None if why else self.acceptor.on_accepted(sender, m, self.election.regency)
        if isinstance(proof, CommitProof):
            self._send(None, proof)
            return None
        return why or proof

    def _on_commit_proof(self, sender: int, m: CommitProof) -> str | None:
        if (commits := self.acceptor.commits) is None:  # Fig. 6.9 lines 260-265
            return "COMMITPROOF in plain FaB"
        return self._took(m, self.learner.on_commit_proof(sender, m, commits.valid))

    def _took(self, m: Accepted | CommitProof | Learned, learned: bool | str) -> str | None:
        """Why the learner refused ``m`` (``learned``), or None; learned here if it did."""
        if isinstance(learned, str):
            return learned
        if learned:
            self._learned(m.slot, m.value)
        return None

    def _on_pull(self, sender: int, m: Pull) -> str | None:
        answer = self.learner.answer(m.slot)
        if answer is not None:
            self._send(sender, answer)
        elif m.slot <= self.checkpoints.stable:  # collected: point the puller at the state
            for statement in self.checkpoints.certificate:
                self._send(sender, Checkpoint(statement))
        return None

    def _on_learned(self, sender: int, m: Learned) -> str | None:
        self.leader.on_learned(sender, m.slot, m.value)
        if self.leader.satisfied(m.slot):
            self.resends.rounds.done(m.slot, self.now)
        return self._took(m, self.learner.on_learned(sender, m))

    def _learned(self, slot: int, value: bytes) -> None:
        if self.on_learn is not None:
            self.on_learn(slot, value)
        pn = self.learner.learned[slot][0]
        self._send(self.election.leader(), Learned(slot, pn, value))  # LEARNED, line 30
        self._execute()

    def _execute(self) -> None:
        ex = self.execution
        while (pv := self.learner.learned.get(ex.executed + 1)) is not None:
            self.patience = self.settings.timeout
            reply = ex.apply(ex.executed + 1, pv[1])
            if reply is not None and ex.ran is not None and self.on_execute is not None:
                self.on_execute(ex.ran, reply)
            if reply is not None:
                self.intake.executed(reply)
                self._send(reply.client, reply)
            if self.checkpoints.due(ex.executed):
                image = ex.image()  # re-encodes only what changed since the last one
                self.transfer.keep(ex.executed, image)
                statement = self.checkpoints.state(ex.executed, image.root)
                self._send(None, Checkpoint(statement))
                if self.checkpoints.stable == ex.executed:
                    self._collect()

    # -- checkpoints and state transfer ---------------------------------------------

    def _on_checkpoint(self, sender: int, m: Checkpoint) -> str | None:
        # Statements may be forwarded (a certificate sent to a lagging puller): each is
        # checked on its own authenticator, whoever relays it.
        stable = self.checkpoints.on_checkpoint(m.statement)
        if isinstance(stable, str):
            return stable
        if stable:
            self._collect()
        return None

    def _collect(self) -> None:
        """Garbage-collect every role's log at or below the stable checkpoint."""
        low = self.checkpoints.stable
        self.acceptor.collect(low)
        self.learner.collect(low, self.execution.executed)
        self.leader.collect(low)
        self.transfer.collect(low)

    def _on_snapshot(self, sender: int, m: Snapshot) -> str | None:
        installed = self.transfer.on_snapshot(sender, m)
        if isinstance(installed, str):
            return installed
        if installed:
            self.learner.collect(m.seq, m.seq)
            self._execute()
        return None

    # -- election -------------------------------------------------------------------

    def _on_suspect(self, sender: int, m: Suspect) -> str | None:
        if m.statement.signer != sender:
            return "SUSPECT: not the sender's own statement"
        result = self.election.on_suspect(m.statement)
        if isinstance(result, str):
            return result
        moved, joined = result
        if joined is not None:
            self._send(None, Suspect(joined))
        if moved:
            self._begin_regency()
        return None

    def _begin_regency(self) -> None:
        """A new regency started here: forget the old certificate, restart the timers,
        and lead it if it is mine."""
        self.acceptor.certificate = None
        self.intake.restart(self.now)
        if self.election.leader() != self.me:
            self.leader.stop()
            return
        cp = self.checkpoints
        query = self.leader.begin(
            self.election.regency, self.election.proof, cp.stable, cp.certificate
        )
        if query is not None:
            self._send(None, query)
        else:
            self._propose_held()

    def _on_rep(self, sender: int, m: Rep) -> str | None:
        recovering = self.leader.recovering
        proposals = self.leader.on_rep(sender, m)
        if isinstance(proposals, str):
            return proposals
        new_view = self.leader.new_view
        if recovering and not self.leader.recovering and new_view is not None:
            self._send(None, new_view)  # the certificate is complete: even with no slot
            # to recover, acceptors need it to change what they accepted beyond it
            for p in proposals:
                self._propose(p)
            self._propose_held()
        return None

    def _maybe_suspect(self) -> None:
        if not self.intake.late(self.now, self.patience):
            return
        self.intake.restart(self.now)
        self.patience = min(2 * self.patience, 64 * self.settings.timeout)
        statement = self.election.suspect(self.election.regency)
        if statement is not None:
            self._send(None, Suspect(statement))
            result = self.election.on_suspect(statement)
            if not isinstance(result, str) and result[0]:
                self._begin_regency()

    # -- retransmission -------------------------------------------------------------

    def _retransmit(self) -> None:
        leader, again, now = self.leader, self.resends, self.now
        if leader.recovering and (query := leader.query()) is not None:
            self._send(None, query)
        elif leader.regency >= 0:
            again.rounds.keep(leader.proposals)
            pending = again.proposals.due(leader.unsatisfied(), now)
            if pending and leader.new_view is not None:
                self._send(None, leader.new_view)
            for s in pending:
                self._send(None, Propose(leader.regency, s, leader.proposals[s]))
            self._propose_held()
        mine, regency = self.election.suspected, self.election.regency
        suspecting = self.intake.held and self.election.latest.get(self.me) == (regency, mine)
        if again.suspicions.due([regency] if suspecting and mine else [], now) and mine:
            self._send(None, Suspect(mine))
        cp = self.checkpoints.mine
        if again.checkpoints.due([cp.body] if cp else [], now) and cp:
            self._send(None, Checkpoint(cp))
        self.transfer.maybe_fetch(now)
