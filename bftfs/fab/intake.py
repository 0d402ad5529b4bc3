"""The client requests a FaB node takes in (:class:`Intake`): each checked (its client's
authenticator, its session, the node's clock admission), answered again when it is a
retransmission, refused, or held until it executes; and which values an acceptor may take
as a client's request.

A held request is its stream's latest not yet executed; a client holds at most
``STREAMS`` (its further streams push out its own oldest, no other's), so one key cannot
grow a node's memory.  The replica (:mod:`bftfs.fab.replica`) proposes what is held when it
leads, and suspects the regent when a held request waits too long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bftfs.fab.auth import KeyLookup, verify_any
from bftfs.fab.certificates import ProgressCertificate
from bftfs.fab.execution import NOOP, Execution, Operation, parse_request
from bftfs.fab.messages import Message, Propose, Reply, Request
from bftfs.fab.sessions import AGAIN, EXPIRED, OLD, RUN, STREAMS

#: Why a node does not take a client's operation now (None: it does): ``Replica.admit``.
Admit = Callable[[Operation], str | None]


@dataclass
class Held:
    """A held request: its id, the request as proposed, and the tick its wait began."""

    rid: int
    op: bytes
    since: int


class Intake:
    """One node's client requests: checked, answered or held (module docstring)."""

    def __init__(
        self,
        me: int,
        key: KeyLookup,
        nodes: int,
        execution: Execution,
        send: Callable[[int | None, Message], None],
    ) -> None:
        self.me = me
        self.key = key
        self.nodes = nodes
        self.execution = execution
        self._send = send
        #: (client, stream) -> its latest request not yet executed.
        self.held: dict[tuple[int, int], Held] = {}

    def take(self, sender: int, m: Request, admit: Admit | None, now: int) -> str | bool:
        """Take the request ``m`` a client sent: why it is rejected, True when it is held
        now (or a later one of its stream is), False when it was answered or is old."""
        if 0 <= sender < self.nodes:
            return f"REQUEST from node {sender}: requests come from clients"
        request = parse_request(m.value)
        if request is None:
            return "request: not an operation"
        op, statement = request
        if op.client != sender:
            return f"request for client {op.client} sent by {sender}"
        if not verify_any(self.me, self.key, statement, self.nodes):
            return f"request of client {op.client}: authenticator does not verify"
        sessions = self.execution.sessions
        verdict, last = sessions.verdict(op.client, op.stream, op.rid)
        if verdict == AGAIN and last is not None:  # a retransmission: the reply again
            rid, slot, ok, result = last
            self._send(op.client, Reply(op.client, rid, slot, ok, result, op.stream))
            return False
        if verdict == OLD:
            return False
        if verdict == EXPIRED:  # may have run, is never run: refused, not held (a leader
            # does not propose a value twice, so a held copy would wait for a view change)
            bar = sessions.bar(op.client, op.stream)
            self._send(op.client, Reply(op.client, op.rid, 0, False, [EXPIRED, bar], op.stream))
            return False
        why = admit(op) if admit is not None else None
        if why is not None:  # refused alike by every correct node: f + 1 make the answer
            self._send(op.client, Reply(op.client, op.rid, 0, False, why, op.stream))
            return f"request of client {op.client}: {why}"
        self._hold(op, m.value, now)
        return True

    def _hold(self, op: Operation, value: bytes, now: int) -> None:
        """Hold the latest request of ``op``'s stream; a client holds at most ``STREAMS``
        (its oldest held goes), so one key's streams cannot grow this node's memory."""
        key = (op.client, op.stream)
        held = self.held.get(key)
        if held is not None and held.rid >= op.rid:
            return
        mine = [k for k in self.held if k[0] == op.client and k != key]
        if held is None and len(mine) >= STREAMS:
            del self.held[min(mine, key=lambda k: self.held[k].since)]
        self.held[key] = Held(op.rid, value, now)

    def authentic(
        self, m: Propose, certificate: ProgressCertificate | None, admit: Admit | None
    ) -> bool:
        """Whether an acceptor may take ``m.value`` as a client's: the no-op, a value the
        regency's progress ``certificate`` is bound to (it may have been chosen, so it must
        be taken whoever wrote it), or a request whose client's MAC for me verifies and
        that this node admits (its clock check)."""
        if m.value == NOOP:
            return True
        if (
            certificate is not None
            and certificate.pn == m.pn
            and certificate.bound(m.slot) == m.value
        ):
            return True
        request = parse_request(m.value)
        if request is None or not verify_any(self.me, self.key, request[1], self.nodes):
            return False
        return admit is None or admit(request[0]) is None

    def values(self) -> Iterator[bytes]:
        """The held requests, as proposed (a copy: proposing may change what is held)."""
        return iter([h.op for h in self.held.values()])

    def executed(self, reply: Reply) -> None:
        """``reply``'s request ran: no longer held (unless a later one of its stream is)."""
        key = (reply.client, reply.stream)
        held = self.held.get(key)
        if held is not None and held.rid <= reply.rid:
            del self.held[key]

    def restart(self, now: int) -> None:
        """Every held request's wait begins again at ``now`` (a new regency, a suspicion)."""
        for held in self.held.values():
            held.since = now

    def late(self, now: int, patience: int) -> bool:
        """Whether a held request waited ``patience`` ticks; those that ran, or expired,
        since they came (this node was behind) are dropped first."""
        sessions = self.execution.sessions
        for key in [k for k, h in self.held.items() if sessions.verdict(*k, h.rid)[0] != RUN]:
            del self.held[key]
        return any(now - h.since >= patience for h in self.held.values())
