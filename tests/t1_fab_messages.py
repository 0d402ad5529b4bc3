"""FaB messages and rejections: every kind round-trips, hostile bytes raise only
MalformedMessage, and a replica answers malformed, misrouted and forged messages with a
rejection that names them, changing nothing (bftfs/fab/messages.py, replica.py)."""

from __future__ import annotations

import random

import pytest
from fab_sim import CLIENT_BASE, keys_for

from bftfs.fab.auth import sign, verify
from bftfs.fab.certificates import (
    accepted_body,
    checkpoint_body,
    parse_rep,
    rep_body,
    suspect_body,
)
from bftfs.fab.client import request
from bftfs.fab.execution import NOOP, operation, request_value
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
    encode,
)
from bftfs.fab.replica import Replica
from bftfs.qu.canon import canonical
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q = FabQuorums.standard(1)
N = Q.a


def _signed(signer: int, body: bytes) -> Signed:
    return sign(signer, keys_for(signer), body, N)


EXAMPLES: list[Message] = [
    Request(request(CLIENT_BASE, keys_for(CLIENT_BASE), N, 1, "counter.increment", [1], 1)),
    Propose(0, 1, b"v"),
    Accepted(3, 7, b""),
    Pull(9),
    Learned(2, 1, NOOP),
    Suspect(_signed(2, suspect_body(0))),
    Query(1, (_signed(1, suspect_body(0)),)),
    Rep(_signed(3, rep_body(1, 0, {1: b"x"})), (_signed(3, checkpoint_body(16, b"d")),)),
    NewView(1, (), 0, (), (Rep(_signed(3, rep_body(1, 0, {})), ()),)),
    Checkpoint(_signed(4, checkpoint_body(16, b"d" * 32))),
    Reply(CLIENT_BASE, 1, 1, True, {"a": [1, b"2"]}, 2**63 - 1),
    Fetch(16),
    Fetch(16, 257),
    Snapshot(16, 0, b"manifest"),
    Snapshot(16, 3, b"piece"),
    Accepted(3, 7, b"v", _signed(2, accepted_body(3, 7, b"v"))),
    CommitProof(7, 3, b"v", tuple(_signed(j, accepted_body(3, 7, b"v")) for j in range(3))),
]


def test_a_rep_carries_its_commit_proofs() -> None:
    """Parameterized FaB: the REP's proofs parse back; a REP without them is plain FaB's."""
    proof = CommitProof(2, 1, b"v", (_signed(0, accepted_body(1, 2, b"v")),))
    parsed = parse_rep(_signed(3, rep_body(1, 0, {2: b"v"}, {2: proof})))
    assert parsed is not None and parsed.proofs == {2: proof}
    plain = parse_rep(_signed(3, rep_body(1, 0, {2: b"v"})))
    assert plain is not None and plain.proofs == {}
    assert rep_body(1, 0, {2: b"v"}) != rep_body(1, 0, {2: b"v"}, {})
    assert parse_rep(_signed(3, rep_body(1, 2, {}, {2: proof}))) is None  # not above low


@pytest.mark.parametrize("m", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips(m: Message) -> None:
    assert decode(encode(m)) == m


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        canonical(7),
        canonical([1, 2, 0, 1, b"v"]),  # another version
        canonical([2, 99]),  # unknown kind
        canonical([2, 2, 0, 1]),  # a field short
        canonical([2, 2, -1, 1, b"v"]),  # negative proposal number
        canonical([2, 2, 0, True, b"v"]),  # a boolean is not a slot
        canonical([2, 2, 0, 1, "v"]),  # a value is bytes
        canonical([2, 6, [0, b"b"]]),  # a statement of two fields
        canonical([2, 11, 1, 1, 1, 1, None, 0]),  # ok must be a boolean
        canonical([2, 11, 1, 1, 1, True, None]),  # a reply without its stream
        canonical([2, 11, 1, 1, 1, True, None, -1]),  # a negative stream
        canonical([2, 11, 1, 1, 1, True, None, False]),  # a boolean is not a stream
        canonical([2, 11, 1, 1, 1, True, None, 2**64 - 1]),  # beyond MAX_INT
    ],
)
def test_malformed_bytes_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(raw)


def test_random_mutations_raise_only_malformed() -> None:
    """Seeded fuzzing: flipping, cutting and splicing valid encodings never raises anything
    but MalformedMessage."""
    rng = random.Random(39)
    encodings = [encode(m) for m in EXAMPLES]
    refused = 0
    for _ in range(3000):
        data = bytearray(rng.choice(encodings))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)) :]
            else:
                data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
        try:
            decode(bytes(data))
        except MalformedMessage:
            refused += 1
    assert refused > 1000  # most mutations break the message, and each was refused cleanly


def _replica(me: int) -> Replica:
    return Replica(me, Q, keys_for(me), registry())


def test_a_replica_rejects_garbage_and_changes_nothing() -> None:
    r = _replica(1)
    before = r.statistics()
    rng = random.Random(7)
    for _ in range(500):
        step = r.step(rng.randrange(N), rng.randbytes(rng.randint(0, 40)))
        assert step.rejection is not None and step.sends == ()
    after = r.statistics()
    assert after.rejected == before.rejected + 500
    assert (after.regency, after.executed, after.log_entries) == (0, 0, 0)


def _value(rid: int = 1, client: int = CLIENT_BASE, stream: int = 0) -> bytes:
    return request(client, keys_for(client), N, rid, "counter.increment", [1], 1, stream)


def test_a_proposal_from_a_node_that_does_not_lead_is_rejected() -> None:
    r = _replica(2)
    step = r.step(3, encode(Propose(0, 1, _value())))
    assert step.rejection is not None and "not its leader" in step.rejection
    assert r.acceptor.accepted == {}
    assert r.step(0, encode(Propose(0, 1, _value()))).rejection is None  # 0 leads regency 0
    assert r.acceptor.accepted == {1: (0, _value())}


def test_an_equivocating_second_proposal_is_rejected() -> None:
    r = _replica(2)
    r.step(0, encode(Propose(0, 1, _value(1))))
    step = r.step(0, encode(Propose(0, 1, _value(2))))
    assert step.rejection is not None and "equivocation" in step.rejection
    assert r.acceptor.accepted[1] == (0, _value(1))


def test_a_leader_cannot_make_up_a_clients_request() -> None:
    """The leader knows its own keys, not the key client and acceptor share: a request it
    writes for the client fails the acceptor's entry of the authenticator."""
    op = operation(CLIENT_BASE, 1, "counter.increment", [1], 1000)
    made_up = request_value(op, sign(0, keys_for(0), op, N).macs)  # MACs under 0's keys
    r = _replica(2)
    step = r.step(0, encode(Propose(0, 1, made_up)))
    assert step.rejection is not None and "authenticated" in step.rejection
    assert r.acceptor.accepted == {}
    assert r.step(0, encode(Propose(0, 1, NOOP))).rejection is None


def test_a_request_must_come_from_its_client() -> None:
    r = _replica(2)
    step = r.step(CLIENT_BASE + 1, encode(Request(_value())))
    assert step.rejection is not None and "sent by" in step.rejection
    step = r.step(0, encode(Request(_value(client=0))))
    assert step.rejection is not None and "come from clients" in step.rejection
    op = operation(CLIENT_BASE, 1, "counter.increment", [1], 1)
    forged = request_value(op, [b"\0" * 16] * N)
    step = r.step(CLIENT_BASE, encode(Request(forged)))
    assert step.rejection is not None and "authenticator" in step.rejection
    assert r.intake.held == {}
    assert r.step(CLIENT_BASE, encode(Request(_value()))).rejection is None
    assert set(r.intake.held) == {(CLIENT_BASE, 0)}


def test_a_request_the_node_does_not_admit_is_refused_and_never_accepted() -> None:
    """A node's clock check (``Replica.admit``, ``node/fab_server.py``): the request is
    answered with a refusal and not held, and a Byzantine leader's proposal of it is not
    accepted (it was accepted before the check); a certificate-free no-op still is."""
    r = _replica(2)
    r.admit = lambda op: "ahead" if op.rid == 1 else None
    step = r.step(CLIENT_BASE, encode(Request(_value())))
    assert step.rejection is not None and "ahead" in step.rejection and r.intake.held == {}
    assert step.sends == ((CLIENT_BASE, Reply(CLIENT_BASE, 1, 0, False, "ahead")),)
    step = r.step(0, encode(Propose(0, 1, _value())))
    assert step.rejection is not None and r.acceptor.accepted == {}
    assert r.step(0, encode(Propose(0, 1, _value(rid=2)))).rejection is None
    assert r.acceptor.accepted[1] == (0, _value(rid=2))


def test_a_message_from_outside_the_cluster_is_rejected() -> None:
    r = _replica(2)
    step = r.step(CLIENT_BASE, encode(Propose(0, 1, b"v")))
    assert step.rejection is not None and "not a node" in step.rejection


def test_a_forged_suspicion_does_not_count() -> None:
    """Node 0 cannot speak for node 3: its MAC entries for others do not verify."""
    forged = sign(0, keys_for(0), suspect_body(0), N)
    forged = Signed(3, forged.body, forged.macs)
    assert not verify(2, keys_for(2), forged, N)
    r = _replica(2)
    step = r.step(3, encode(Suspect(forged)))
    assert step.rejection is not None and "does not verify" in step.rejection
    assert r.election.suspicions == {}


def test_a_query_without_an_election_proof_is_rejected() -> None:
    r = _replica(2)
    step = r.step(1, encode(Query(1, ())))
    assert step.rejection is not None and "election proof" in step.rejection
    assert r.election.regency == 0 and step.sends == ()


def _proof(regency: int) -> tuple[Signed, ...]:
    return tuple(_signed(i, suspect_body(regency - 1)) for i in range(Q.election))


def test_a_new_view_with_forged_reps_is_rejected() -> None:
    """A Byzantine new leader (node 1) cannot make up the acceptors' REPs: entries it
    writes for others do not verify, so no progress certificate forms and the acceptor
    keeps what it accepted."""
    r = _replica(2)
    r.step(0, encode(Propose(0, 1, _value())))
    made_up = [
        Rep(Signed(i, rep_body(1, 0, {}), sign(1, keys_for(1), rep_body(1, 0, {}), N).macs), ())
        for i in range(N)
    ]
    step = r.step(1, encode(NewView(1, _proof(1), 0, (), tuple(made_up))))
    assert step.rejection is not None and "progress certificate" in step.rejection
    step = r.step(1, encode(Propose(1, 1, NOOP)))
    assert step.rejection is not None and "certificate" in step.rejection
    assert r.acceptor.accepted[1] == (0, _value())


def test_a_new_view_with_a_forged_checkpoint_is_rejected() -> None:
    r = _replica(2)
    reps = tuple(Rep(_signed(i, rep_body(1, 0, {})), ()) for i in range(Q.certificate))
    lone = (_signed(1, checkpoint_body(16, b"d")),)  # the leader alone: not f + 1
    step = r.step(1, encode(NewView(1, _proof(1), 16, lone, reps)))
    assert step.rejection is not None and "checkpoint certificate" in step.rejection
    assert r.checkpoints.stable == 0


def test_a_snapshot_that_does_not_match_the_certificate_is_rejected() -> None:
    r = _replica(2)
    digest = b"d" * 32
    for i in (0, 1):
        r.step(i, encode(Checkpoint(_signed(i, checkpoint_body(16, digest)))))
    assert r.checkpoints.stable == 16
    unasked = r.step(3, encode(Snapshot(16, 0, canonical([16, {}, {}]))))
    assert unasked.rejection is None and r.transfer.fetching is None  # not asked: not kept
    while not any(isinstance(m, Fetch) for _, m in r.tick().sends):
        pass  # behind the stable checkpoint for a while: it asks for the manifest
    step = r.step(3, encode(Snapshot(16, 0, canonical([16, {}, {}]))))
    assert step.rejection is not None and "certified digest" in step.rejection
    assert r.execution.executed == 0


def test_a_byzantine_proposer_cannot_grow_the_election_state() -> None:
    """Suspicions of ever larger regencies from one proposer keep one entry, and f of them
    never move the regency."""
    r = _replica(2)
    for regency in range(1000):
        assert r.step(3, encode(Suspect(_signed(3, suspect_body(regency))))).rejection is None
    assert len(r.election.latest) == 1 and r.election.regency == 0


#: Requests on streams other than 0 (one mount's, another's, the largest), made once.
_STREAMED = [_value(rid, stream=s) for rid, s in ((1, 1), (2, 2**62), (3, 2**63 - 1))]


def _random_message(rng: random.Random) -> Message:
    """A well-formed message with hostile contents: random numbers, bodies and MACs, or
    pieces of real statements in the wrong places."""

    def nat() -> int:
        return rng.choice([0, 1, 2, 3, 16, 17, 64, 2**62, rng.randrange(100)])

    def blob() -> bytes:
        return rng.choice(
            [
                b"",
                NOOP,
                _value(),
                rng.choice(_STREAMED),  # requests of other mounts' streams
                rng.randbytes(rng.randint(0, 40)),
                canonical(["rep", nat(), nat(), [[nat(), b"x"]]]),
                canonical(["suspect", nat()]),
                canonical(["checkpoint", nat(), b"d"]),
            ]
        )

    def signed() -> Signed:
        if rng.random() < 0.5:
            return _signed(rng.randrange(N), blob())
        macs = tuple(rng.randbytes(16) for _ in range(rng.choice([0, N, N + 1])))
        return Signed(rng.choice([0, 5, N, 10**6]), blob(), macs)

    def signeds() -> tuple[Signed, ...]:
        return tuple(signed() for _ in range(rng.randint(0, 7)))

    def rep() -> Rep:
        return Rep(signed(), signeds())

    return rng.choice(
        [
            lambda: Request(blob()),
            lambda: Propose(nat(), nat(), blob()),
            lambda: Accepted(nat(), nat(), blob()),
            lambda: Pull(nat()),
            lambda: Learned(nat(), nat(), blob()),
            lambda: Suspect(signed()),
            lambda: Query(nat(), signeds()),
            lambda: rep(),
            lambda: NewView(nat(), signeds(), nat(), signeds(), tuple(rep() for _ in range(6))),
            lambda: Checkpoint(signed()),
            lambda: Reply(nat(), nat(), nat(), rng.random() < 0.5, blob(), nat()),
            lambda: Fetch(nat(), nat()),
            lambda: Snapshot(nat(), nat(), blob()),
        ]
    )()


def test_well_formed_hostile_messages_never_crash_a_replica() -> None:
    """Seeded: 5000 messages of every kind with random contents, from random senders, into
    replicas with some history; each is handled or rejected, none raises."""
    rng = random.Random(3939)
    replicas = [_replica(i) for i in range(N)]
    for r in replicas:  # some state to trip over: an accepted slot and a learned one
        r.step(0, encode(Propose(0, 1, _value())))
    for _ in range(5000):
        r = rng.choice(replicas)
        sender = rng.choice([0, 1, 3, 5, CLIENT_BASE, 10**6])
        step = r.step(sender, encode(_random_message(rng)))
        assert step.rejection is None or isinstance(step.rejection, str)
    assert sum(r.statistics().rejected for r in replicas) > 1000
