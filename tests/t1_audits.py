"""Audits with proofs of storage, the pure core (``bftfs/node/auditcore.py``), the
``rational`` profile's cheap answers (``bftfs/testing/byzantine/rational.py``) and the
contributions table (``bftfs/node/contributions.py``), over in-memory stores: challenge,
answer, verdict, deterministic (seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bftfs import erasure
from bftfs.cli import contribs
from bftfs.kv import MemoryKV
from bftfs.local import NodeStatus
from bftfs.node import contributions
from bftfs.node.auditcore import (
    Answer,
    Challenge,
    Ledger,
    Reservoir,
    Verdict,
    answer_step,
    candidates_page,
    cross_checksum_step,
    verdict,
)
from bftfs.policy import PolicyError, RetentionPolicy, VerificationPolicy
from bftfs.rw import collect, replica
from bftfs.rw.messages import MessageError, WriteRequest
from bftfs.rw.timestamp import Timestamp, make_timestamp
from bftfs.testing.byzantine import rational

N, M = 6, 3
AUDITOR, PEER = 0, 2


def store(kv: MemoryKV, node: int, block: int, data: bytes, time: int) -> Timestamp:
    """Store node ``node``'s fragment of ``data`` as version ``time`` of ``block``."""
    enc = erasure.encode(data, M, N)
    ts = make_timestamp(time, 70000, enc.verifier)
    req = WriteRequest(block, ts, enc.cross_checksum, enc.fragments[node])
    assert replica.store_write(kv, req).new
    return ts


def verified(kv: MemoryKV, block: int, ts: Timestamp) -> None:
    collect.verified_step(
        kv, block, mark=ts, flag=ts, poisonous=(), now_ns=ts.time, retention=RetentionPolicy()
    )


def pair(
    block: int = 7, data: bytes = b"x" * 5000, time: int = 100
) -> tuple[MemoryKV, MemoryKV, Timestamp]:
    """An auditor's and a peer's store, both holding their fragments of one version."""
    auditor, peer = MemoryKV(), MemoryKV()
    ts = store(auditor, AUDITOR, block, data, time)
    assert store(peer, PEER, block, data, time) == ts
    return auditor, peer, ts


def judge(auditor: MemoryKV, challenge: Challenge, answer: Answer | None) -> Verdict:
    cc = cross_checksum_step(auditor, challenge.block, challenge.ts)
    return verdict(cc, PEER, answer)


def test_a_node_holding_its_fragment_passes() -> None:
    auditor, peer, ts = pair()
    challenge = Challenge(7, ts)
    answer = answer_step(peer, Challenge.from_wire(challenge.to_wire()))
    assert answer.fragment is not None and len(answer.fragment) > 0
    assert judge(auditor, challenge, Answer.from_wire(answer.to_wire())) is Verdict.PASSED


def test_stale_made_up_and_other_nodes_fragments_fail() -> None:
    auditor, peer, old = pair(data=b"old" * 2000, time=100)
    new = store(auditor, AUDITOR, 7, b"new" * 2000, 200)
    store(peer, PEER, 7, b"new" * 2000, 200)
    challenge = Challenge(7, new)
    stale = answer_step(peer, Challenge(7, old))
    assert judge(auditor, challenge, stale) is Verdict.FAILED
    size = len(answer_step(peer, challenge).fragment or b"")
    assert judge(auditor, challenge, Answer(fragment=bytes(size))) is Verdict.FAILED
    # The auditor's own fragment of the same version is not the peer's.
    own = answer_step(auditor, challenge)
    assert judge(auditor, challenge, own) is Verdict.FAILED
    # A reply of no known shape is judged as wrong bytes.
    assert judge(auditor, challenge, Answer.from_wire({"hello": 1})) is Verdict.FAILED
    assert judge(auditor, challenge, answer_step(peer, challenge)) is Verdict.PASSED


def test_missing_late_busy_and_a_moved_view() -> None:
    auditor, _, ts = pair()
    challenge = Challenge(7, ts)
    empty = MemoryKV()
    assert answer_step(empty, challenge) == Answer(missing=True)
    assert judge(auditor, challenge, answer_step(empty, challenge)) is Verdict.MISSING
    assert judge(auditor, challenge, None) is Verdict.LATE
    assert judge(auditor, challenge, Answer.from_wire({"busy": True})) is Verdict.VOID
    # A newer version reached the auditor meanwhile: the challenged one is not its latest.
    store(auditor, AUDITOR, 7, b"newer", 300)
    assert judge(auditor, challenge, Answer(fragment=b"whatever")) is Verdict.VOID


def test_a_version_said_missing_is_owed_and_fails_if_missing_again() -> None:
    ledger = Ledger()
    ts = make_timestamp(5, 1, bytes(32))
    c = Challenge(9, ts)
    ledger.record(PEER, c, Verdict.MISSING, now_ns=1)
    assert ledger.owed(PEER) == [c]
    assert ledger.peers[PEER].counts["missing"] == 1
    ledger.record(PEER, c, Verdict.MISSING, now_ns=2)
    assert ledger.owed(PEER) == []
    assert ledger.peers[PEER].counts["failed"] == 1
    assert ledger.peers[PEER].last_failed_ns == 2
    # Fetched meanwhile: the owed version passes and is owed no more.
    ledger.record(PEER, c, Verdict.MISSING, now_ns=3)
    ledger.record(PEER, c, Verdict.PASSED, now_ns=4)
    assert ledger.owed(PEER) == [] and ledger.peers[PEER].counts["passed"] == 1
    assert ledger.to_json()[str(PEER)]["failed"] == 1


def test_candidates_are_the_verified_versions_page_by_page() -> None:
    kv = MemoryKV()
    stamps = {b: store(kv, AUDITOR, b, bytes([b]) * 100, 100 + b) for b in range(1, 8)}
    for b in (1, 2, 4, 6, 7):
        verified(kv, b, stamps[b])
    store(kv, AUDITOR, 7, b"unverified newer", 500)  # 7's latest is not verified...
    seen: list[tuple[int, Timestamp]] = []
    after = None
    pages = 0
    while True:
        page, after = candidates_page(kv, after, 2)
        seen += page
        pages += 1
        if after is None:
            break
    assert seen == [(b, stamps[b]) for b in (1, 2, 4, 6, 7)]
    assert pages == 3
    # ... so a challenge of its verified version is void: the auditor's view moved.
    assert cross_checksum_step(kv, 7, stamps[7]) is None
    assert cross_checksum_step(kv, 6, stamps[6]) is not None


def test_the_reservoir_is_uniform_and_replayable() -> None:
    def sample(seed: int) -> list[int]:
        pool: Reservoir[int] = Reservoir(4, random.Random(seed))
        for i in range(40):
            pool.offer(i)
        return pool.items

    assert sample(1) == sample(1) and sample(1) != sample(2)
    assert len(set(sample(3))) == 4 and sample(3) != [0, 1, 2, 3]
    hits: Counter[int] = Counter()
    for seed in range(2000):
        hits.update(sample(seed))
    # Each of 40 items is picked 4/40 of the time: 200 of 2000 draws (a few sigma).
    assert min(hits.values()) > 140 and max(hits.values()) < 260, hits


def test_challenge_wire_refuses_malformed_requests() -> None:
    ts = make_timestamp(5, 1, bytes(32))
    assert Challenge.from_wire(Challenge(3, ts).to_wire()) == Challenge(3, ts)
    for bad in (None, {}, {"v": 1, "b": b"short", "ts": ts.encode()}, {"v": 1, "b": bytes(16)}):
        with pytest.raises(MessageError):
            Challenge.from_wire(bad)
    with pytest.raises(MessageError):
        Challenge.from_wire({"v": 1, "b": bytes(16), "ts": b"x" * 3})


def test_the_rational_node_answers_cheaply_and_fails() -> None:
    auditor, peer, old = pair(data=b"a" * 3000, time=100)
    new = store(auditor, AUDITOR, 7, b"b" * 3000, 200)  # the rational peer dropped it
    stale = rational.cheap_answer(peer, Challenge(7, new), size_hint=1000)
    assert stale.fragment == answer_step(peer, Challenge(7, old)).fragment
    assert judge(auditor, Challenge(7, new), stale) is Verdict.FAILED
    made_up = rational.cheap_answer(MemoryKV(), Challenge(7, new), size_hint=1000)
    assert made_up.fragment == bytes(1000)
    assert judge(auditor, Challenge(7, new), made_up) is Verdict.FAILED
    # What it kept it answers truly (the cheapest answer it has).
    kept = rational.cheap_answer(peer, Challenge(7, old), size_hint=1000)
    assert kept == answer_step(peer, Challenge(7, old))


def test_the_rational_node_drops_a_stable_half_of_the_blocks() -> None:
    dropped = [b for b in range(1000) if rational.drops(3, b)]
    assert 400 < len(dropped) < 600
    assert dropped == [b for b in range(1000) if rational.drops(3, b)]
    assert dropped != [b for b in range(1000) if rational.drops(4, b)]


def test_audit_settings_are_checked() -> None:
    assert VerificationPolicy().audit_seconds == 3600.0
    VerificationPolicy(audit_seconds=0).validate()
    with pytest.raises(PolicyError, match="audit_seconds"):
        VerificationPolicy(audit_seconds=-1).validate()
    with pytest.raises(PolicyError, match="audit_challenges"):
        VerificationPolicy(audit_challenges=0).validate()


def test_contribution_rows_add_up_the_peers_word() -> None:
    def stats(own: dict, audits: dict) -> dict:
        return {"progress": {"contributions": own, "audits": {"peers": audits}}}

    doc = {
        0: stats(
            {"stored": 10, "served": 3, "verified": 5, "notified_by": {"1": 4, "2": 0}},
            {"1": {"passed": 4}, "2": {"failed": 3, "passed": 1}},
        ),
        1: stats(
            {"stored": 9, "served": 2, "verified": 6, "notified_by": {"0": 5}},
            {"0": {"passed": 4}, "2": {"failed": 2, "late": 1}},
        ),
        2: None,
    }
    rows = {r.node: r for r in contributions.rows(doc)}
    assert rows[2].stored is None and rows[2].failed == 5 and rows[2].late == 1
    assert rows[2].failed_by == (0, 1) and rows[2].passed == 1
    assert rows[0].notifies_seen == 5 and rows[1].notifies_seen == 4
    assert rows[0].stored == 10 and rows[0].passed == 4 and rows[0].failed_by == ()


def test_the_status_table_fits_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    own = {"stored": 10**6, "served": 10**6, "verified": 10**7, "audits_answered": 10**7}
    each = {"passed": 10**5, "failed": 10**5, "missing": 10**5, "late": 10**4}
    peers = {str(p): each for p in range(9)}
    statuses = [
        NodeStatus(i, "127.0.0.1:1", None, True, {"progress": {"contributions": own}}, None)
        for i in range(9)
    ]
    for s in statuses:  # every node failed by the eight others
        assert s.stats is not None
        s.stats["progress"]["audits"] = {
            "peers": {k: v for k, v in peers.items() if k != str(s.id)}
        }
    statuses.append(NodeStatus(9, "127.0.0.1:2", None, False, None, "down"))
    contribs.print_contributions(statuses)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and all(len(line) <= 100 for line in lines), lines
    assert all(line.split()[-2:] == ["8", "nodes"] for line in lines[2:11])
    assert lines[-1].split()[1:5] == ["-"] * 4 and lines[-1].split()[-1] == "-"
